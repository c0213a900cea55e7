"""Optimizers: the built-ins by name (one entry each in `OPTIMIZERS`), any other by
`_target_`, and the param groups that give parts of a model their own lr.

`optimizer.lr` is always the base lr; `optimizer.param_groups` maps a built-in model's
part names (mlp hidden/head, lenet features/classifier, resnet18 backbone/head), or
parameter-name patterns for any model (`{"backbone.*": 0.1, "head.*": 1.0}`, fnmatch
against `model.named_parameters()`), to lr multipliers. With patterns every parameter must
fall in exactly one group, so no parameter trains at an lr nobody chose.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import torch

from runner.config import schema
from schedulers import ConfigError, binder
from schedulers.checks import is_number, need_number, need_positive

OURS = ("param_groups",)  # keys of a `_target_` optimizer that the runner reads itself


def _check_betas(cfg: Mapping[str, Any]) -> None:
    betas = cfg["betas"]
    ok = isinstance(betas, Sequence) and not isinstance(betas, str) and len(betas) == 2
    if not ok or not all(is_number(b) and 0 <= b < 1 for b in betas):
        raise ConfigError("optimizer.betas", betas, "must be two numbers in [0, 1)")


def _no_check(cfg: Mapping[str, Any]) -> None:
    return None


@dataclass(frozen=True)
class OptimizerSpec:
    cls: str  # the torch.optim class
    keys: tuple[str, ...]  # config keys passed to it besides lr and weight_decay
    schema: type  # its keys, types, defaults and checks (runner/config/schema.py)
    check: Callable[[Mapping[str, Any]], None]  # what ties keys together
    fusable: bool = True  # runner/sweep/stacked.py's FusedOptimizer implements its step


OPTIMIZERS: dict[str, OptimizerSpec] = {
    "sgd": OptimizerSpec("SGD", ("momentum", "nesterov"), schema.Sgd, _no_check),
    "adam": OptimizerSpec("Adam", ("betas", "eps"), schema.Adam, _check_betas),
    "adamw": OptimizerSpec("AdamW", ("betas", "eps"), schema.AdamW, _check_betas),
}


def spec_of(cfg: Mapping[str, Any]) -> OptimizerSpec | None:
    """The built-in's spec, or None for a `_target_` optimizer."""
    return binder.builtin_spec("optimizer", cfg, OPTIMIZERS)


# -- param groups ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Group:
    name: str | None  # logged as lr/<name>; None: the single group (lr/group0)
    params: list[Any]
    scale: float  # lr multiplier


def _scales(cfg: Mapping[str, Any]) -> dict[str, float] | None:
    scales = cfg.get("param_groups")
    if scales is None:
        return None
    if not isinstance(scales, Mapping) or not scales:
        raise ConfigError(
            "optimizer.param_groups", scales, "must be null or a mapping {part or pattern: lr x}"
        )
    for key, scale in scales.items():
        need_positive(f"optimizer.param_groups.{key}", scale)
    return {str(k): float(v) for k, v in scales.items()}


def uses_parts(cfg: Mapping[str, Any], parts: Sequence[str]) -> bool:
    """Keys that are all part names of a built-in model pick parts; otherwise patterns."""
    scales = _scales(cfg) or {}
    return bool(parts) and all(key in parts for key in scales)


def group_label(pattern: str) -> str:
    """A metric-safe name for a pattern's group: `backbone.*` -> `backbone`."""
    name = re.sub(r"(\.\*|\*)+$", "", pattern)
    return re.sub(r"[^A-Za-z0-9_.\-]+", "_", name).strip("_.") or "group"


