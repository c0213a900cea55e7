"""Where metrics go: always `metrics.jsonl` in the run dir, plus W&B when configured.

Both receive the same epoch rows, so an offline run can be reported on without
W&B, and a W&B run can be compared against the file it came with.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from schedulers import ConfigError

log = logging.getLogger("schedlab")

WANDB_MODES = ("offline", "online", "disabled")


class RunLogger:
    """Fans every row out to the jsonl file and, if present, the W&B run.

    A W&B failure mid-run (disk full, service gone) costs one warning and the W&B
    run, never the training: metrics.jsonl is the record that must not be lost.
    """

    def __init__(self, run_dir: Path, wandb_run: Any = None, background: Any = None) -> None:
        self.metrics_path = run_dir / "metrics.jsonl"
        self.wandb_run = wandb_run
        self.run_id: str | None = getattr(wandb_run, "id", None)
        self.background = background  # runs W&B calls off the training thread when given

    def log_epoch(self, row: Mapping[str, Any]) -> None:
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(dict(row)) + "\n")  # NaN/inf as Python's json writes them
        self._to_wandb(lambda run: run.log(dict(row)))

    def log_step(self, row: Mapping[str, Any]) -> None:
        """Per-step rows (train/step_loss) go to W&B only; metrics.jsonl holds one row per epoch."""
        self._to_wandb(lambda run: run.log(dict(row)))

    def summary(self, values: Mapping[str, Any]) -> None:
        self._to_wandb(lambda run: run.summary.update(dict(values)))

    def _to_wandb(self, call: Any) -> None:
        if self.wandb_run is None:
            return

        def guarded() -> None:
            if self.wandb_run is None:
                return
            try:
                call(self.wandb_run)
            except Exception as err:
                log.warning(f"W&B logging failed ({err!r}); continuing with metrics.jsonl only")
                self.wandb_run = None

        if self.background is None:
            guarded()
        else:
            self.background.submit(guarded)

    def flush(self) -> None:
        if self.background is not None:
            self.background.flush()


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
    resume_id: str | None = None,
    background: Any = None,
) -> Iterator[RunLogger]:
    """A RunLogger for the duration of one run; the W&B run is finished on exit, with a
    failing exit code if the body raised (Hydra would otherwise record a crash as exit 0).

    If W&B cannot start (unwritable dir, bad settings, no service), the run goes on with
    metrics.jsonl after one warning.
    """
    if cfg["name"] != "wandb" or cfg["mode"] == "disabled":
        yield RunLogger(run_dir)
        return
    try:
        run = _start_wandb(cfg, run_dir, config, overrides, sweep_name, resume_id)
    except Exception as err:
        log.warning(f"W&B could not start ({err!r}); continuing with metrics.jsonl only")
        yield RunLogger(run_dir)
        return
    logger = RunLogger(run_dir, run, background)
    try:
        yield logger
    except BaseException:
        _finish(logger, exit_code=1)
        raise
    _finish(logger, exit_code=0)


def _finish(logger: RunLogger, exit_code: int) -> None:
    try:
        logger.flush()  # W&B calls still queued go out before the run is closed
    except Exception as err:
        log.warning(f"background work failed ({err!r})")
    if logger.wandb_run is not None:
        try:
            logger.wandb_run.finish(exit_code=exit_code)
        except Exception as err:
            log.warning(f"W&B could not finish the run ({err!r})")


def _start_wandb(
    cfg: Mapping[str, Any],
    run_dir: Path,
    config: dict[str, Any],
    overrides: list[str],
    sweep_name: str | None,
    resume_id: str | None,
) -> Any:
    import wandb

    # reinit="finish_previous" gives every job of an in-process multirun its own run
    # instead of reusing job 0's; resume="allow" continues a resumed run's W&B run.
    run = wandb.init(
        mode=cfg["mode"],
        project=cfg["project"],
        entity=cfg["entity"],
        group=cfg["group"] or sweep_name,
        tags=[t[:64] for t in (*cfg["tags"], *overrides)],  # W&B caps tags at 64 chars
        name=cfg["run_name"] or (",".join(overrides) or None),
        config={**config, "overrides": overrides},
        dir=str(run_dir),
        id=resume_id,
        resume="allow" if resume_id else None,
        reinit="finish_previous",
        settings=wandb.Settings(
            console="off", silent=True, x_disable_stats=True, x_disable_meta=True
        ),
    )
    run.define_metric("epoch")
    for pattern in ("lr/*", "train/*", "val/*", "time/*"):
        run.define_metric(pattern, step_metric="epoch")
    run.define_metric("trainer/global_step")
    for pattern in ("train/step_loss", "lr_step/*"):
        run.define_metric(pattern, step_metric="trainer/global_step")
    return run
