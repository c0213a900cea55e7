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


def validate(cfg: Mapping[str, Any]) -> None:
    """Raise ConfigError naming the first bad key; returns quietly when the config can run."""
    from runner.data import validate_data
    from runner.loggers import validate_logger
    from runner.models import validate_model

    _int("seed", cfg["seed"], 0)
    epochs = _int("epochs", cfg["epochs"], 1)

    trainer = cfg["trainer"]
    if not isinstance(trainer["device"], str) or not _DEVICE.match(trainer["device"]):
        raise ConfigError(
            "trainer.device", trainer["device"], "must be auto, cpu, mps, cuda or cuda:N"
        )
    for key in ("amp", "deterministic"):
        if not isinstance(trainer[key], bool):
            raise ConfigError(f"trainer.{key}", trainer[key], "must be true or false")
    _int("trainer.log_every_n_steps", trainer["log_every_n_steps"], 0)
    if trainer["progress"] not in _PROGRESS:
        raise ConfigError(
            "trainer.progress", trainer["progress"], f"must be one of {list(_PROGRESS)}"
        )

    validate_model(cfg["model"])

    opt = cfg["optimizer"]
    if opt["name"] not in OPTIMIZERS:
        raise ConfigError("optimizer.name", opt["name"], f"must be one of {list(OPTIMIZERS)}")
    lr = _number("optimizer.lr", opt["lr"])
    if lr <= 0:
        raise ConfigError("optimizer.lr", opt["lr"], "must be > 0")
    if _number("optimizer.weight_decay", opt["weight_decay"]) < 0:
        raise ConfigError("optimizer.weight_decay", opt["weight_decay"], "must be >= 0")
    if "momentum" in opt and not 0 <= _number("optimizer.momentum", opt["momentum"]) < 1:
        raise ConfigError("optimizer.momentum", opt["momentum"], "must be in [0, 1)")

    validate_scheduler(cfg["scheduler"], epochs=epochs, base_lr=lr)

    validate_data(cfg["data"])
    validate_logger(cfg["logger"])