def split_params(
    cfg: Mapping[str, Any],
    named: Sequence[tuple[str, Any]],
    parts: Mapping[str, Sequence[Any]],
) -> list[Group]:
    """The optimizer's param groups, in order. `named` is model.named_parameters(); `parts`
    the built-in model's named parts ({} for a `_target_` model)."""
    scales = _scales(cfg)
    if scales is None:
        return [Group(None, [p for _, p in named], 1.0)]
    if uses_parts(cfg, list(parts)):
        return [Group(part, list(ps), scales.get(part, 1.0)) for part, ps in parts.items()]
    hits = {name: [pat for pat in scales if fnmatchcase(name, pat)] for name, _ in named}
    # a key that is neither a part name nor matches a parameter is the likely typo: name it
    for pattern in sorted(scales, key=lambda k: k in parts):
        scale = scales[pattern]
        if not any(pattern in h for h in hits.values()):
            hint = f"; parts of this model: {list(parts)}" if parts else ""
            raise ConfigError(
                f"optimizer.param_groups.{pattern}",
                scale,
                f"matches no parameter (their names look like '{named[0][0]}'){hint}",
            )
    members: dict[str, list[Any]] = {pattern: [] for pattern in scales}
    for name, param in named:
        if len(hits[name]) != 1:
            which = "matches no pattern" if not hits[name] else f"matches {hits[name]}"
            raise ConfigError(
                "optimizer.param_groups",
                dict(scales),
                f"parameter '{name}' {which}; every parameter needs exactly one group "
                f"(e.g. '{name.rsplit('.', 1)[0]}.*')",
            )
        members[hits[name][0]].append(param)
    labels = [group_label(p) for p in scales]
    if len(set(labels)) != len(labels):
        labels = [f"{label}{i}" for i, label in enumerate(labels)]
    return [
        Group(label, members[pattern], scales[pattern])
        for label, pattern in zip(labels, scales, strict=True)
    ]


# -- checks and building --------------------------------------------------------------------
def validate_optimizer(cfg: Mapping[str, Any], lr: float) -> None:
    """A built-in's checks, or for a `_target_`: importable, kwargs bound to its signature,
    and built over one throwaway parameter so its own value checks (torch raises
    'Invalid ... value') fire now. `lr` is the base lr it will get."""
    spec = spec_of(cfg)
    if spec is not None:
        schema.check_node("optimizer", cfg, spec.schema)
        spec.check(cfg)
        _scales(cfg)
        return
    _scales(cfg)
    if "weight_decay" in cfg:
        need_number("optimizer.weight_decay", cfg["weight_decay"], 0)
    target = binder.locate("optimizer", cfg)
    kwargs = {**binder.kwargs_of(cfg, OURS), "lr": lr}
    binder.need_call("optimizer", target, kwargs, leading=1)  # params first
    try:
        built = binder.instantiate(
            {**cfg, "lr": lr}, [torch.zeros(1, requires_grad=True)], ours=OURS
        )
    except Exception as err:
        key = binder.key_named_in("optimizer", str(err), kwargs)
        raise ConfigError(key, cfg.get(key.split(".", 1)[1]), f"rejected: {err}") from None
    _check_steps(cfg, built)


def _check_steps(cfg: Mapping[str, Any], optimizer: Any) -> None:
    """The loop calls `step()` once a batch on the dense gradients of backward(): an
    optimizer that needs a closure (LBFGS re-evaluates the loss) or sparse gradients
    (SparseAdam) would fail at the first batch, after the run dir is made."""
    why = None
    closure = inspect.signature(optimizer.step).parameters.get("closure")
    if closure is not None and closure.default is inspect.Parameter.empty:
        why = "steps only with a closure that re-evaluates the loss (step(closure))"
    elif isinstance(optimizer, torch.optim.SparseAdam):
        why = "steps only on sparse gradients (nn.Embedding(sparse=True)); models give dense ones"
    if why is not None:
        raise ConfigError(
            f"optimizer.{binder.TARGET}",
            cfg[binder.TARGET],
            f"{why}; the runner calls step() once a batch: use another optimizer",
        )


def build_optimizer(cfg: Mapping[str, Any], groups: Sequence[Group]) -> Any:
    """One torch optimizer over `groups`, each at lr = optimizer.lr x its multiplier."""
    lr = cfg["lr"]
    if len(groups) == 1 and groups[0].name is None:
        params: Any = groups[0].params
    else:
        params = [{"params": g.params, "lr": lr * g.scale, "name": g.name} for g in groups]
    spec = spec_of(cfg)
    if spec is None:
        return binder.instantiate(cfg, params, ours=OURS)
    kwargs = {k: tuple(cfg[k]) if k == "betas" else cfg[k] for k in spec.keys}
    cls = getattr(torch.optim, spec.cls)
    return cls(params, lr=lr, weight_decay=cfg["weight_decay"], **kwargs)
