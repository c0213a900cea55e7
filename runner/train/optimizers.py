"""Optimizers: the built-ins by name (one entry each in `OPTIMIZERS`), any other by
`_target_`, and the param groups that give parts of a model their own lr.

`optimizer.lr` is always the base lr; `optimizer.param_groups` maps a built-in model's
part names (mlp hidden/head, lenet features/classifier, resnet18 backbone/head), or
parameter-name patterns for any model (`{"backbone.*": 0.1, "head.*": 1.0}`, fnmatch
against `model.named_parameters()`), to lr multipliers (`0.1`) or to `{lr: 0.1,
weight_decay: 0.0}`. With patterns every parameter must fall in exactly one group, so no
parameter trains at an lr nobody chose. `optimizer.no_decay: true` splits each group in
two: its 1-D parameters and embedding tables train without weight decay (`<group>/no_decay`);
null (the default) is the built-in model's choice (`exempts_decay`).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import torch

from runner.config import schema
from schedulers import ConfigError, binder, validate_scheduler
from schedulers.checks import is_number, need_bool, need_number, need_positive

log = logging.getLogger("schedlab")
OURS = ("param_groups", "no_decay")  # keys of a `_target_` optimizer that the runner reads itself


def _check_betas(cfg: Mapping[str, Any]) -> None:
    betas = cfg["betas"]
    ok = isinstance(betas, Sequence) and not isinstance(betas, str) and len(betas) == 2
    if not ok or not all(is_number(b) and 0 <= b < 1 for b in betas):
        raise ConfigError("optimizer.betas", betas, "must be two numbers in [0, 1)")


def _no_check(cfg: Mapping[str, Any]) -> None:
    return None


def _check_sf_betas(cfg: Mapping[str, Any]) -> None:
    """Schedule-free AdamW's beta1 interpolates between its two points and its eval()
    divides by it: 0 is out, unlike Adam's."""
    _check_betas(cfg)
    if cfg["betas"][0] <= 0:
        raise ConfigError("optimizer.betas", cfg["betas"], "beta1 must be in (0, 1) here")


@dataclass(frozen=True)
class OptimizerSpec:
    cls: str  # the torch.optim class, or a class by its import path (schedulefree.X)
    keys: tuple[str, ...]  # config keys passed to it besides lr and weight_decay
    schema: type  # its keys, types, defaults and checks (runner/config/schema.py)
    check: Callable[[Mapping[str, Any]], None]  # what ties keys together
    fusable: bool = True  # runner/sweep/stacked.py's FusedOptimizer implements its step

    @property
    def path(self) -> str:
        return self.cls if "." in self.cls else f"torch.optim.{self.cls}"


_SF = ("warmup_steps", "r", "weight_lr_power")  # schedulefree's own keys
OPTIMIZERS: dict[str, OptimizerSpec] = {
    "sgd": OptimizerSpec("SGD", ("momentum", "nesterov"), schema.Sgd, _no_check),
    "adam": OptimizerSpec("Adam", ("betas", "eps"), schema.Adam, _check_betas),
    "adamw": OptimizerSpec("AdamW", ("betas", "eps"), schema.AdamW, _check_betas),
    # schedule-free (Defazio et al. 2024): their step keeps two points that the stacked
    # FusedOptimizer does not, so they train as separate runs under hydra/launcher=fused
    "schedulefree_sgd": OptimizerSpec(
        "schedulefree.SGDScheduleFree",
        ("momentum", *_SF),
        schema.SgdScheduleFree,
        _no_check,
        fusable=False,
    ),
    "schedulefree_adamw": OptimizerSpec(
        "schedulefree.AdamWScheduleFree",
        ("betas", "eps", *_SF),
        schema.AdamWScheduleFree,
        _check_sf_betas,
        fusable=False,
    ),
}


def spec_of(cfg: Mapping[str, Any]) -> OptimizerSpec | None:
    """The built-in's spec, or None for a `_target_` optimizer."""
    return binder.builtin_spec("optimizer", cfg.get(binder.TARGET), cfg.get("name"), OPTIMIZERS)


# -- param groups ---------------------------------------------------------------------------
GROUP_KEYS = ("lr", "weight_decay")  # what a param_groups entry may set besides a bare lr x


@dataclass(frozen=True)
class Group:
    name: str | None  # logged as lr/<name>; None: the single group (lr/group0)
    params: list[Any]
    scale: float  # lr multiplier
    weight_decay: float | None = None  # None: the optimizer's own optimizer.weight_decay


@dataclass(frozen=True)
class Setting:
    """One `optimizer.param_groups` entry: `0.1` or `{lr: 0.1, weight_decay: 0.0}`."""

    scale: float
    weight_decay: float | None


