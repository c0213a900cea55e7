"""The training loop: build from config, then per epoch train -> validate -> scheduler.step().

Read top to bottom; each phase is marked. The scheduler steps once per epoch,
after the batch loop, exactly as the lecture teaches, and the lr logged for an
epoch is the one its batches used.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch.nn import functional as F

from runner import checkpoint, files
from runner.background import Background
from runner.builders import Run, build_run
from runner.config import validate
from runner.data import augment as augment_batch
from runner.data import batches, steps_per_epoch
from runner.loggers import RunLogger, open_logger
from runner.stopping import StopFlag, stop_on_signals
from runner.targets import label
from schedulers import ConfigError

log = logging.getLogger("schedlab")


@dataclass(frozen=True)
class Result:
    status: str  # completed | diverged | interrupted
    best_val_acc: float
    epochs_done: int
    signum: int | None = None  # the signal that interrupted the run
    chain: bool = False  # pass that signal on to the launcher's handler (see stopping.py)


def describe_epoch(row: dict[str, Any], epochs: int, note: str = "") -> str:
    """The log line of an epoch row; `note` is added after the epoch's time."""
    lr_text = " ".join(f"{k}={v:.3g}" for k, v in row.items() if k.startswith("lr/"))
    return (
        f"epoch {row['epoch']:>3}/{epochs}  {lr_text}  train/loss={row['train/loss']:.4f} "
        f"train/acc={row['train/acc']:.3f}  val/loss={row['val/loss']:.4f} "
        f"val/acc={row['val/acc']:.3f}  ({row['time/epoch_s']:.2f}s{note})"
    )


def diverged(row: dict[str, Any], diverge_loss: float | None) -> bool:
    """A NaN/inf loss, or one above trainer.diverge_loss: nothing after it is worth computing."""
    losses = (row["train/loss"], row["val/loss"])
    return not all(map(math.isfinite, losses)) or (
        diverge_loss is not None and max(losses) > diverge_loss
    )


