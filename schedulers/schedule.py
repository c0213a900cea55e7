"""The object the training loop steps: a torch scheduler plus when and how to step it.

It knows the interval (per epoch or per batch), an optional linear warmup in
front, and the metric ReduceLROnPlateau monitors. Warmup is chained here rather
than with torch's SequentialLR because SequentialLR cannot pass a metric to
ReduceLROnPlateau; doing it one way for every schedule keeps them comparable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any


class LRSchedule:
    def __init__(
        self,
        main: Any,
        *,
        interval: str = "epoch",
        warmup: Any = None,
        warmup_steps: int = 0,
        monitor: str | None = None,
    ) -> None:
        self.main, self.warmup, self.warmup_steps = main, warmup, warmup_steps
        self.interval, self.monitor = interval, monitor
        self.count = 0  # steps taken, in units of `interval`

    @property
    def optimizer(self) -> Any:
        return self.main.optimizer

    def step_batch(self) -> None:
        """Call after every optimizer.step(); advances only per-step schedules."""
        if self.interval == "step":
            self._advance(None)

    def step_epoch(self, metrics: Mapping[str, float]) -> None:
        """Call once after each epoch's validation; advances only per-epoch schedules."""
        if self.interval == "epoch":
            self._advance(metrics[self.monitor] if self.monitor else None)

    def _advance(self, metric: float | None) -> None:
        if self.count < self.warmup_steps:
            self.warmup.step()
        elif self.monitor:
            self.main.step(metric)
        else:
            self.main.step()
        self.count += 1

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "main": self.main.state_dict(),
            "warmup": None if self.warmup is None else self.warmup.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.count = state["count"]
        self.main.load_state_dict(state["main"])
        if self.warmup is not None:
            self.warmup.load_state_dict(state["warmup"])


def throwaway_optimizer(base_lrs: Sequence[float]) -> Any:
    """What a schedule is tried out or simulated on: SGD over one dummy parameter per param
    group, at `base_lrs`. Momentum 0.9, because OneCycleLR and CyclicLR cycle it; its steps
    change nothing (there are no gradients)."""
    import torch  # only when a schedule is stepped: importing schedulers stays cheap

    groups = [{"params": [torch.zeros(1, requires_grad=True)], "lr": lr} for lr in base_lrs]
    return torch.optim.SGD(groups, lr=base_lrs[0], momentum=0.9)


def never_improving(epoch: int) -> float:
    """The metric a plateau sees where there is none to see (a dry run, a trace without one)."""
    return 1.0


def walk(
    optimizer: Any,
    schedule: LRSchedule,
    epochs: int,
    steps_per_epoch: int,
    metric: Callable[[int], float] | None = None,
) -> Iterator[tuple[int, int]]:
    """Step `schedule` as the training loop does: each epoch, `steps_per_epoch` times
    optimizer.step() then step_batch(), then step_epoch() with `metric(epoch)` as the monitored
    value. Yields (epoch, batch) before every optimizer step, while the param groups hold the
    lr that step trains with; the caller reads what it needs and stops when it likes (nothing
    is stepped past the last position it asked for). The one stepping loop outside training:
    the simulator, the trace and the start-up dry runs all step through it."""
    for epoch in range(epochs):
        for batch in range(steps_per_epoch):
            yield epoch, batch
            optimizer.step()  # no grads: changes nothing, but keeps torch's order check quiet
            schedule.step_batch()
        if schedule.monitor and metric is None:
            raise ValueError(f"the schedule monitors {schedule.monitor!r}: give a metric")
        schedule.step_epoch({schedule.monitor: metric(epoch)} if schedule.monitor else {})
