"""Any scheduler class by its import path: Hydra's `_target_` with `_partial_: true`.

    _target_: torch.optim.lr_scheduler.CosineAnnealingLR
    _partial_: true      # Hydra builds a partial; the runner adds the optimizer
    T_max: 40

The node's other keys are the class's keyword arguments, except ours (`interval`,
`warmup_epochs`, `warmup_steps`, `warmup_start_factor` at the top, `length` in a sequence
phase, and `monitor` when the class is a ReduceLROnPlateau). Before anything is built for the run,
the kwargs are bound to the class's signature by the binder every `_target_` goes through
(schedulers/binder.py: a typo'd or missing argument is a config error naming it), then
the schedule is built on a throwaway optimizer and stepped through its whole length, so a
value the class rejects, or an lr that goes negative or non-finite, is a config error
naming the key and the step instead of a crash mid-run.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from schedulers.binder import (
    TARGET,
    accepts,
    key_named_in,
    kwargs_of,
    locate,
    need_call,
    partial_of,
    plain,
    takes_any_keyword,
)
from schedulers.checks import mode_for, need_mode
from schedulers.errors import ConfigError
from schedulers.node import Node
from schedulers.schedule import LRSchedule, never_improving, throwaway_optimizer, walk

DEFAULT_MONITOR = "val/loss"


def is_plateau(target: Any) -> bool:
    from torch.optim.lr_scheduler import ReduceLROnPlateau  # torch: not at start-up

    return isinstance(target, type) and issubclass(target, ReduceLROnPlateau)


def _need_finite(key: str, value: Any) -> None:
    """No NaN or infinity in a kwarg (or a list of them): a class may not reject it (torch's
    ReduceLROnPlateau takes factor=nan and then never lowers the lr), so it is rejected here."""
    todo = [value]
    while todo:  # a loop, not recursion: a deeply nested list is no RecursionError
        item = todo.pop()
        if isinstance(item, float) and not math.isfinite(item):
            rule = "must be a finite number" if item is value else "must hold finite numbers only"
            raise ConfigError(key, value, rule)
        if isinstance(item, (list, tuple)):
            todo.extend(item)


def _plateau_mode(target: Any, kwargs: dict[str, Any], monitor: str, where: str) -> dict[str, Any]:
    """`mode` is the class's own argument; it must agree with `monitor` (max for an
    accuracy, min for a loss). `auto`, or no mode where the class takes one, becomes the
    metric's (the class's default `min` would cut the lr whenever an accuracy improves)."""
    if "mode" in kwargs:
        need_mode(f"{where}.mode", kwargs["mode"], monitor, "monitor")
    elif not (accepts(target, "mode") or takes_any_keyword(target)):
        return kwargs
    return {**kwargs, "mode": mode_for(monitor, kwargs.get("mode", "auto"))}


def dry_run(
    build: Callable[[Any], Any], base_lrs: Sequence[float], steps: int, metric: bool
) -> tuple[int, str, Any] | None:
    """Build on a throwaway optimizer (one dummy parameter per param group, with the run's
    lrs) and step `steps` times as the loop would (schedule.walk), feeding a flat metric when
    `metric`. Returns None, or (step, what went wrong, the scheduler or None if building
    failed)."""
    opt = throwaway_optimizer(base_lrs)
    sched, step = None, 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            sched = build(opt)
            schedule = LRSchedule(sched, monitor="metric" if metric else None)
            positions = walk(opt, schedule, steps + 1, 1, never_improving)
            for step in range(steps + 1):
                next(positions)  # the lrs after `step` steps: stepped here, so errors say when
                lrs = [float(g["lr"]) for g in opt.param_groups]
                bad = [lr for lr in lrs if not (math.isfinite(lr) and lr >= 0)]
                if bad:
                    return step, f"gives lr {bad[0]}; an lr must be finite and >= 0", sched
        except Exception as err:
            text = str(err).splitlines()[0] if str(err) else ""
            return step, f"{type(err).__name__}: {text}" if text else type(err).__name__, sched
    return None


def build_target(path: str, kwargs: Mapping[str, Any], hydra_keys: Mapping[str, Any]) -> Any:
    """optimizer -> the scheduler, through the binder's partial (Hydra's `_partial_: true`)."""
    spec = {TARGET: path, **kwargs, **hydra_keys}

    def build(optimizer: Any) -> Any:
        return partial_of(spec)(optimizer)

    return build


def resolve_target(
    node: Mapping[str, Any],
    ctx: Any,
    where: str,
    *,
    ours: Sequence[str],
    metrics: Collection[str] | None = None,
) -> Any:
    """Check a `_target_` node (the top-level scheduler or a sequence phase) -> registry.Node."""
    node = dict(plain(node))
    target = locate(where, node)
    if node.get("_partial_", True) is not True:
        raise ConfigError(
            f"{where}._partial_",
            node["_partial_"],
            "must be true: the runner calls the scheduler class with the optimizer",
        )
    plateau = is_plateau(target)
    mine = (*ours, "monitor") if plateau else tuple(ours)
    kwargs = kwargs_of(node, mine)
    name = getattr(target, "__name__", str(target))
    need_call(where, target, dict(kwargs), leading=1)  # the optimizer comes first
    for key, value in kwargs.items():
        _need_finite(f"{where}.{key}", value)
    monitor = None
    if plateau:
        monitor = node.get("monitor", DEFAULT_MONITOR)
        if metrics is not None and monitor not in metrics:
            raise ConfigError(f"{where}.monitor", monitor, f"must be one of {sorted(metrics)}")
        kwargs = _plateau_mode(target, kwargs, monitor, where)
        if ctx.interval != "epoch":
            raise ConfigError(
                "scheduler.interval",
                ctx.interval,
                f"{name} needs 'epoch': it steps on a val metric",
            )
    hydra_keys = {k: node[k] for k in ("_convert_", "_recursive_") if k in node}
    build = build_target(node[TARGET], kwargs, hydra_keys)
    failed = dry_run(build, ctx.base_lrs, ctx.length, metric=plateau)
    if failed is not None:
        step, problem, sched = failed
        key = key_named_in(where, problem, kwargs, fallback=where)
        value = kwargs[key.rsplit(".", 1)[-1]] if key != where else node[TARGET]
        when = "cannot be built" if sched is None else f"fails at {ctx.interval} {step}"
        raise ConfigError(key, value, f"{name} {when}: {problem}")
    from torch.optim.lr_scheduler import OneCycleLR  # torch: not at start-up

    last_only = isinstance(target, type) and issubclass(target, OneCycleLR)
    return Node(label=name, build=build, monitor=monitor, last_only=last_only)
