"""Scheduler names -> torch schedulers, with the checks each one needs.

One table, so an unknown name can list every valid one, and so validation runs
from the config alone (no optimizer, data or model yet) at start-up.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from schedulers.errors import ConfigError


@dataclass(frozen=True)
class Context:
    """What a schedule needs to know about the run besides its own keys."""

    epochs: int
    base_lr: float


@dataclass(frozen=True)
class Schedule:
    params: tuple[str, ...]  # keys this schedule accepts besides `name`
    check: Callable[[Mapping[str, Any], Context], None]
    build: Callable[
        [Any, Mapping[str, Any], Context], Any
    ]  # (optimizer, params, ctx) -> LRScheduler
    summary: str


def _int_at_least(key: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(key, value, f"must be an integer >= {low}")


def _in_unit_interval(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ConfigError(key, value, "must be a number in (0, 1]")


def _t_max(p: Mapping[str, Any], ctx: Context) -> int:
    return ctx.epochs if p.get("T_max") is None else p["T_max"]


# -- step ---------------------------------------------------------------------------------
def _check_step(p: Mapping[str, Any], ctx: Context) -> None:
    _int_at_least("scheduler.step_size", p["step_size"], 1)
    _in_unit_interval("scheduler.gamma", p["gamma"])


def _build_step(opt: Any, p: Mapping[str, Any], ctx: Context) -> Any:
    from torch.optim.lr_scheduler import StepLR

    return StepLR(opt, step_size=p["step_size"], gamma=p["gamma"])


# -- cosine -------------------------------------------------------------------------------
def _check_cosine(p: Mapping[str, Any], ctx: Context) -> None:
    if p.get("T_max") is not None:
        _int_at_least("scheduler.T_max", p["T_max"], 1)
    eta_min = p["eta_min"]
    if isinstance(eta_min, bool) or not isinstance(eta_min, (int, float)) or eta_min < 0:
        raise ConfigError("scheduler.eta_min", eta_min, "must be a number >= 0")
    if eta_min >= ctx.base_lr:
        raise ConfigError("scheduler.eta_min", eta_min, f"must be below optimizer.lr={ctx.base_lr}")


def _build_cosine(opt: Any, p: Mapping[str, Any], ctx: Context) -> Any:
    from torch.optim.lr_scheduler import CosineAnnealingLR

    return CosineAnnealingLR(opt, T_max=_t_max(p, ctx), eta_min=p["eta_min"])


# -- none ---------------------------------------------------------------------------------
def _constant(epoch: int) -> float:
    """Module-level (not a lambda) so the scheduler's state stays picklable."""
    return 1.0


def _build_none(opt: Any, p: Mapping[str, Any], ctx: Context) -> Any:
    from torch.optim.lr_scheduler import LambdaLR

    return LambdaLR(opt, lr_lambda=_constant)


SCHEDULES: dict[str, Schedule] = {
    "step": Schedule(("step_size", "gamma"), _check_step, _build_step, "StepLR"),
    "cosine": Schedule(("T_max", "eta_min"), _check_cosine, _build_cosine, "CosineAnnealingLR"),
    "none": Schedule((), lambda p, ctx: None, _build_none, "constant lr"),
}


def _lookup(cfg: Mapping[str, Any]) -> tuple[Schedule, dict[str, Any]]:
    name = cfg.get("name")
    if name not in SCHEDULES:
        raise ConfigError("scheduler.name", name, f"must be one of {sorted(SCHEDULES)}")
    spec = SCHEDULES[name]
    params = {k: v for k, v in cfg.items() if k != "name"}
    unknown = sorted(set(params) - set(spec.params))
    if unknown:
        raise ConfigError(
            f"scheduler.{unknown[0]}",
            params[unknown[0]],
            f"unknown key for scheduler '{name}'; allowed keys: {list(spec.params)}",
        )
    missing = [k for k in spec.params if k not in params]
    if missing:
        raise ConfigError(f"scheduler.{missing[0]}", None, f"required by scheduler '{name}'")
    return spec, params


def validate_scheduler(cfg: Mapping[str, Any], *, epochs: int, base_lr: float) -> None:
    """Raise ConfigError for any scheduler setting that cannot work; builds nothing."""
    spec, params = _lookup(cfg)
    spec.check(params, Context(epochs=epochs, base_lr=base_lr))


def build_scheduler(cfg: Mapping[str, Any], optimizer: Any, *, epochs: int) -> Any:
    """A torch LR scheduler for `optimizer`, stepped once per epoch by the loop."""
    spec, params = _lookup(cfg)
    ctx = Context(epochs=epochs, base_lr=optimizer.param_groups[0]["lr"])
    spec.check(params, ctx)
    return spec.build(optimizer, params, ctx)
