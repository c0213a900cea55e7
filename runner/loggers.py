"""Where metrics go: always `metrics.jsonl` in the run dir, plus W&B when configured.

Both receive the same epoch rows, so an offline run can be reported on without
W&B, and a W&B run can be compared against the file it came with.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from schedulers import ConfigError

WANDB_MODES = ("offline", "online", "disabled")


class RunLogger:
    """Fans every row out to the jsonl file and, if present, the W&B run."""

    def __init__(self, run_dir: Path, wandb_run: Any = None) -> None:
        self.metrics_path = run_dir / "metrics.jsonl"
        self.wandb_run = wandb_run

    def log_epoch(self, row: Mapping[str, Any]) -> None:
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(dict(row)) + "\n")  # NaN/inf as Python's json writes them
        if self.wandb_run is not None:
            self.wandb_run.log(dict(row))

    def log_step(self, row: Mapping[str, Any]) -> None:
        """Per-step rows (train/step_loss) go to W&B only; metrics.jsonl holds one row per epoch."""
        if self.wandb_run is not None:
            self.wandb_run.log(dict(row))

    def summary(self, values: Mapping[str, Any]) -> None:
        if self.wandb_run is not None:
            self.wandb_run.summary.update(dict(values))


def validate_logger(cfg: Mapping[str, Any]) -> None:
    name = cfg["name"]
    if name not in ("wandb", "none"):
        raise ConfigError("logger.name", name, "must be one of ['wandb', 'none']")
    if name == "wandb" and cfg["mode"] not in WANDB_MODES:
        raise ConfigError("logger.mode", cfg["mode"], f"must be one of {list(WANDB_MODES)}")


@contextmanager
def open_logger(
    cfg: Mapping[str, Any],
    run_dir: Path,
    config: dict[str, Any],
    overrides: list[str],
    sweep_name: str | None,
) -> Iterator[RunLogger]:
    """A RunLogger for the duration of one run; the W&B run is finished on exit, failed or not."""
    if cfg["name"] != "wandb" or cfg["mode"] == "disabled":
        yield RunLogger(run_dir)
        return

    import wandb

    # The `with` form marks the W&B run failed when the body raises (Hydra would otherwise
    # swallow the exception and W&B would record exit code 0); reinit="finish_previous"
    # gives every job of an in-process multirun its own run instead of reusing job 0's.
    with wandb.init(
        mode=cfg["mode"],
        project=cfg["project"],
        entity=cfg["entity"],
        group=cfg["group"] or sweep_name,
        tags=[t[:64] for t in (*cfg["tags"], *overrides)],  # W&B caps tags at 64 chars
        name=cfg["run_name"] or (",".join(overrides) or None),
        config={**config, "overrides": overrides},
        dir=str(run_dir),
        reinit="finish_previous",
        settings=wandb.Settings(console="off", silent=True, x_disable_stats=True),
    ) as run:
        run.define_metric("epoch")
        for pattern in ("lr/*", "train/*", "val/*", "time/*"):
            run.define_metric(pattern, step_metric="epoch")
        run.define_metric("trainer/global_step")
        for pattern in ("train/step_loss", "lr_step/*"):
            run.define_metric(pattern, step_metric="trainer/global_step")
        yield RunLogger(run_dir, run)
