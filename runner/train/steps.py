"""One training step, a validation pass and the progress bar: the pieces every loop shares
(the single run, the fused group, the LR range test)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.nn import functional as F
from tqdm import tqdm


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
    forward: Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[list[float], list[float]]:
    """Each model's mean loss and accuracy over `batches` (the whole validation split, in
    memory or streamed): the one evaluation loop of a single run, a fused group and the LR
    range test. `forward(x)` gives logits [N, classes] for one model, or [K, N, classes]
    for K stacked ones (runner/sweep/stacked.py: the same batch for every member); eval
    mode and autocast are the caller's. The sums stay on the device: one host sync, at the
    end, divided on the host in double precision."""
    loss_sum = correct = None
    n = 0
    for x, y in batches:
        logits = forward(x).float()
        if logits.dim() == 2:
            loss = F.cross_entropy(logits, y, reduction="sum")
            hits = (logits.argmax(1) == y).sum()
        else:  # each member's sum over the same batch
            k = logits.shape[0]
            loss = F.cross_entropy(logits.flatten(0, 1), y.repeat(k), reduction="none")
            loss, hits = loss.view(k, -1).sum(1), (logits.argmax(-1) == y).sum(1)
        loss_sum = loss if loss_sum is None else loss_sum.add_(loss)
        correct = hits if correct is None else correct.add_(hits)
        n += y.shape[0]
    assert loss_sum is not None and correct is not None, "an empty validation split"
    return [v / n for v in loss_sum.view(-1).tolist()], [v / n for v in correct.view(-1).tolist()]


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

    scale = {"unit": "sample", "unit_scale": batch_size} if batch_size else {}
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr, **scale)
