"""What every schedule node resolves to, and what it is checked against: the types that the
registry, sequences and `_target_` classes share (so none of them imports another for them)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Context:
    """What a schedule needs to know about the run besides its own keys."""

    epochs: int
    steps_per_epoch: int
    interval: str
    base_lrs: tuple[float, ...]  # the optimizer's lr of each param group
    warmup: int  # warmup length, in units of `interval`
    span: int | None = None  # a sequence phase's own length; None: the rest of the run

    @property
    def per_epoch(self) -> int:
        return 1 if self.interval == "epoch" else self.steps_per_epoch

    @property
    def run_length(self) -> int:
        """Steps of the whole run once warmup is done, in units of `interval`."""
        return self.epochs * self.per_epoch - self.warmup

    @property
    def length(self) -> int:
        """Steps of the schedule itself: the run once warmup is done, or a phase's length."""
        return self.run_length if self.span is None else self.span


@dataclass(frozen=True)
class Node:
    """A checked schedule: how to build its torch scheduler on an optimizer, and what it needs."""

    label: str
    build: Callable[[Any], Any]  # optimizer -> torch scheduler (or a SequenceLR)
    monitor: str | None = None  # the metric its step() needs (ReduceLROnPlateau), else None
    # OneCycleLR rewrites the param groups' `initial_lr`, which the schedules built after it
    # would take as their base lr: in a sequence it can only be the last phase
    last_only: bool = False