def outcome(result: Result, wall_s: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """How a run ended: its status.json record and its W&B summary."""
    status = {
        "status": result.status,
        "best_val_acc": result.best_val_acc,
        "epochs_done": result.epochs_done,
        "wall_time_s": wall_s,
    }
    summary = {
        "status": result.status,
        "diverged": result.status == "diverged",
        "best/val_acc": result.best_val_acc,
        "time/total_s": wall_s,
    }
    return status, summary


def group_names(optimizer: torch.optim.Optimizer) -> list[str]:
    """A param group's `name` if it has one, else group<i>; keys of the `lr/<group>` metrics."""
    return [g.get("name", f"group{i}") for i, g in enumerate(optimizer.param_groups)]


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    amp_ctx: Any,
    scaler: torch.amp.GradScaler | None,
    grad_scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, backward, optimizer.step() on one batch; returns (loss, logits), no host sync.
    `grad_scale` multiplies the loss that is backpropagated (DDP: this rank's share)."""
    with amp_ctx:
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
    optimizer.zero_grad(set_to_none=True)
    scaled = loss if grad_scale == 1.0 else loss * grad_scale
    if scaler is None:
        scaled.backward()
        optimizer.step()
    else:
        scaler.scale(scaled).backward()
        scaler.step(optimizer)
        scaler.update()
    return loss.detach(), logits.detach()


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    *,
    amp_ctx: Any,
    batch_size: int,
    device: torch.device,
    prepare: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
) -> tuple[float, float]:
    """Mean loss and accuracy over the whole validation split (one host sync at the end)."""
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    for x, y in batches(x_val, y_val, batch_size, device=device):
        with amp_ctx:
            logits = model(prepare(x))
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    n = y_val.shape[0]
    return loss_sum.item() / n, correct.item() / n


class NoBar:
    """What progress_bar gives when there is no terminal: the caller logs lines instead."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(mode: str, total: int, desc: str) -> Any:
    """A tqdm bar on a terminal (or when mode is `bar`), else a NoBar."""
    if mode == "line" or (mode == "auto" and not sys.stderr.isatty()):
        return NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)


def fit(
    cfg: DictConfig,
    run: Run,
    logger: RunLogger,
    *,
    ckpt_dir: Path | None = None,
    start: dict[str, Any] | None = None,
    stop: StopFlag | None = None,
    background: Background | None = None,
) -> Result:
    """Train from epoch 0, or from the checkpoint `start`; checkpoint into ckpt_dir if given
    (written on `background`'s thread when given)."""
    shuffle = torch.Generator().manual_seed(cfg.seed)  # data order: its own stream, seeded
    progress = checkpoint.restore(start, run, shuffle) if start else checkpoint.Progress()
    stop = stop or StopFlag()
    t_start = time.perf_counter() - progress.elapsed_s
    saver = None
    if ckpt_dir is not None and cfg.trainer.checkpoint:
        saver = checkpoint.Checkpointer(ckpt_dir, cfg.trainer.checkpoint_interval_s, background)
    try:
        return _epochs(cfg, run, logger, progress, shuffle, stop, saver, t_start)
    finally:
        if saver is not None:
            saver.persist()  # the newest completed epoch is on disk however the loop ended


def _epochs(
    cfg: DictConfig,
    run: Run,
    logger: RunLogger,
    progress: checkpoint.Progress,
    shuffle: torch.Generator,
    stop: StopFlag,
    saver: checkpoint.Checkpointer | None,
    t_start: float,
) -> Result:
    model, optimizer, scheduler, data, dist = (
        run.model, run.optimizer, run.scheduler, run.data, run.dist
    )  # fmt: skip
    names = group_names(optimizer)
    batch_size = cfg.data.batch_size
    per_epoch = steps_per_epoch(data.y_train.shape[0], batch_size)
    every = cfg.trainer.log_every_n_steps
    # read once: an OmegaConf lookup costs microseconds, and 10 ms epochs add them up
    epochs, bar_mode, diverge_loss = cfg.epochs, cfg.trainer.progress, cfg.trainer.diverge_loss
    monitor, monitor_mode = cfg.trainer.monitor, cfg.trainer.monitor_mode
    augment = cfg.data.get("augment", False)  # only image sets that have the key
    per_step = scheduler.interval == "step"  # then the lr of every step is logged

    def lrs_now(prefix: str) -> dict[str, float]:
        return {f"{prefix}{n}": g["lr"] for n, g in zip(names, optimizer.param_groups, strict=True)}

    for epoch in range(progress.epoch, epochs):
        t0 = time.perf_counter()
        lrs = lrs_now("lr/")

        # -- train: one optimizer.step() per batch; loss/acc summed on device, no per-batch sync
        model.train()
        loss_sum = torch.zeros((), device=run.device)
        correct = torch.zeros((), device=run.device)
        bar = progress_bar(bar_mode, per_epoch, f"epoch {epoch}/{epochs}")
        for x, y in batches(data.x_train, data.y_train, batch_size, shuffle, run.device):
            if augment:
                x = augment_batch(x, shuffle)
            grad_scale = 1.0
            if dist.active:  # this rank's share of the global batch, weighted by its size
                global_n = y.shape[0]
                x, y = x[dist.rank :: dist.world], y[dist.rank :: dist.world]
                grad_scale = dist.world * y.shape[0] / global_n
            loss, logits = train_step(
                run.forward, optimizer, run.prepare(x), y, run.amp_ctx, run.scaler, grad_scale
            )
            loss_sum += loss * y.shape[0]
            correct += (logits.argmax(1) == y).sum()
            step_row = lrs_now("lr_step/") if per_step else {}  # the lr this step used
            scheduler.step_batch()  # advances only `interval: step` schedules
            progress.step += 1
            if every and progress.step % every == 0:
                step_row = {**lrs_now("lr_step/"), "train/step_loss": loss.item()}  # a host sync
            if step_row:
                logger.log_step({"trainer/global_step": progress.step, "epoch": epoch, **step_row})
            bar.update()
            if stop.signum is not None:
                break
        bar.close()

        # -- interrupted: drop the partial epoch; last.pt (the epoch before) is the resume point
        if stop.signum is not None:
            log.warning(
                f"interrupted in epoch {epoch}; resume continues from epoch {progress.epoch}"
            )
            return Result("interrupted", progress.best_val_acc, progress.epoch, stop.signum)
        dist.all_reduce_sum(loss_sum, correct)  # every rank logs and schedules on the same value
        n_train = data.y_train.shape[0]
        train_loss, train_acc = loss_sum.item() / n_train, correct.item() / n_train

        # -- validate
        val_loss, val_acc = evaluate(
            run.forward, data.x_val, data.y_val, amp_ctx=run.amp_ctx,
            batch_size=max(batch_size, 1024), device=run.device, prepare=run.prepare,
        )  # fmt: skip

        # -- log
        progress.best_val_acc = max(progress.best_val_acc, val_acc)
        row = {
            "epoch": epoch,
            **lrs,
            "train/loss": train_loss,
            "train/acc": train_acc,
            "val/loss": val_loss,
            "val/acc": val_acc,
            "time/epoch_s": time.perf_counter() - t0,
        }
        logger.log_epoch(row)
        log.info(describe_epoch(row, epochs))

        # -- stop a diverged run: nothing after a NaN/inf (or too large) loss is worth computing
        if diverged(row, diverge_loss):
            log.warning(f"loss {train_loss:.4g} at epoch {epoch}: run diverged, stopping")
            return Result("diverged", progress.best_val_acc, epoch + 1)

        # -- schedule: once per epoch, after the batch loop (sets the lr of the next epoch);
        # a Plateau schedule reads its monitored metric from the row
        scheduler.step_epoch(row)

        # -- checkpoint: the state the next epoch starts from
        is_best = progress.end_epoch(epoch, row[monitor], monitor_mode)
        if saver is not None:
            progress.elapsed_s = time.perf_counter() - t_start
            saver.epoch_end(checkpoint.snapshot(run, progress, shuffle, logger.run_id), is_best)
    return Result("completed", progress.best_val_acc, epochs)


def use_range_test(cfg: DictConfig, run_dir: Path) -> float:
    """optimizer.lr=find: run the LR range test, then train with its suggestion.

    onecycle/cyclic get it as max_lr (their max_lr/base_lr are reset to null, which
    means optimizer.lr and optimizer.lr / 10, Smith's bounds)."""
    from runner.lr_find import find_lr

    lr, _ = find_lr(cfg, run_dir / "lr_find")
    cfg.optimizer.lr = float(lr)
    for key in ("max_lr", "base_lr"):
        if key in cfg.scheduler and cfg.scheduler.get("name") in ("onecycle", "cyclic"):
            cfg.scheduler[key] = None  # a `_target_` class keeps the arguments it was given
    validate(cfg)  # the schedule's checks against the lr it will really get
    log.info(f"lr range test chose optimizer.lr={lr:.4g} ({cfg.lr_find.suggestion})")
    return float(lr)


def load_resume(cfg: DictConfig, run_dir: Path) -> tuple[DictConfig, Path, dict[str, Any]]:
    """`resume=<run dir>` (or `resume=true` in the Hydra run dir): its saved config, the dir,
    and its last checkpoint."""
    target = run_dir if cfg.resume is True else Path(str(cfg.resume))
    if not (target / "config.yaml").is_file():
        raise ConfigError(
            "resume", str(cfg.resume), f"no run to resume: {target}/config.yaml missing"
        )
    checkpoint.remove_orphans(target)  # temp files of writes a kill -9 cut short
    try:
        saved = OmegaConf.load(target / "config.yaml")
    except Exception as err:  # not YAML at all
        why = f"{type(err).__name__}: {str(err).strip()[:120]}"
        raise ConfigError(
            "resume", str(cfg.resume), f"{target}/config.yaml is damaged ({why})"
        ) from None
    if not isinstance(saved, DictConfig):
        raise ConfigError("resume", str(cfg.resume), f"{target}/config.yaml is not a run config")
    OmegaConf.set_struct(saved, True)
    if not (target / checkpoint.LAST).exists() and not (target / checkpoint.BEST).exists():
        log.info(f"{target} has no checkpoint yet (stopped in its first epoch): starting over")
        return saved, target, None
    state = checkpoint.load(target / checkpoint.LAST)
    return saved, target, state


def same_run_on_disk(cfg: DictConfig, run_dir: Path) -> bool:
    """run_dir holds a checkpoint of this very config: a run to continue, not to redo."""
    saved = run_dir / "config.yaml"
    return (
        (run_dir / checkpoint.LAST).exists()
        and saved.exists()
        and (saved.read_text() == OmegaConf.to_yaml(cfg, resolve=True))
    )


def _keep_rows_before(metrics: Path, epoch: int) -> None:
    """Rows logged after the checkpoint was written are redone by the resumed run; a line
    torn by a kill or a full disk is dropped (read_jsonl warns about it)."""
    if metrics.exists():
        kept = [r for r in files.read_jsonl(metrics) if isinstance(r.get("epoch"), int)]
        lines = [json.dumps(r) + "\n" for r in kept if r["epoch"] < epoch]
        files.write_text_atomic(metrics, "".join(lines))


def train(
    cfg: DictConfig,
    run_dir: Path,
    overrides: Sequence[str] = (),
    sweep_name: str | None = None,
) -> Result:
    """Validate, build, fit, and leave metrics.jsonl, config.yaml, checkpoints and
    status.json in run_dir (under torchrun: rank 0 writes, every rank trains)."""
    from runner.distributed import setup, teardown

    dist = setup(cfg.trainer.strategy)
    if not dist.is_main:
        logging.getLogger("schedlab").setLevel(logging.WARNING)
    try:
        return _train(cfg, Path(run_dir), overrides, sweep_name, dist)
    finally:
        teardown(dist)


def _train(
    cfg: DictConfig, run_dir: Path, overrides: Sequence[str], sweep_name: str | None, dist: Any
) -> Result:
    if not cfg.resume and same_run_on_disk(cfg, run_dir):
        # a requeued job (Slurm time-out/preemption) or the same command run again into the
        # same dir: continue instead of starting over
        log.info(f"{run_dir} holds a checkpoint of this same config: resuming it")
        cfg.resume = True
    state, resuming = None, bool(cfg.resume)
    if resuming:
        cfg, run_dir, state = load_resume(cfg, run_dir)
    validate(cfg)  # before anything is built or written
    run_dir.mkdir(parents=True, exist_ok=True)
    found = use_range_test(cfg, run_dir) if cfg.optimizer.lr == "find" else None
    if not resuming:
        if dist.is_main:
            files.write_text_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    else:
        start_epoch = state["progress"]["epoch"] if state else 0
        if dist.is_main:
            _keep_rows_before(run_dir / "metrics.jsonl", start_epoch)
        log.info(f"resuming {run_dir} at epoch {start_epoch}")
    config = OmegaConf.to_container(cfg, resolve=True)
    if found is not None:
        config["lr_find"]["found_lr"] = found  # W&B config: the lr the range test chose
    run = build_run(cfg, dist=dist)
    log.info(
        f"{label(cfg.model)} on {cfg.data.name} ({run.device}), {label(cfg.optimizer)} "
        f"lr={cfg.optimizer.lr}, scheduler={label(cfg.scheduler)}, {cfg.epochs} epochs"
    )
    wandb_id = state["wandb_id"] if state else None
    loggers = cfg.logger if dist.is_main else {}  # only rank 0 talks to W&B / TensorBoard
    with (
        Background() as background,
        open_logger(
            loggers, run_dir, config, list(overrides), sweep_name, wandb_id, background
        ) as logger,
        stop_on_signals() as stop,
    ):
        logger.write = dist.is_main
        t0 = time.perf_counter()
        result = fit(
            cfg, run, logger, ckpt_dir=run_dir if dist.is_main else None, start=state,
            stop=stop, background=background,
        )  # fmt: skip
        background.flush()  # checkpoints on disk before status.json says how the run ended
        wall = time.perf_counter() - t0 + (state["progress"]["elapsed_s"] if state else 0.0)
        status, summary = outcome(result, wall)
        logger.summary(summary)
    if result.status == "interrupted":  # stop.chain is set when the handlers are restored
        result = dataclasses.replace(result, chain=stop.chain)
    if dist.is_main:
        files.write_json_atomic(run_dir / "status.json", status)
    log.info(f"{result.status}: best val/acc={result.best_val_acc:.4f}; outputs in {run_dir}")
    return result
