"""What the scheduler does each epoch, as the lecture shows it with a debugger.

Per epoch (before that epoch's `step()`) and per param group: `last_epoch`,
`base_lrs`, the lr in `optimizer.param_groups` (the lr the epoch trains with),
`get_last_lr()`, and what `get_lr()` returns when called outside `step()` - the
lecture's scripts printed that; torch now warns about it, because for chainable
schedules it is the formula `step()` applies to the *current* lr, so at a
milestone it returns the decay applied a second time. Epochs where it differs
from the lr in use are flagged. For ReduceLROnPlateau: `best`, `num_bad_epochs`
and `cooldown_counter` after seeing that epoch's metric. In a `sequence`, the phase in charge
is the scheduler shown (its own `last_epoch` and `base_lrs`), and a `phase` column says which.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

from torch.optim.lr_scheduler import ReduceLROnPlateau

from schedulers.schedule import never_improving, walk

EXPLAIN = (
    "get_lr() is the update step() applies to the current lr (the chainable form); "
    "called outside step() it can apply that update again (at a milestone: lr x gamma), "
    "so it shows an lr the optimizer never used. Read get_last_lr() or param_groups."
)


def _active(schedule: Any) -> Any:
    """The torch scheduler in charge this epoch: the warmup while it lasts, else the main one
    (in a sequence: its phase in charge)."""
    if schedule.warmup is not None and schedule.count < schedule.warmup_steps:
        return schedule.warmup
    return getattr(schedule.main, "active", schedule.main)


def _phase(schedule: Any) -> str:
    """Which part of a sequence is in charge: 'warmup' or the phase's index."""
    if schedule.warmup is not None and schedule.count < schedule.warmup_steps:
        return "warmup"
    return str(schedule.main.index)


def fields(rows: list[dict[str, Any]]) -> list[str]:
    """Every column, in first-seen order (plateau columns appear once a plateau is in charge)."""
    return list(dict.fromkeys(k for r in rows for k in r))


def trace_schedule(
    schedule: Any, epochs: int, metric: Callable[[int], float] | None = None
) -> list[dict[str, Any]]:
    """Step `schedule` (an LRSchedule) `epochs` times - batches for a per-batch schedule -
    as the loop would (schedule.walk, one unit an "epoch"); one row per step and param group.
    A plateau sees `metric(epoch)`, or 1.0 without one."""
    opt = schedule.optimizer
    sequence = hasattr(schedule.main, "active")
    value = metric or never_improving
    rows: list[dict[str, Any]] = []
    plateau_unit = None  # a plateau's last rows, its counters read once it has stepped
    for epoch, _ in walk(opt, schedule, epochs, 1, value):
        _counters(plateau_unit)
        sched = _active(schedule)
        plateau = isinstance(sched, ReduceLROnPlateau)
        if plateau:
            chained = [math.nan] * len(opt.param_groups)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "To get the last learning rate computed..."
                chained = list(sched.get_lr())
        last = schedule.get_last_lr()
        base_lrs = list(getattr(sched, "base_lrs", []))
        unit = [
            {
                "epoch": epoch,
                **({"phase": _phase(schedule)} if sequence else {}),
                "group": g,
                "last_epoch": sched.last_epoch,
                "base_lr": base_lrs[g] if base_lrs else math.nan,
                "lr_in_use": lr,
                "get_last_lr": last[g],
                "get_lr_outside_step": chained[g],
                "differs": not plateau and not math.isclose(chained[g], lr, rel_tol=1e-12),
            }
            for g, lr in enumerate(g["lr"] for g in opt.param_groups)
        ]
        rows += unit
        plateau_unit = (unit, sched, value(epoch)) if plateau else None
    _counters(plateau_unit)
    return rows


def _counters(unit: tuple[list[dict[str, Any]], Any, float] | None) -> None:
    """A plateau's rows of one unit get the metric it saw and its counters after seeing it."""
    if unit is None:
        return
    rows, sched, value = unit
    for row in rows:
        row |= {
            "metric": value,
            "best": sched.best,
            "num_bad_epochs": sched.num_bad_epochs,
            "cooldown_counter": sched.cooldown_counter,
        }


def flagged_epochs(rows: list[dict[str, Any]]) -> list[int]:
    return sorted({r["epoch"] for r in rows if r["differs"]})


def as_markdown(rows: list[dict[str, Any]], title: str) -> str:
    keys = fields(rows)
    lines = [f"# Scheduler trace: {title}", "", "| " + " | ".join(keys) + " |",
             "|" + "---|" * len(keys)]  # fmt: skip
    for r in rows:
        cells = [
            ("**yes**" if r.get(k) else "")
            if k == "differs"
            else ("" if k not in r else f"{r[k]:.6g}" if isinstance(r[k], float) else str(r[k]))
            for k in keys
        ]
        lines.append("| " + " | ".join(cells) + " |")
    flagged = flagged_epochs(rows)
    if flagged:
        lines += [
            "",
            f"get_lr() outside step() differs from the lr in use at epochs {flagged}: " + EXPLAIN,
        ]
    return "\n".join(lines) + "\n"
