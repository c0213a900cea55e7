"""One training step, a validation pass and the progress bar: the pieces every loop shares
(the single run, the fused group, the LR range test)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
from torch.nn import functional as F

from runner.core.data import batches


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


def progress_bar(mode: str, total: int, desc: str, batch_size: int | None = None) -> Any:
    """A tqdm bar on a terminal (or when mode is `bar`), else a NoBar. With `batch_size`,
    it counts batches but shows samples and samples/s."""
    if mode == "line" or (mode == "auto" and not sys.stderr.isatty()):
        return NoBar()
    from tqdm import tqdm

    scale = {"unit": "sample", "unit_scale": batch_size} if batch_size else {}
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr, **scale)
