"""Start-up validation of the whole composed config, before any data or model is built.

Hydra already rejects unknown keys (struct mode) and unknown group options; this
checks values, so a typo costs a second and a clear message, not a crashed run.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from schedulers import ConfigError, validate_scheduler

OPTIMIZERS = ("sgd", "adam", "adamw")
EPOCH_METRICS = ("train/loss", "train/acc", "val/loss", "val/acc")  # what a Plateau may monitor
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
_PROGRESS = ("auto", "bar", "line")


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(key, value, "must be a number")
    return float(value)


def _int(key: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(key, value, f"must be an integer >= {low}")
    return value


def group_multipliers(scales: Any, model_cfg: Mapping[str, Any]) -> list[float]:
    """The lr multiplier of each param group the optimizer will get, in build order."""
    from runner.models import part_names

    if scales is None:
        return [1.0]
    parts = part_names(model_cfg)
    if not isinstance(scales, Mapping):
        raise ConfigError(
            "optimizer.param_groups", scales, f"must be null or a mapping over {list(parts)}"
        )
    for part, scale in scales.items():
        if part not in parts:
            raise ConfigError(
                f"optimizer.param_groups.{part}",
                scale,
                f"'{part}' is not a part of {model_cfg['name']}; parts: {list(parts)}",
            )
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale <= 0:
            raise ConfigError(f"optimizer.param_groups.{part}", scale, "must be a number > 0")
    return [float(scales.get(p, 1.0)) for p in parts]


TOP_LEVEL = ("model", "optimizer", "scheduler", "data", "logger", "trainer", "lr_find",
             "seed", "epochs", "resume")  # fmt: skip


def check_known_keys(cfg: Mapping[str, Any]) -> None:
    """Keys added with `+key=...` that nothing reads are typos: reject them by name.

    A group's allowed keys are those of its option's YAML file (the scheduler's are
    checked by its registry, which knows every schedule's parameters)."""
    import yaml

    from runner.compose import CONF

    for key in cfg:
        if key not in TOP_LEVEL:
            raise ConfigError(key, cfg[key], f"unknown top-level key; known: {list(TOP_LEVEL)}")
    for group in ("model", "optimizer", "data", "logger", "trainer", "lr_find"):
        option = cfg[group].get("name", "default")
        path = CONF / group / f"{option}.yaml"
        if not path.is_file():
            continue  # an unknown name: the group's own check names the choices
        allowed = list(yaml.safe_load(path.read_text()))
        for key in cfg[group]:
            if key not in allowed:
                raise ConfigError(
                    f"{group}.{key}",
                    cfg[group][key],
                    f"unknown key; {group} '{option}' has {allowed}",
                )


def validate(cfg: Mapping[str, Any]) -> None:
    """Raise ConfigError naming the first bad key; returns quietly when the config can run."""
    check_known_keys(cfg)
    from runner.data import steps_per_epoch, train_size, validate_data
    from runner.loggers import validate_logger
    from runner.lr_find import validate_lr_find
    from runner.models import validate_model

    _int("seed", cfg["seed"], 0)
    epochs = _int("epochs", cfg["epochs"], 1)

    trainer = cfg["trainer"]
    if not isinstance(trainer["device"], str) or not _DEVICE.match(trainer["device"]):
        raise ConfigError(
            "trainer.device", trainer["device"], "must be auto, cpu, mps, cuda or cuda:N"
        )
    if trainer["channels_last"] not in ("auto", True, False):
        raise ConfigError(
            "trainer.channels_last", trainer["channels_last"], "must be auto, true or false"
        )
    for key in ("amp", "deterministic", "compile"):
        if not isinstance(trainer[key], bool):
            raise ConfigError(f"trainer.{key}", trainer[key], "must be true or false")
    _int("trainer.log_every_n_steps", trainer["log_every_n_steps"], 0)
    if trainer["monitor"] not in EPOCH_METRICS:
        raise ConfigError(
            "trainer.monitor", trainer["monitor"], f"must be one of {list(EPOCH_METRICS)}"
        )
    if trainer["monitor_mode"] not in ("min", "max"):
        raise ConfigError("trainer.monitor_mode", trainer["monitor_mode"], "must be min or max")
    if not isinstance(trainer["checkpoint"], bool):
        raise ConfigError("trainer.checkpoint", trainer["checkpoint"], "must be true or false")
    if (
        trainer["diverge_loss"] is not None
        and _number("trainer.diverge_loss", trainer["diverge_loss"]) <= 0
    ):
        raise ConfigError("trainer.diverge_loss", trainer["diverge_loss"], "must be null or > 0")
    from runner.builders import resolve_device
    from runner.distributed import wanted

    wanted(trainer["strategy"])  # ddp outside torchrun: an error now

    resolve_device(trainer["device"])  # `cuda` without CUDA: an error now, not mid-run
    if trainer["progress"] not in _PROGRESS:
        raise ConfigError(
            "trainer.progress", trainer["progress"], f"must be one of {list(_PROGRESS)}"
        )

    validate_model(cfg["model"])

    opt = cfg["optimizer"]
    if opt["name"] not in OPTIMIZERS:
        raise ConfigError("optimizer.name", opt["name"], f"must be one of {list(OPTIMIZERS)}")
    validate_lr_find(cfg["lr_find"])
    if opt["lr"] == "find":
        # Decided by the range test before training, and validated again then; until then
        # check the schedule against the largest lr the test can return.
        lr = float(cfg["lr_find"]["end_lr"])
    else:
        lr = _number("optimizer.lr", opt["lr"])
        if lr <= 0:
            raise ConfigError("optimizer.lr", opt["lr"], "must be > 0, or find (LR range test)")
    if _number("optimizer.weight_decay", opt["weight_decay"]) < 0:
        raise ConfigError("optimizer.weight_decay", opt["weight_decay"], "must be >= 0")
    if "momentum" in opt and not 0 <= _number("optimizer.momentum", opt["momentum"]) < 1:
        raise ConfigError("optimizer.momentum", opt["momentum"], "must be in [0, 1)")

    validate_data(cfg["data"])
    base_lrs = [lr * m for m in group_multipliers(opt["param_groups"], cfg["model"])]
    validate_scheduler(
        cfg["scheduler"],
        epochs=epochs,
        steps_per_epoch=steps_per_epoch(train_size(cfg["data"]), cfg["data"]["batch_size"]),
        base_lrs=base_lrs,
        metrics=EPOCH_METRICS,
    )
    validate_logger(cfg["logger"])
