"""Schedule phases that the run's length leaves out: checked once the keys themselves are.

A schedule counts in units of `scheduler.interval`. Counted in epochs, a short run has
few units, and a share of it can round to nothing: `scheduler=wsd` on 8 epochs (2 of
warmup) decays over round(0.2 x 6) = 1 epoch, whose lr is still the base lr, so the run
never decayed and nothing said so. A count can also fall beyond the run: StepLR's
`step_size: 10` on 3 epochs never steps.

- A share of the run that rounds to no step (wsd's `decay_fraction`, onecycle's
  `pct_start`) is a ConfigError naming the key: the schedule asked for cannot happen at
  this resolution, and `scheduler.interval=step` (counting batches) keeps the share.
- A count beyond the run (`step_size`, `milestones`, `T_0`) is a warning naming the key:
  the user wrote that number, and trying a long schedule on a few epochs is common; the
  lr then stays flat where the schedule would have moved it.

Not flagged: `warmup_epochs` is whole epochs (1 is a one-epoch warmup, never 0 steps, and
one as long as the run is refused already); a cosine `T_max` or a linear/poly
`total_iters` beyond the run cuts the curve short, but the lr still moves every step.
Sequence phases and `_target_` classes are not looked at here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

from schedulers.errors import ConfigError
from schedulers.node import Context

log = logging.getLogger("schedlab")

STEP_HINT = "use scheduler.interval=step (counts batches)"


def _units(ctx: Context) -> str:
    """'8 epochs', or '6 epochs after warmup', in the schedule's own unit."""
    unit = ctx.interval + ("s" if ctx.length != 1 else "")
    return f"{ctx.length} {unit}" + (" after warmup" if ctx.warmup else "")


def _wsd(p: Mapping[str, Any], ctx: Context) -> None:
    from schedulers.wsd import decay_length  # imports torch: not at start-up (`--help`)

    fraction = p["decay_fraction"]
    decay = decay_length(ctx.length, fraction)
    if decay > 1:  # its first step is at the base lr: 1 step of decay lowers nothing
        return
    # the smallest share (2 decimals) that rounds to 2 steps, when there is one
    least = math.ceil(200 / ctx.length) / 100
    larger = f" or a decay_fraction of at least {least:g}" if least <= 1 else " or more epochs"
    err = ConfigError(
        "scheduler.decay_fraction",
        fraction,
        f"the decay phase rounds to 0 of the run's {_units(ctx)} (round({ctx.length} x "
        f"{fraction:g}) = {decay} {ctx.interval}, which still has the base lr): the lr would "
        f"never decay; {STEP_HINT}{larger}",
    )
    _refuse_or_warn(err, ctx)


def _onecycle(p: Mapping[str, Any], ctx: Context) -> None:
    # OneCycleLR's rise ends at step pct_start x total - 1: at or before step 0 the run
    # starts at max_lr (and at exactly 0 torch divides by zero when it is built)
    rise = p["pct_start"] * ctx.length
    if rise > 1:
        return
    err = ConfigError(
        "scheduler.pct_start",
        p["pct_start"],
        f"the warm-up rounds to 0 of the run's {_units(ctx)} ({p['pct_start']:g} x "
        f"{ctx.length} = {rise:g} <= 1): the lr would start at max_lr; {STEP_HINT}, "
        "onecycle's default",
    )
    if rise == 1:  # torch's OneCycleLR divides by its 0-step rise when it is built
        raise err
    _refuse_or_warn(err, ctx)


def _refuse_or_warn(err: ConfigError, ctx: Context) -> None:
    """A phase counted in epochs that rounds away is an error whose fix is to count steps;
    one already counted in steps (a run of a handful of batches: a smoke test, a tiny
    set) is only warned about, as nothing in the config can lengthen it but the run."""
    if ctx.interval == "epoch":
        raise err
    log.warning("%s=%s: %s", err.key, err.value, err.rule)


def _beyond(key: str, value: Any, ctx: Context, what: str) -> None:
    """The warning for a count that falls at or after the run's end."""
    log.warning(
        f"scheduler.{key}={value}: {what}; give {key} below {ctx.length}, or more epochs "
        f"(with scheduler.interval=step, {key} counts batches)"
    )


def _step(p: Mapping[str, Any], ctx: Context) -> None:
    if p["step_size"] >= ctx.length:
        _beyond("step_size", p["step_size"], ctx, f"the lr never steps in the run's {_units(ctx)}")


def _multistep(p: Mapping[str, Any], ctx: Context) -> None:
    milestones = list(p["milestones"])
    late = [m for m in milestones if m >= ctx.length]
    if late == milestones:
        what = f"none falls within the run's {_units(ctx)}, so the lr never decays"
    elif late:
        what = (
            f"{', '.join(map(str, late))} fall at or after the end of the run's "
            f"{_units(ctx)}: {len(milestones) - len(late)} of {len(milestones)} decays "
            "happen"
        )
    else:
        return
    _beyond("milestones", milestones, ctx, what)


def _cosine_restarts(p: Mapping[str, Any], ctx: Context) -> None:
    if p["T_0"] >= ctx.length:
        what = f"no restart within the run's {_units(ctx)} (a plain cosine, cut short)"
        _beyond("T_0", p["T_0"], ctx, what)


PHASES: dict[str, Callable[[Mapping[str, Any], Context], None]] = {
    "wsd": _wsd,
    "onecycle": _onecycle,
    "step": _step,
    "multistep": _multistep,
    "cosine_restarts": _cosine_restarts,
}


def check_phases(cfg: Mapping[str, Any], ctx: Context) -> None:
    """A built-in schedule's phase that this run's length leaves out: ConfigError when a
    share of the run rounds to no step, a warning when a count falls beyond the run. Call
    it once the schedule's own keys are checked (`ctx` from the same config). `cfg`: plain
    values, as validate_scheduler made them."""
    check = PHASES.get(cfg.get("name"))
    if check is not None:
        check(cfg, ctx)