def _setting(key: str, value: Any) -> Setting:
    if not isinstance(value, Mapping):
        need_positive(key, value)
        return Setting(float(value), None)
    for name in value:
        if name not in GROUP_KEYS:
            raise ConfigError(
                f"{key}.{name}", value[name], f"unknown key; a group sets only {list(GROUP_KEYS)}"
            )
    need_positive(f"{key}.lr", value.get("lr", 1.0))
    decay = value.get("weight_decay")
    if decay is not None:
        need_number(f"{key}.weight_decay", decay, 0)
    return Setting(float(value.get("lr", 1.0)), None if decay is None else float(decay))


def group_settings(cfg: Mapping[str, Any]) -> dict[str, Setting] | None:
    """optimizer.param_groups checked: {part or pattern: its lr multiplier and weight decay}."""
    entries = cfg.get("param_groups")
    if entries is None:
        return None
    if not isinstance(entries, Mapping) or not entries:
        raise ConfigError(
            "optimizer.param_groups",
            entries,
            "must be null or a mapping {part or pattern: lr x, or {lr: x, weight_decay: v}}",
        )
    return {str(k): _setting(f"optimizer.param_groups.{k}", v) for k, v in entries.items()}


def uses_parts(cfg: Mapping[str, Any], parts: Sequence[str]) -> bool:
    """Keys that are all part names of a built-in model pick parts; otherwise patterns."""
    settings = group_settings(cfg) or {}
    return bool(parts) and all(key in parts for key in settings)


def group_label(pattern: str) -> str:
    """A metric-safe name for a pattern's group: `backbone.*` -> `backbone`."""
    name = re.sub(r"(\.\*|\*)+$", "", pattern)
    return re.sub(r"[^A-Za-z0-9_.\-]+", "_", name).strip("_.") or "group"


