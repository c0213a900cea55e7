"""Where metrics go: always `metrics.jsonl` in the run dir, plus W&B and/or TensorBoard.

Every backend receives the same rows under the same keys: one row per epoch
(`epoch`, `lr/<group>`, `train/*`, `val/*`, `time/*`) and step rows
(`"kind": "step"`, `trainer/global_step`, `lr_step/<group>` every step of a
per-batch schedule, `train/step_loss` every `trainer.log_every_n_steps`). A backend
that fails costs one warning, never the training: metrics.jsonl is the record that
must not be lost.

metrics.jsonl gets each row at once; the backends get rows in batches, at most one
batch every SEND_EVERY_S seconds (and whatever is left at the end of the run). Every
call into W&B wakes its client's threads, which then compete with the training thread
for the GIL: spread over a run of 10 ms epochs, 14 calls cost the loop 7-19 %,
sent together after a second they cost ~2 % (measured, 2-core CPU). Epochs longer
than that are sent as they end.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from runner.io.files import LineAppender

log = logging.getLogger("schedlab")

SEND_EVERY_S = 1.0  # rows reach W&B/TensorBoard at most this long after they are logged


_NOT_SCALARS = ("kind", "epoch", "trainer/global_step")  # axes and tags, not TensorBoard scalars
# W&B's x axis for each key of a row (its define_metric globs; `*` matches `/` too): an epoch
# row's keys by `epoch`, a step row's by `trainer/global_step` (an exact name wins over a
# glob). A key none of them matches is charted against W&B's own count of log calls, which
# counts step rows too: EMA's val_avg/acc beside val/acc, or momentum beside lr, would sit
# at other x values than the epochs they belong to.
EPOCH_KEYS = ("lr/*", "momentum/*", "train/*", "val/*", "val_avg/*", "time/*")
STEP_KEYS = ("train/step_loss", "lr_step/*", "momentum_step/*")


class RunLogger:
    def __init__(
        self,
        run_dir: Path,
        wandb_run: Any = None,
        tb_writer: Any = None,
        background: Any = None,
        write: bool = True,
        send_every_s: float = SEND_EVERY_S,
    ) -> None:
        self.metrics_path = run_dir / "metrics.jsonl"
        self._metrics = LineAppender(self.metrics_path)
        self.write = write  # False on DDP ranks other than 0: they log nothing
        self.wandb_run, self.tb_writer = wandb_run, tb_writer
        self.run_id: str | None = getattr(wandb_run, "id", None)
        self.background = background  # runs backend calls off the training thread when given
        self._step_rows: list[str] = []  # written with the epoch row that ends their epoch
        self._outbox: list[tuple[dict[str, Any], int]] = []  # (row, step) not yet sent
        self.send_every_s = send_every_s
        self._sent_at = time.monotonic()

    def log_epoch(self, row: Mapping[str, Any]) -> None:
        row = dict(row)
        if self.write:  # the epoch's rows in one write; NaN/inf as Python's json writes them
            self._metrics.append("".join(self._step_rows) + json.dumps(row))
        self._step_rows.clear()
        self._to_backends(row, step=row["epoch"])

    def log_step(self, row: Mapping[str, Any]) -> None:
        row = {"kind": "step", **row}
        self._step_rows.append(json.dumps(row) + "\n")
        self._to_backends(row, step=row["trainer/global_step"])

    def resend(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Rows already in metrics.jsonl, to the backends only: a fused member's rows reach
        W&B/TensorBoard after its group trains (runner/sweep/fused.py `replay`), or, when the
        group was stopped first, when the member resumes on its own."""
        write, self.write = self.write, False
        try:
            for row in rows:
                if row.get("kind") == "step":
                    self.log_step({k: v for k, v in row.items() if k != "kind"})
                else:
                    self.log_epoch(row)
        finally:
            self.write = write
            self._step_rows.clear()  # never written again with the next epoch's row

    def summary(self, values: Mapping[str, Any]) -> None:
        self._send()  # the rows first, as they were logged first
        self._call("wandb_run", lambda run: run.summary.update(dict(values)))

    def _to_backends(self, row: dict[str, Any], step: int) -> None:
        if self.wandb_run is None and self.tb_writer is None:
            return
        self._outbox.append((row, step))
        if time.monotonic() - self._sent_at >= self.send_every_s:
            self._send()

    def _send(self) -> None:
        """Everything logged since the last send, in order, as one job per backend."""
        rows, self._outbox = self._outbox, []
        self._sent_at = time.monotonic()
        if not rows:
            return

        def to_wandb(run: Any) -> None:
            for row, _ in rows:
                run.log({k: v for k, v in row.items() if k != "kind"})

        def to_tb(writer: Any) -> None:
            for row, step in rows:
                for key, value in row.items():
                    if key not in _NOT_SCALARS and isinstance(value, (int, float)):
                        writer.add_scalar(key, value, global_step=step)

        self._call("wandb_run", to_wandb)
        self._call("tb_writer", to_tb)

    def _call(self, attr: str, call: Callable[[Any], Any]) -> None:
        if getattr(self, attr) is None:
            return

        def guarded() -> None:
            backend = getattr(self, attr)
            if backend is None:
                return
            try:
                call(backend)
            except Exception as err:
                log.warning(f"{attr.split('_')[0]} logging failed ({err!r}); continuing without it")
                setattr(self, attr, None)

        if self.background is None:
            guarded()
        else:
            self.background.submit(guarded)

    def close_metrics(self) -> None:
        """metrics.jsonl is kept open between epochs; closed at the end of the run."""
        self._metrics.close()

    def flush(self) -> None:
        """Send what is waiting and wait until the backends have it."""
        self._send()
        if self.background is not None:
            self.background.flush()


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
    """A RunLogger for one run. The W&B run is finished on exit, with a failing exit code
    if the body raised (Hydra would otherwise record a crash as exit 0). A backend that
    cannot start (unwritable dir, no service) costs one warning."""
    wandb_run = tb_writer = None
    if "wandb" in cfg and wandb_wanted(cfg["wandb"]["mode"]):
        wandb_run = _start(
            "W&B",
            lambda: _start_wandb(cfg["wandb"], run_dir, config, overrides, sweep_name, resume_id),
        )
    if "tensorboard" in cfg:
        tb_writer = _start("TensorBoard", lambda: _start_tensorboard(cfg["tensorboard"], run_dir))
    logger = RunLogger(run_dir, wandb_run, tb_writer, background)
    try:
        yield logger
    except BaseException:
        _finish(logger, exit_code=1)
        raise
    _finish(logger, exit_code=0)


