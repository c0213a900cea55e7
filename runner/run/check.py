"""Start-up validation of the whole composed config, before any data or model is built.

One pass, group by group: each built-in option's keys, types and ranges come from its
schema (runner/config/schema.py), the scheduler's from its registry, a `_target_` component's
from its target's signature; then the checks that tie keys together or need the machine.
A typo costs a second and a clear message naming the key, not a crashed run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runner.config.schema import EPOCH_METRICS, GROUPS, SCHEMAS, Run, Trainer, check_node
from runner.data.sets import data_shape, load_data, steps_per_epoch, train_size, validate_data
from runner.dist.ddp import wanted
from runner.train.builders import resolve_device
from runner.train.model_check import check_model_on_data
from runner.train.models import model_parts, part_names, probe_model, validate_model
from runner.train.optimizers import group_settings, split_params, uses_parts, validate_optimizer
from runner.train.range_test import validate_lr_find
from schedulers import ConfigError, validate_scheduler
from schedulers.checks import is_number, need_number


def planned_groups(cfg: Mapping[str, Any]) -> list[tuple[str, float]]:
    """The param groups the optimizer will get, as (label, lr multiplier) in build order,
    found before anything is built: from the built-in model's part names, or, for name
    patterns and optimizer.no_decay (which needs each parameter's shape and module), from
    the model built on the meta device."""
    opt, model_cfg = cfg["optimizer"], cfg["model"]
    settings, no_decay = group_settings(opt), opt.get("no_decay", False)
    if settings is None and not no_decay:
        return [("group0", 1.0)]
    parts = part_names(model_cfg)
    if settings is not None and not no_decay and uses_parts(opt, parts):
        return [(p, settings[p].scale if p in settings else 1.0) for p in parts]
    model = probe_model(model_cfg, *data_shape(cfg["data"]))
    groups = split_params(opt, model, model_parts(model, model_cfg))
    return [(g.name or "group0", g.scale) for g in groups]


def fill_inferred(cfg: Mapping[str, Any]) -> bool:
    """Values the data decides (data.num_classes: null, read from the train set) written
    into the config before anything reads them: `${data.num_classes}` in a model's node
    then gives the number, and config.yaml and W&B record it. Whether one was filled."""
    data = cfg["data"]
    if data.get("num_classes", 0) is not None:
        return False
    data["num_classes"] = load_data(data).num_classes
    return True


def validate(cfg: Mapping[str, Any]) -> None:
    """Raise ConfigError naming the first bad key; returns quietly when the config can run."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        for key in sorted(OmegaConf.missing_keys(cfg)):
            raise ConfigError(key, "???", "must be set (it has no default)")
    check_node("", {k: v for k, v in cfg.items() if k not in GROUPS}, Run)
    check_node("trainer", cfg["trainer"], Trainer)
    wanted(cfg["trainer"]["strategy"])  # ddp outside torchrun: an error now
    resolve_device(cfg["trainer"]["device"])  # `cuda` without CUDA: an error now, not mid-run

    validate_data(cfg["data"])
    fill_inferred(cfg)
    validate_model(cfg["model"], *data_shape(cfg["data"]))
    check_model_on_data(cfg["model"], load_data(cfg["data"]), cfg["data"]["name"])

    opt = cfg["optimizer"]
    validate_lr_find(cfg["lr_find"])
    if opt["lr"] == "find":
        # Decided by the range test before training, and validated again then; until then
        # check the schedule against the largest lr the test can return.
        lr = float(cfg["lr_find"]["end_lr"])
    else:
        if not is_number(opt["lr"]) or opt["lr"] <= 0:
            raise ConfigError("optimizer.lr", opt["lr"], "must be a number > 0, or find")
        need_number("optimizer.lr", opt["lr"])  # and one that fits in float32
        lr = float(opt["lr"])
    validate_optimizer(opt, lr)
    base_lrs = [lr * m for _, m in planned_groups(cfg)]
    validate_scheduler(
        cfg["scheduler"],
        epochs=cfg["epochs"],
        steps_per_epoch=steps_per_epoch(train_size(cfg["data"]), cfg["data"]["batch_size"]),
        base_lrs=base_lrs,
        metrics=EPOCH_METRICS,
    )
    validate_logger(cfg["logger"])


def validate_logger(cfg: Mapping[str, Any]) -> None:
    """One node per backend, each checked by its schema."""
    backends = SCHEMAS["logger"]
    for name in cfg:
        if name not in backends:
            raise ConfigError(
                f"logger.{name}", cfg[name], f"unknown logger; choose from {list(backends)}"
            )
        check_node(f"logger.{name}", cfg[name], backends[name])
