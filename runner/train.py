"""The training loop: build from config, then per epoch train -> validate -> scheduler.step().

Read top to bottom; each phase is marked. The scheduler steps once per epoch,
after the batch loop, exactly as the lecture teaches, and the lr logged for an
epoch is the one its batches used.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch.nn import functional as F

from runner.builders import Run, build_run
from runner.config import validate
from runner.data import batches
from runner.loggers import RunLogger, open_logger

log = logging.getLogger("schedlab")


@dataclass(frozen=True)
class Result:
    status: str  # completed | diverged
    best_val_acc: float
    epochs_run: int


def group_names(optimizer: torch.optim.Optimizer) -> list[str]:
    """A param group's `name` if it has one, else group<i>; keys of the `lr/<group>` metrics."""
    return [g.get("name", f"group{i}") for i, g in enumerate(optimizer.param_groups)]


def autocast(device: torch.device, enabled: bool) -> tuple[Any, torch.amp.GradScaler | None]:
    """bf16 autocast where the device supports it, else fp16 with a GradScaler."""
    if not enabled:
        return nullcontext(), None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.float16), torch.amp.GradScaler("cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16), None


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    amp_ctx: Any,
    scaler: torch.amp.GradScaler | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, backward, optimizer.step() on one batch; returns (loss, logits), no host sync."""
    with amp_ctx:
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return loss.detach(), logits.detach()


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, x_val: torch.Tensor, y_val: torch.Tensor, amp_ctx: Any, batch_size: int
) -> tuple[float, float]:
    """Mean loss and accuracy over the whole validation split (one host sync at the end)."""
    model.eval()
    loss_sum = torch.zeros((), device=x_val.device)
    correct = torch.zeros((), device=x_val.device)
    for x, y in batches(x_val, y_val, batch_size):
        with amp_ctx:
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    n = y_val.shape[0]
    return loss_sum.item() / n, correct.item() / n


def progress_bar(mode: str, total: int, desc: str) -> Any:
    """A tqdm bar on a terminal (or when mode is `bar`), else None: the caller logs lines."""
    if mode == "line" or (mode == "auto" and not sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)


def fit(cfg: DictConfig, run: Run, logger: RunLogger) -> Result:
    model, optimizer, scheduler, data = run.model, run.optimizer, run.scheduler, run.data
    amp_ctx, scaler = autocast(run.device, cfg.trainer.amp)
    shuffle = torch.Generator().manual_seed(cfg.seed)  # data order: its own stream, seeded
    names = group_names(optimizer)
    batch_size = cfg.data.batch_size
    steps_per_epoch = math.ceil(data.y_train.shape[0] / batch_size)
    every = cfg.trainer.log_every_n_steps
    best_acc, step, status = 0.0, 0, "completed"

    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        lrs = {f"lr/{n}": g["lr"] for n, g in zip(names, optimizer.param_groups, strict=True)}

        # -- train: one optimizer.step() per batch; loss/acc summed on device, no per-batch sync
        model.train()
        loss_sum = torch.zeros((), device=run.device)
        correct = torch.zeros((), device=run.device)
        bar = progress_bar(cfg.trainer.progress, steps_per_epoch, f"epoch {epoch}/{cfg.epochs}")
        for x, y in batches(data.x_train, data.y_train, batch_size, shuffle):
            loss, logits = train_step(model, optimizer, x, y, amp_ctx, scaler)
            loss_sum += loss * y.shape[0]
            correct += (logits.argmax(1) == y).sum()
            scheduler.step_batch()  # advances only `interval: step` schedules
            step += 1
            if every and step % every == 0:
                step_lrs = {
                    f"lr_step/{n}": g["lr"]
                    for n, g in zip(names, optimizer.param_groups, strict=True)
                }
                logger.log_step(
                    {"trainer/global_step": step, "train/step_loss": loss.item(), **step_lrs}
                )
            if bar is not None:
                bar.update()
        if bar is not None:
            bar.close()
        n_train = data.y_train.shape[0]
        train_loss, train_acc = loss_sum.item() / n_train, correct.item() / n_train

        # -- validate
        val_loss, val_acc = evaluate(model, data.x_val, data.y_val, amp_ctx, max(batch_size, 1024))

        # -- log
        best_acc = max(best_acc, val_acc)
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

        # -- schedule: once per epoch, after the batch loop (sets the lr of the next epoch);
        # a Plateau schedule reads its monitored metric from the row
        scheduler.step_epoch(row)
        lr_text = " ".join(f"{k}={v:.3g}" for k, v in lrs.items())
        log.info(
            f"epoch {epoch:>3}/{cfg.epochs}  {lr_text}  train/loss={train_loss:.4f} "
            f"train/acc={train_acc:.3f}  val/loss={val_loss:.4f} val/acc={val_acc:.3f}  "
            f"({row['time/epoch_s']:.2f}s)"
        )

        # -- stop a diverged run: nothing after a NaN/inf loss is worth computing
        if not math.isfinite(train_loss) or not math.isfinite(val_loss):
            status = "diverged"
            log.warning(f"loss is not finite at epoch {epoch}: run diverged, stopping")
            return Result(status, best_acc, epoch + 1)
    return Result(status, best_acc, cfg.epochs)


def use_range_test(cfg: DictConfig, run_dir: Path) -> float:
    """optimizer.lr=find: run the LR range test, then train with its suggestion.

    onecycle/cyclic get it as max_lr (their max_lr/base_lr are reset to null, which
    means optimizer.lr and optimizer.lr / 10, Smith's bounds)."""
    from runner.lr_find import find_lr

    lr, _ = find_lr(cfg, run_dir / "lr_find")
    cfg.optimizer.lr = float(lr)
    for key in ("max_lr", "base_lr"):
        if key in cfg.scheduler:
            cfg.scheduler[key] = None
    validate(cfg)  # the schedule's checks against the lr it will really get
    log.info(f"lr range test chose optimizer.lr={lr:.4g} ({cfg.lr_find.suggestion})")
    return float(lr)


def train(
    cfg: DictConfig,
    run_dir: Path,
    overrides: Sequence[str] = (),
    sweep_name: str | None = None,
) -> Result:
    """Validate, build, fit, and leave metrics.jsonl, config.yaml and status.json in run_dir."""
    validate(cfg)  # before anything is built or written
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    found = use_range_test(cfg, run_dir) if cfg.optimizer.lr == "find" else None
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    config = OmegaConf.to_container(cfg, resolve=True)
    if found is not None:
        config["lr_find"]["found_lr"] = found  # W&B config: the lr the range test chose
    t0 = time.perf_counter()
    run = build_run(cfg)
    log.info(
        f"{cfg.model.name} on {cfg.data.name} ({run.device}), {cfg.optimizer.name} "
        f"lr={cfg.optimizer.lr}, scheduler={cfg.scheduler.name}, {cfg.epochs} epochs"
    )
    with open_logger(cfg.logger, run_dir, config, list(overrides), sweep_name) as logger:
        result = fit(cfg, run, logger)
        wall = time.perf_counter() - t0
        logger.summary(
            {"status": result.status, "best/val_acc": result.best_val_acc, "time/total_s": wall}
        )
    status = {**result.__dict__, "wall_time_s": wall}
    (run_dir / "status.json").write_text(json.dumps(status, indent=2) + "\n")
    log.info(f"{result.status}: best val/acc={result.best_val_acc:.4f}; outputs in {run_dir}")
    return result