def wandb_wanted(mode: str) -> bool:
    """Whether a run starts W&B: logger.wandb.mode is not `disabled`, and neither is the
    environment's WANDB_MODE, W&B's own off switch for every wandb.init. The run passes its
    mode to wandb.init explicitly, which would otherwise override the variable, so a user
    who turned W&B off in their shell still got offline runs written."""
    if mode == "disabled":
        return False
    if os.environ.get("WANDB_MODE", "").strip().lower() == "disabled":
        log.info("W&B off: WANDB_MODE=disabled in the environment (metrics.jsonl is written)")
        return False
    return True


def _start(what: str, start: Callable[[], Any]) -> Any:
    try:
        return start()
    except Exception as err:  # one line: W&B's messages span several
        why = next((line for line in str(err).splitlines() if line.strip()), "")
        cause = f"{type(err).__name__}: {why.strip()}" if why else type(err).__name__
        log.warning(f"{what} could not start ({cause}); continuing with metrics.jsonl")
        return None


def _finish(logger: RunLogger, exit_code: int) -> None:
    logger.close_metrics()
    try:
        logger.flush()  # backend calls still queued go out before the backends close
    except Exception as err:
        log.warning(f"background work failed ({err!r})")
    for attr, close in (
        ("wandb_run", lambda run: run.finish(exit_code=exit_code)),
        ("tb_writer", lambda writer: writer.close()),
    ):
        backend = getattr(logger, attr)
        if backend is not None:
            try:
                close(backend)
            except Exception as err:
                log.warning(f"{attr.split('_')[0]} could not close ({err!r})")


def _start_tensorboard(cfg: Mapping[str, Any], run_dir: Path) -> Any:
    from torch.utils.tensorboard import SummaryWriter  # seconds: only when logger=tensorboard

    return SummaryWriter(log_dir=str(run_dir / cfg["dir"]), flush_secs=cfg["flush_secs"])


def run_label(run_dir: Path, sweep_name: str | None) -> str:
    """A run's name in W&B, the one TensorBoard shows (it names runs by their dirs): a sweep's
    job by its dir, its overrides (scheduler=cosine,seed=1; the W&B group is the sweep); a
    single run by <name>/<date>_<time> (mlp-cosine/2026-12-06_17-34-01-123456)."""
    return run_dir.name if sweep_name is not None else "/".join(run_dir.parts[-2:])


def _start_wandb(
    cfg: Mapping[str, Any],
    run_dir: Path,
    config: dict[str, Any],
    overrides: list[str],
    sweep_name: str | None,
    resume_id: str | None,
) -> Any:
    import wandb  # seconds: only when logger=wandb

    # reinit="finish_previous" gives every job of an in-process multirun its own run
    # instead of reusing job 0's; resume="allow" continues a resumed run's W&B run.
    # Online, an unreachable server would block wandb.init for its default 90 s: bounded
    # by init_timeout_s, after which it raises and _start warns once.
    timeout = {"init_timeout": float(cfg["init_timeout_s"])} if cfg["mode"] == "online" else {}
    run = wandb.init(
        mode=cfg["mode"],
        project=cfg["project"],
        entity=cfg["entity"],
        group=cfg["group"] or sweep_name,
        tags=[t[:64] for t in (*cfg["tags"], *overrides)],  # W&B caps tags at 64 chars
        name=cfg["run_name"] or run_label(run_dir, sweep_name),
        config={**config, "overrides": overrides},
        dir=str(run_dir),
        id=resume_id,
        resume="allow" if resume_id else None,
        reinit="finish_previous",
        settings=wandb.Settings(
            console="off", silent=True, x_disable_stats=True, x_disable_meta=True, **timeout
        ),
    )
    run.define_metric("epoch")
    for pattern in EPOCH_KEYS:
        run.define_metric(pattern, step_metric="epoch")
    run.define_metric("trainer/global_step")
    for pattern in STEP_KEYS:
        run.define_metric(pattern, step_metric="trainer/global_step")
    return run
