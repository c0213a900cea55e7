"""Where the runs of a budget sweep leave their trunk, found before anything trains: the
preview draws them (`python -m runner.preview ... trunk=true`) and the budget sweeper
(`hydra/sweeper=budgets`) keeps exactly those epochs of each trunk (trainer.keep_epochs)."""

from __future__ import annotations

from typing import Any

from runner.data.sets import steps_per_epoch as steps_in_epoch
from runner.data.sets import train_size
from runner.io.checkpoint import keeps
from runner.run.branch import shared_epochs
from runner.run.check import planned_groups
from schedulers.binder import plain


def run_groups(cfg: Any, steps_per_epoch: int | None = None) -> tuple[list[str], list[float], int]:
    """The run's param groups, as (names, lrs), and its steps per epoch (default: from the
    data config)."""
    if steps_per_epoch is None:
        steps_per_epoch = steps_in_epoch(
            train_size(plain(cfg.data)), cfg.data.batch_size, cfg.trainer.accumulate
        )
    lr = cfg.optimizer.lr
    names, multipliers = zip(*planned_groups(cfg), strict=True)  # parts or name patterns
    return list(names), [lr * m for m in multipliers], steps_per_epoch


def branch_point(cfg: Any, trunk_cfg: Any, steps_per_epoch: int | None = None) -> int:
    """The epoch a run of `cfg`'s budget would branch from a trunk of `trunk_cfg` at, as
    `branch_epoch=null` picks it (runner/run/branch.py): the latest epoch the trunk keeps
    (its trainer.keep_epochs; every epoch when null), below the budget, up to which the two
    schedules give the same lrs. 0 when there is none: the run is a rerun."""
    _, lrs, spe = run_groups(cfg, steps_per_epoch)
    upto = min(cfg.epochs, trunk_cfg.epochs)
    agree, _ = shared_epochs(cfg, trunk_cfg, spe, lrs, upto)
    keep = trunk_cfg.trainer.keep_epochs
    fits = [e for e in range(1, min(agree, cfg.epochs - 1) + 1) if keep is None or keeps(keep, e)]
    return fits[-1] if fits else 0
