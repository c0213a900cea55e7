"""The object the training loop steps: a torch scheduler plus when and how to step it.

It knows the interval (per epoch or per batch), an optional linear warmup in
front, and the metric ReduceLROnPlateau monitors. Warmup is chained here rather
than with torch's SequentialLR because SequentialLR cannot pass a metric to
ReduceLROnPlateau; doing it one way for every schedule keeps them comparable.
"""

from __future__ import annotations

from collections.abc import Mapping
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
