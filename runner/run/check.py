"""Start-up validation of the whole composed config, before any data or model is built.

One pass, group by group (`CHECKS`: each node handed once to its checker): each built-in
option's keys, types and ranges come from its schema (runner/config/schema.py), the
scheduler's from its registry, a `_target_` component's from its target's signature; then
the checks that tie keys together or need the machine. A typo costs a second and a clear
message naming the key, not a crashed run. What passed is typed once for the builders
(runner/config/schema.py `run_spec`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from functools import partial
from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner.config.compose import CONF
from runner.config.schema import GROUPS, SCHEMAS, LrFind, Run, Trainer, check_node
from runner.data.fingerprint import absolute_roots
from runner.data.sets import check_data, data_shape, load_data
from runner.dist.ddp import wanted
from runner.run.branch import check_branch
from runner.train.averaging import validate_average
from runner.train.builders import resolve_device
from runner.train.model_check import check_batch_norm, check_model_on_data
from runner.train.models import (
    build_model,
    default_no_decay,
    model_named,
    part_names,
    probe_parts,
    validate_model,
    width_keys,
)
from runner.train.optimizers import (
    base_lr,
    check_optimizer,
    check_scheduler,
    plan_groups,
    validate_optimizer,
    validate_schedule,
)
from runner.train.range_test import check_points, check_range
from schedulers import ConfigError
from schedulers.binder import plain


def planned_groups(cfg: Mapping[str, Any]) -> list[tuple[str, float]]:
    """The param groups the optimizer will get, as (label, lr multiplier) in build order,
    found before anything is built (runner/train/optimizers.py `plan_groups`, on the
    data's shape)."""
    model = cfg["model"]
    probe = partial(probe_parts, model, *data_shape(plain(cfg["data"])))
    return plan_groups(cfg["optimizer"], part_names(model), default_no_decay(model), probe)


def fill_inferred(cfg: Mapping[str, Any]) -> bool:
    """Values the data decides (data.num_classes: null, read from the train set) written
    into the config before anything reads them: `${data.num_classes}` in a model's node
    then gives the number, and config.yaml and W&B record it. Whether one was filled."""
    return _fill_classes(cfg["data"])


def _fill_classes(data: Mapping[str, Any]) -> bool:
    if data.get("num_classes", 0) is not None:
        return False
    data["num_classes"] = load_data(plain(data)).num_classes  # type: ignore[index]
    return True


@dataclass(frozen=True)
class Checked:
    """What the start-up check worked out about a run, kept so that nothing is worked out
    twice: the Hydra job of the process whose CLI checked the run takes it instead of
    checking again (`validate_and_hand_on`), and optimizer.lr=find checks again only what
    the lr decides (`check_found_lr`)."""

    image_shape: tuple[int, ...]  # a sample's shape, read from the data
    num_classes: int  # the data's (data.num_classes: null is filled with it)
    n_train: int  # training samples
    steps_per_epoch: int
    groups: tuple[tuple[str, float], ...]  # the planned param groups: (label, lr multiplier)
    lr: float  # the base lr the schedule was checked against (lr=find: lr_find.end_lr)
    branch_epoch: int | None = None  # a branch's start in its trunk (branch_epoch: null filled)
    # the data set loaded to check the run: the build trains on it instead of loading it
    # again (runner/data/sets.py `still_held`). Not compared, and not sent to the other
    # ranks of a DDP run (`__getstate__`): each process holds its own
    data: Any = field(default=None, compare=False, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "data": None}


def validate(cfg: Mapping[str, Any], *, trunk: bool = True) -> Checked:
    """Raise ConfigError naming the first bad key; returns what it found when the config
    can run. A config the CLI of this same process checked (`validate_and_hand_on`) is not
    checked again: its result is taken, once, and its inferred values filled in. `trunk`
    False: a branch resumed from its own checkpoint, which no longer needs its trunk."""
    handed = _take_handed(cfg)
    if handed is not None:
        data = cfg["data"]
        if data.get("num_classes", 0) is None:
            data["num_classes"] = handed.num_classes
        if cfg.get("branch_epoch", 0) is None:
            cfg["branch_epoch"] = handed.branch_epoch
        return handed
    return _validate(cfg, trunk)


def _validate(cfg: Mapping[str, Any], trunk: bool = True) -> Checked:
    """The whole check in one pass over the config's nodes: each node is handed once to
    the checker `CHECKS` names for it, in the order its errors are reported, with what
    the nodes before it found (the data's shape for the model, the lr for the schedule);
    then, for a branch, its trunk (`use_branch`)."""
    if isinstance(cfg, DictConfig):
        for key in sorted(OmegaConf.missing_keys(cfg)):
            raise ConfigError(key, "???", "must be set (it has no default)")
    values = None
    found: dict[str, Any] = {}
    for group, check in CHECKS:
        if values is None:  # resolved once (again once the data filled a value in)
            values = plain(cfg)
        try:
            check(values[group] if group else _top(values), found)
        except ConfigError as err:
            raise _with_defaults_hint(err, group, values) from None
        if group == "data" and _inferred_into(cfg, values["data"]):
            values = None  # a `${data.num_classes}` in a later node then gives the number
    found.setdefault("branch_epoch", None)
    checked = Checked(**{f.name: found[f.name] for f in fields(Checked)})
    return use_branch(cfg, checked) if trunk else checked


def _with_defaults_hint(err: ConfigError, group: str, values: Mapping[str, Any]) -> ConfigError:
    """A key missing from a group's node: the node came from a <group>/<name>.yaml of the
    user's own that lists only its own keys. "missing; its default is 0.9" then says what,
    not how: the file's first line keeps the built-in's defaults."""
    if not group or not err.rule.startswith("missing"):
        return err
    name = values[group].get("name") if isinstance(values[group], Mapping) else None
    base = name if isinstance(name, str) and (CONF / group / f"{name}.yaml").is_file() else None
    if group == "data" and name is None and values["data"].get("train") is not None:
        base = "dataset"  # splits of one's own
    first = f"defaults: [{base or '<the built-in it extends>'}, _self_]"
    return ConfigError(
        err.key,
        err.value,
        f"{err.rule}; a {group}/<name>.yaml of your own keeps the built-in's other keys when "
        f"it starts with `{first}`",
    )


def _inferred_into(cfg: Mapping[str, Any], data: Mapping[str, Any]) -> bool:
    """data.num_classes the data checker filled into the plain `data` values
    (`fill_inferred`) written into the config too (config.yaml and W&B record it);
    whether it was."""
    if data is cfg["data"] or cfg["data"].get("num_classes", 0) is not None:
        return False
    cfg["data"]["num_classes"] = data["num_classes"]  # type: ignore[index]
    return True


def _top(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The top-level keys (seed, epochs, resume): the "" group's node."""
    return {k: v for k, v in cfg.items() if k not in GROUPS}


def _check_top(node: Mapping[str, Any], found: dict[str, Any]) -> None:
    _check_packages(node)
    check_node("", node, Run)
    found["epochs"] = node["epochs"]


def _check_packages(node: Mapping[str, Any]) -> None:
    """A preset of the user's own (+experiment=mine) whose file lacks `# @package _global_`:
    its keys land under its group's name, one unknown top-level key holding them all, which
    "unknown key" alone does not explain."""
    known = {f.name for f in fields(Run)}
    for key, value in node.items():
        if isinstance(value, Mapping) and key not in known:
            raise ConfigError(
                key,
                dict(value),
                f"unknown key; from +{key}=<name>, {key}/<name>.yaml's keys landed under "
                f"'{key}.': a preset that sets the config's own keys starts with the line "
                "`# @package _global_` (as conf/experiment/*.yaml do)",
            )


def _check_trainer(node: Mapping[str, Any], found: dict[str, Any]) -> None:
    check_node("trainer", node, Trainer)
    validate_average(node["average"], node["swa_start"], found["epochs"])
    wanted(node["strategy"])  # ddp outside torchrun: an error now
    resolve_device(node["device"])  # `cuda` without CUDA: an error now, not mid-run
    found["accumulate"] = node["accumulate"]


def _check_model(node: Mapping[str, Any], found: dict[str, Any]) -> None:
    """Against the data it will train on: its input shape, its classes, a forward pass."""
    data = found["data"]
    probed = validate_model(node, data.image_shape, data.num_classes)  # on meta
    # what the optimizer's param groups are planned on (`plan_groups`): its part names,
    # optimizer.no_decay's value when null, and (only for name patterns and no_decay) the
    # model built on the meta device
    found["parts"], found["no_decay"] = part_names(node), default_no_decay(node)
    found["probe"] = partial(probe_parts, node, data.image_shape, data.num_classes)
    rebuild = partial(build_model, node, data.image_shape, data.num_classes)  # on the CPU
    named = model_named(node)
    check_model_on_data(probed, rebuild, data, found["data_name"], named, width_keys(node))
    check_batch_norm(probed, data, found["batch_size"], named)


def _check_lr_find(node: Mapping[str, Any], found: dict[str, Any]) -> None:
    check_node("lr_find", node, LrFind)  # as range_test.validate_lr_find, its range as numbers
    check_range(node["start_lr"], node["end_lr"])
    check_points(node["num_iters"], node["val_every"])
    found["end_lr"] = node["end_lr"]


def _check_logger(node: Mapping[str, Any], found: dict[str, Any]) -> None:
    validate_logger(node)


# Every group's checker, in the order errors are reported ("": the top-level keys); each
# reads what the ones before it put into `found` (runner/config/schema.py declares the keys
# each checks). The data's, optimizer's and scheduler's sit beside what they call
# (runner/data/sets.py, runner/train/optimizers.py): the pass calls down once for each.
CHECKS: tuple[tuple[str, Callable[[Mapping[str, Any], dict[str, Any]], None]], ...] = (
    ("", _check_top),
    ("trainer", _check_trainer),
    ("data", check_data),
    ("model", _check_model),
    ("lr_find", _check_lr_find),
    ("optimizer", check_optimizer),
    ("scheduler", check_scheduler),
    ("logger", _check_logger),
)


def use_branch(cfg: Mapping[str, Any], checked: Checked) -> Checked:
    """branch=<trunk>: checked against its trunk (runner/run/branch.py), and branch_epoch
    filled when null (the epoch chosen, as config.yaml and W&B then record it). A run that
    is no branch returns `checked` as it is (branch_epoch alone is an error)."""
    if cfg.get("branch") is None:
        if cfg.get("branch_epoch") is not None:
            raise ConfigError("branch_epoch", cfg["branch_epoch"], "needs branch=<trunk run dir>")
        return checked
    base_lrs = [checked.lr * m for _, m in checked.groups]
    k = check_branch(cfg, checked.steps_per_epoch, base_lrs)
    cfg["branch_epoch"] = k  # type: ignore[index]
    return replace(checked, branch_epoch=k)


def checked_lr(cfg: Mapping[str, Any]) -> float:
    """optimizer.lr as the number the optimizer gets (lr=find: lr_find.end_lr, the largest
    the range test can return)."""
    return base_lr(cfg["optimizer"]["lr"], cfg["lr_find"]["end_lr"])


def check_schedule(cfg: Mapping[str, Any], checked: Checked) -> None:
    """The scheduler against the base lr of each planned param group."""
    validate_schedule(
        cfg["scheduler"], cfg["epochs"], checked.steps_per_epoch, checked.lr, checked.groups
    )


def check_found_lr(cfg: Mapping[str, Any], checked: Checked) -> Checked:
    """optimizer.lr=find, once the range test has set optimizer.lr: what the lr decides
    (the optimizer built with it, the schedule's checks against it) checked again; the
    data, model and param groups were checked at start-up and are what they were. `cfg`:
    the final config's plain values (`plain`, runner/run/train.py)."""
    lr = checked_lr(cfg)
    validate_optimizer(cfg["optimizer"], lr)
    found = replace(checked, lr=lr)
    check_schedule(cfg, found)
    return found


# The result of the check the CLI made before Hydra started (runner/cli.py), by the
# config's content; the job Hydra then runs in the same process takes it (`validate`).
_HANDED: dict[str, Checked] = {}


def validate_and_hand_on(cfg: Mapping[str, Any]) -> Checked:
    """`validate`, and keep its result for the job of this process that runs this same
    config: a single run is checked once, before Hydra makes its run dir, not again in
    the job. Keyed by the content as given (before the check fills inferred values)."""
    _HANDED.clear()
    key = _content(cfg)
    checked = _validate(cfg)
    if key is not None:
        _HANDED[key] = checked
    return checked


def _take_handed(cfg: Mapping[str, Any]) -> Checked | None:
    """The result handed on for this config, if any (taken: a later check checks anew)."""
    if not _HANDED:
        return None
    key = _content(cfg)
    checked = _HANDED.pop(key, None) if key is not None else None
    _HANDED.clear()
    return checked


def _content(cfg: Mapping[str, Any]) -> str | None:
    """The config's resolved values as text, its data paths absolute as the job makes them
    (runner/data/fingerprint.py); None when it cannot be resolved here."""
    try:
        values = OmegaConf.create(plain(cfg))
    except Exception:  # e.g. a ${hydra:...} value outside a Hydra job: never handed on
        return None
    absolute_roots(values)
    return OmegaConf.to_yaml(values)


def validate_logger(cfg: Mapping[str, Any]) -> None:
    """One node per backend, each checked by its schema."""
    backends = SCHEMAS["logger"]
    for name in cfg:
        if name not in backends:
            raise ConfigError(
                f"logger.{name}", cfg[name], f"unknown logger; choose from {list(backends)}"
            )
        check_node(f"logger.{name}", cfg[name], backends[name])
