"""The lr a schedule gives, without training: `simulate(config, ...)` -> lr per step and group.

The schedule is built by `build_scheduler`, the path a training run takes, on a throwaway
optimizer with the run's param-group lrs, and stepped like the loop steps it
(schedule.walk): torch's own schedulers compute every value, nothing here re-derives them.
The preview, the lecture's curves and the tests read schedules through this.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from schedulers.registry import build_scheduler
from schedulers.schedule import LRSchedule, throwaway_optimizer, walk

Metric = Sequence[float] | Callable[[int], float]  # per epoch; read only by a Plateau schedule


@dataclass(frozen=True)
class Simulation:
    """`per_step`: one row per optimizer step of the run (epochs x steps_per_epoch rows, for
    per-epoch schedules too), each the lr of every param group that step trains with."""

    interval: str  # the schedule's: "epoch" or "step"
    steps_per_epoch: int
    per_step: list[list[float]]

    @property
    def per_epoch(self) -> list[list[float]]:
        """One row per epoch: the lr each epoch starts with (what the run logs as lr/group<i>)."""
        return self.per_step[:: self.steps_per_epoch]


def throwaway_schedule(
    cfg: Mapping[str, Any], *, epochs: int, steps_per_epoch: int, base_lrs: Sequence[float]
) -> LRSchedule:
    """The schedule `cfg` gives a run, built on a throwaway optimizer (one dummy parameter
    per param group, at `base_lrs`); its optimizer is `schedule.optimizer`."""
    optimizer = throwaway_optimizer(base_lrs)
    return build_scheduler(cfg, optimizer, epochs=epochs, steps_per_epoch=steps_per_epoch)


def per_epoch_metric(metric: Metric | None, epochs: int) -> Callable[[int], float] | None:
    """A callable epoch -> value; a sequence must cover every epoch."""
    if metric is None or callable(metric):
        return metric
    values = [float(v) for v in metric]
    if len(values) < epochs:
        raise ValueError(f"the metric has {len(values)} values, one per epoch is {epochs}")
    return values.__getitem__


def simulate(
    cfg: Mapping[str, Any],
    *,
    epochs: int,
    steps_per_epoch: int,
    base_lrs: Sequence[float],
    metric: Metric | None = None,
) -> Simulation:
    """The lr of every param group at every optimizer step of a run of `epochs` x
    `steps_per_epoch` batches whose optimizer has the lrs `base_lrs`, under the scheduler
    config `cfg` (as build_scheduler takes it; a ConfigError names a bad key). `metric`:
    the monitored value per epoch (a sequence, or a callable epoch -> value), which a
    Plateau schedule needs and any other ignores."""
    schedule = throwaway_schedule(
        cfg, epochs=epochs, steps_per_epoch=steps_per_epoch, base_lrs=base_lrs
    )
    groups = schedule.optimizer.param_groups
    per_step = [
        [g["lr"] for g in groups]
        for _ in walk(
            schedule.optimizer,
            schedule,
            epochs,
            steps_per_epoch,
            per_epoch_metric(metric, epochs),
        )
    ]
    return Simulation(schedule.interval, steps_per_epoch, per_step)