def no_decay_ids(model: torch.nn.Module) -> set[int]:
    """The parameters `optimizer.no_decay` exempts from weight decay, as timm's
    param_groups_weight_decay and HF's Trainer do: every 1-D one (biases, norm scales and
    shifts, which decay would pull to 0 for no regularising gain) and embedding tables
    (decay shrinks rare tokens' rows most)."""
    ids = {id(p) for n, p in model.named_parameters() if p.ndim <= 1 or n.endswith(".bias")}
    ids |= {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    return ids


def _split_decay(groups: list[Group], exempt: set[int]) -> list[Group]:
    """Each group as its decayed half and its `/no_decay` half (weight decay 0), in that
    order; a half with no parameter is left out (torch would log an lr nobody trains at)."""
    out = []
    for g in groups:
        decay = [p for p in g.params if id(p) not in exempt]
        flat = [p for p in g.params if id(p) in exempt]
        if decay:
            out.append(Group(g.name or "decay", decay, g.scale, g.weight_decay))
        if flat:
            name = f"{g.name}/no_decay" if g.name else "no_decay"
            out.append(Group(name, flat, g.scale, 0.0))
    return out


def exempts_decay(cfg: Mapping[str, Any], default: bool) -> bool:
    """optimizer.no_decay as set; null: `default`, the model's choice
    (runner/train/models.py `default_no_decay`)."""
    value = cfg.get("no_decay")
    return default if value is None else bool(value)


def split_params(
    cfg: Mapping[str, Any],
    model: torch.nn.Module,
    parts: Mapping[str, Sequence[Any]],
    no_decay: bool,
) -> list[Group]:
    """The optimizer's param groups, in order: one per part or pattern of
    optimizer.param_groups (else one), each split in two when `no_decay` (`exempts_decay`).
    `parts`: the built-in model's named parts (runner/train/models.py `model_parts`; none
    for a `_target_` model)."""
    groups = _by_setting(cfg, list(model.named_parameters()), parts)
    if no_decay:
        groups = _split_decay(groups, no_decay_ids(model))
    return groups


def plan_groups(
    cfg: Mapping[str, Any],
    parts: Sequence[str],
    default: bool,
    probe: Callable[[], tuple[torch.nn.Module, Mapping[str, Sequence[Any]]]],
) -> list[tuple[str, float]]:
    """The param groups the optimizer will get, as (label, lr multiplier) in build order,
    found before the model is built: from the built-in model's `parts` names, or, for name
    patterns and no_decay (which need each parameter's shape and module), from `probe()`:
    the model built on the meta device and its named parts (runner/train/models.py
    `probe_parts`). `default`: optimizer.no_decay's value when null."""
    settings, no_decay = group_settings(cfg), exempts_decay(cfg, default)
    if settings is None and not no_decay:
        return [("group0", 1.0)]
    if settings is not None and not no_decay and uses_parts(cfg, parts):
        return [(p, settings[p].scale if p in settings else 1.0) for p in parts]
    model, named = probe()
    return [(g.name or "group0", g.scale) for g in split_params(cfg, model, named, no_decay)]


def _by_setting(
    cfg: Mapping[str, Any],
    named: Sequence[tuple[str, Any]],
    parts: Mapping[str, Sequence[Any]],
) -> list[Group]:
    settings = group_settings(cfg)
    if settings is None:
        return [Group(None, [p for _, p in named], 1.0)]
    if uses_parts(cfg, list(parts)):
        default = Setting(1.0, None)
        return [
            Group(
                part,
                list(ps),
                settings.get(part, default).scale,
                settings.get(part, default).weight_decay,
            )
            for part, ps in parts.items()
        ]
    hits = {name: [pat for pat in settings if fnmatchcase(name, pat)] for name, _ in named}
    given = {str(k): v for k, v in cfg["param_groups"].items()}  # `{0: 0.5}`: an int key
    # a key that is neither a part name nor matches a parameter is the likely typo: name it
    for pattern in sorted(settings, key=lambda k: k in parts):
        if not any(pattern in h for h in hits.values()):
            hint = f"; parts of this model: {list(parts)}" if parts else ""
            raise ConfigError(
                f"optimizer.param_groups.{pattern}",
                binder.plain(given[pattern]),
                f"matches no parameter (their names look like '{named[0][0]}'){hint}",
            )
    members: dict[str, list[Any]] = {pattern: [] for pattern in settings}
    for name, param in named:
        if len(hits[name]) != 1:
            which = "matches no pattern" if not hits[name] else f"matches {hits[name]}"
            raise ConfigError(
                "optimizer.param_groups",
                binder.plain(cfg["param_groups"]),
                f"parameter '{name}' {which}; every parameter needs exactly one group "
                f"(e.g. '{name.rsplit('.', 1)[0]}.*')",
            )
        members[hits[name][0]].append(param)
    labels = [group_label(p) for p in settings]
    if len(set(labels)) != len(labels):
        labels = [f"{label}{i}" for i, label in enumerate(labels)]
    return [
        Group(label, members[pattern], settings[pattern].scale, settings[pattern].weight_decay)
        for label, pattern in zip(labels, settings, strict=True)
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
        group_settings(cfg)
        return
    settings = group_settings(cfg) or {}
    if cfg.get("no_decay") is not None:
        need_bool("optimizer.no_decay", cfg["no_decay"])
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
    _check_decays(cfg, settings, built)


def _check_decays(cfg: Mapping[str, Any], settings: Mapping[str, Setting], built: Any) -> None:
    """A group's weight decay is a `weight_decay` entry in its torch param group: an
    optimizer without that hyper-parameter would carry it along unread, so the decay the
    config asks for would silently not happen."""
    if "weight_decay" in built.defaults:
        return
    asked = [
        (f"optimizer.param_groups.{k}.weight_decay", s.weight_decay)
        for k, s in settings.items()
        if s.weight_decay is not None
    ]
    if cfg.get("no_decay", False):
        asked.insert(0, ("optimizer.no_decay", True))
    if asked:
        key, value = asked[0]
        raise ConfigError(
            key, value, f"{cfg[binder.TARGET]} has no weight_decay hyper-parameter to set"
        )


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
    """One torch optimizer over `groups`, each at lr = optimizer.lr x its multiplier, and at
    its own weight decay where it has one (else the optimizer's)."""
    lr = cfg["lr"]
    if len(groups) == 1 and groups[0].name is None:
        params: Any = groups[0].params
    else:
        params = [_torch_group(g, lr) for g in groups]
    spec = spec_of(cfg)
    if spec is None:
        return binder.instantiate(cfg, params, ours=OURS)
    kwargs = {k: tuple(cfg[k]) if k == "betas" else cfg[k] for k in spec.keys}
    cls = _class_of(spec)
    return cls(params, lr=lr, weight_decay=cfg["weight_decay"], **kwargs)


def _class_of(spec: OptimizerSpec) -> Any:
    module, _, name = spec.path.rpartition(".")
    return getattr(importlib.import_module(module), name)


# -- schedule-free optimizers ---------------------------------------------------------------
def is_schedule_free(cfg: Mapping[str, Any]) -> bool:
    """The configured optimizer switches between train and eval weights itself: its class
    has `train` and `eval` methods (runner/train/steps.py `schedule_free`, the same duck
    test on the built optimizer), built-in or by `_target_`."""
    spec = spec_of(cfg)
    cls = _class_of(spec) if spec is not None else binder.locate("optimizer", cfg)
    return callable(getattr(cls, "train", None)) and callable(getattr(cls, "eval", None))


def schedule_free_key(opt: Mapping[str, Any]) -> str | None:
    """A schedule-free optimizer (`is_schedule_free`) as its config names it
    (`optimizer=<name>` or `optimizer._target_=<class>`), for `warn_schedule_free`; None
    for any other."""
    if not is_schedule_free(opt):
        return None
    if binder.is_target(opt):
        return f"optimizer._target_={opt[binder.TARGET]}"
    return f"optimizer={opt['name']}"


def warn_schedule_free(which: str, scheduler: str, warmups: Mapping[str, Any]) -> None:
    """A schedule-free optimizer needs no lr schedule and warms up by its own
    optimizer.warmup_steps: a schedule on top of it (its lr decayed, or warmed up per
    epoch) is allowed, as the authors allow it, but rarely what was meant, so it warns,
    naming both keys. `which`: the optimizer (`schedule_free_key`); `scheduler`: the
    scheduler's name (or class); `warmups`: its scheduler.warmup_epochs and warmup_steps."""
    if scheduler != "none":
        log.warning(
            f"{which} with scheduler={scheduler}: a schedule-free optimizer needs no lr "
            "schedule (the schedule scales its lr on top of its own averaging); use "
            "scheduler=none"
        )
    for key, value in warmups.items():
        if value:
            log.warning(
                f"{which} with scheduler.{key}={value}: it warms up by itself; use "
                f"optimizer.warmup_steps (optimizer steps) and scheduler.{key}=0"
            )


# -- the optimizer's and the schedule's checkers in start-up validation -----------------------
# (runner/run/check.py `CHECKS`): here, beside what they call, so that validation calls down
# once per node; each reads what the checkers before it put into `found`.
def check_optimizer(node: Mapping[str, Any], found: dict[str, Any]) -> None:
    """optimizer.lr=find is decided by the range test before training, and its consequences
    checked again then (runner/run/check.py `check_found_lr`); until then the optimizer and
    schedule are checked against the largest lr the test can return (lr_find.end_lr)."""
    found["lr"] = lr = base_lr(node["lr"], found["end_lr"])
    validate_optimizer(node, lr)
    groups = plan_groups(node, found["parts"], found["no_decay"], found["probe"])
    found["groups"] = tuple(groups)
    found["schedule_free"] = schedule_free_key(node)  # what the scheduler's check warns on
    found["momentum"] = node.get("momentum")  # SGD's: 0 is no momentum, which cycling turns on


def check_scheduler(node: Mapping[str, Any], found: dict[str, Any]) -> None:
    """Against the run's length and each planned group's lr; then a schedule on top of a
    schedule-free optimizer warns (this is where the two nodes meet)."""
    validate_schedule(node, found["epochs"], found["steps_per_epoch"], found["lr"], found["groups"])
    if found.get("momentum") == 0:
        keep_momentum_off(node)
    if found["schedule_free"] is not None:
        warn_schedule_free(
            found["schedule_free"],
            binder.label(node),
            {k: node.get(k, 0) for k in ("warmup_epochs", "warmup_steps")},
        )


def keep_momentum_off(node: Mapping[str, Any]) -> None:
    """optimizer.momentum=0 (plain SGD) under a schedule that cycles momentum: torch's
    OneCycleLR/CyclicLR write 0.85..0.95 into the group's momentum, so the run would train
    with the momentum the user turned off (only the momentum/ columns would show it)."""
    phases = node.get("phases") if node.get("name") == "sequence" else None
    parts = [("scheduler", node)]
    parts += [(f"scheduler.phases.{i}", p) for i, p in enumerate(phases or [])]
    for where, part in parts:
        name = part.get("name") if isinstance(part, Mapping) else None
        if name in ("onecycle", "cyclic") and part.get("cycle_momentum", name == "onecycle"):
            raise ConfigError(
                f"{where}.cycle_momentum",
                True,
                f"{name} would cycle momentum between 0.85 and 0.95, turning on the momentum "
                "optimizer.momentum=0 turns off: set it to false to train without momentum",
            )


def base_lr(lr: Any, end_lr: float) -> float:
    """optimizer.lr as the number the optimizer gets (find: lr_find.end_lr, the largest the
    range test can return)."""
    if lr == "find":
        return float(end_lr)
    if not is_number(lr) or lr <= 0:
        raise ConfigError("optimizer.lr", lr, "must be a number > 0, or find")
    need_number("optimizer.lr", lr)  # and one that fits in float32
    return float(lr)


def validate_schedule(
    node: Mapping[str, Any],
    epochs: int,
    per_epoch: int,
    lr: float,
    groups: Sequence[tuple[str, float]],
) -> None:
    """The scheduler against the base lr of each planned param group."""
    validate_scheduler(
        node,
        epochs=epochs,
        steps_per_epoch=per_epoch,
        base_lrs=[lr * m for _, m in groups],
        metrics=schema.EPOCH_METRICS,
    )


def _torch_group(group: Group, lr: float) -> dict[str, Any]:
    out = {"params": group.params, "lr": lr * group.scale, "name": group.name}
    if group.weight_decay is not None:
        out["weight_decay"] = group.weight_decay
    return out
