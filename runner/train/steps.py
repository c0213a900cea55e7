"""One training step, a validation pass and the progress bar: the pieces every loop shares
(the single run, the fused group, the LR range test)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TypeVar

import torch
from torch.nn import functional as F
from tqdm import tqdm

T = TypeVar("T")


def groups(batches: Iterable[T], size: int) -> Iterator[list[T]]:
    """The micro-batches of each optimizer step (trainer.accumulate = `size`), in order. An
    epoch whose batches do not divide by `size` ends with a shorter group, which is stepped
    too: an epoch has ceil(batches / size) optimizer steps (runner/data/sets.py
    `steps_per_epoch`) and a checkpoint never holds half-accumulated gradients."""
    group: list[T] = []
    for batch in batches:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def loss_of(logits: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """The mean cross-entropy of class scores [N, C] against labels [N], or of a language
    model's next-token scores [N, T, V] against its targets [N, T] (flattened to N*T
    predictions: the mean over tokens, as nanoGPT's)."""
    if y.dim() > 1:
        logits, y = logits.flatten(0, -2), y.flatten()
    return F.cross_entropy(logits, y, label_smoothing=label_smoothing)


def top_is_target(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Whether each next-token prediction of a language model's scores [..., vocab] is its
    target [...]: the target's score is the row's highest (a tie at the top counts as right;
    float scores seldom tie). Not argmax: on CPU torch's argmax over a 256-wide row costs more
    than the head's matmul that made it (2.9 ms against 1.7 ms for 16 x 64 tokens on one
    thread; the max and a gather 0.23 ms), 3-4 % of a small GPT's training step
    (benchmarks/bench_lm.py)."""
    return logits.gather(-1, y.unsqueeze(-1)).squeeze(-1) >= logits.amax(-1)


def hits(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Correct predictions counted in samples: a classifier's right labels; a language
    model's windows each counted as the fraction of its tokens predicted right, so that
    divided by the samples it is the next-token accuracy (its windows are equally long)."""
    if y.dim() > 1:
        return top_is_target(logits, y).float().mean(-1).sum()
    return (logits.argmax(1) == y).sum()


def backward(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    amp_ctx: Any,
    scaler: torch.amp.GradScaler | None,
    weight: float = 1.0,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward of one (micro-)batch, its gradients added to those already
    there; returns (loss, logits), no host sync. `weight` multiplies the loss that is
    backpropagated: the batch's share of the optimizer step's samples (with trainer.accumulate
    N and equal micro-batches 1/N, as Lightning scales it; a shorter last batch weighs less,
    so N micro-batches give the gradient of one batch N times as large), and under DDP this
    rank's share. `label_smoothing` applies to this, the training, loss (and so to
    train/loss, as timm and HF Trainer report it); validation's loss is plain."""
    with amp_ctx:
        logits = model(x)
        loss = loss_of(logits.float(), y, label_smoothing)
    scaled = loss if weight == 1.0 else loss * weight
    (scaled if scaler is None else scaler.scale(scaled)).backward()
    return loss.detach(), logits.detach()


def clip_and_step(
    params: Sequence[torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    clip_norm: float | None = None,
    clip_value: float | None = None,
) -> torch.Tensor | None:
    """optimizer.step() on the accumulated gradients, clipped first when trainer.grad_clip_norm
    (the global L2 norm over `params`) or trainer.grad_clip_value (each element) is set.
    Returns the gradients' global norm before clipping (a device tensor, for train/grad_norm)
    when clipping is on, else None: measuring it costs a pass over every gradient."""
    norm = None
    if clip_norm is not None or clip_value is not None:
        if scaler is not None:  # clip the true gradients, not the loss-scaled ones
            scaler.unscale_(optimizer)
        if clip_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(params, clip_norm, foreach=True)
        else:
            grads = [p.grad for p in params if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads, foreach=True)
            torch.nn.utils.clip_grad_value_(params, clip_value, foreach=True)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()
    return norm


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    micro: Sequence[tuple[torch.Tensor, torch.Tensor, float]],
    amp_ctx: Any,
    scaler: torch.amp.GradScaler | None,
    *,
    params: Sequence[torch.Tensor] = (),
    clip_norm: float | None = None,
    clip_value: float | None = None,
    label_smoothing: float = 0.0,
    no_sync: Callable[[], AbstractContextManager[Any]] | None = None,
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor | None]:
    """One optimizer step: zero_grad, forward and backward of each micro-batch (x, y, weight)
    (`backward`), then the clipped step (`clip_and_step` over `params`). Returns each
    micro-batch's (loss, logits) and the gradient norm before clipping (None when clipping
    is off); no host sync. `no_sync` (DDP's): the gradients of every micro-batch but the
    last stay on this rank, and one all-reduce of their sum happens in the last backward."""
    optimizer.zero_grad(set_to_none=True)
    out = []
    last = len(micro) - 1
    for j, (x, y, weight) in enumerate(micro):
        if no_sync is not None and j < last:
            with no_sync():
                out.append(backward(model, x, y, amp_ctx, scaler, weight, label_smoothing))
        else:  # no context to enter: a step's Python is a share of a small model's step
            out.append(backward(model, x, y, amp_ctx, scaler, weight, label_smoothing))
    return out, clip_and_step(params, optimizer, scaler, clip_norm, clip_value)


@torch.no_grad()
def evaluate(
    forward: Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[list[float], list[float]]:
    """Each model's mean loss and accuracy over `batches` (the whole validation split, in
    memory or streamed): the one evaluation loop of a single run, a fused group and the LR
    range test. `forward(x)` gives logits [N, classes] for one model, or [K, N, classes]
    for K stacked ones (runner/sweep/stacked.py: the same batch for every member); eval
    mode and autocast are the caller's. A language model's targets are [N, T] and its
    logits [N, T, vocab] ([K, N, T, vocab] stacked): every token is one prediction, so
    the means are per token. The sums stay on the device: one host sync, at the end,
    divided on the host in double precision."""
    loss_sum = correct = None
    n = 0
    for x, y in batches:
        logits = forward(x).float()
        if logits.dim() == y.dim() + 1:  # one model
            loss = F.cross_entropy(logits.flatten(0, -2), y.flatten(), reduction="sum")
            right = (top_is_target(logits, y) if y.dim() > 1 else logits.argmax(-1) == y).sum()
        else:  # each member's sum over the same batch
            k = logits.shape[0]
            flat = y.flatten().repeat(k)
            loss = F.cross_entropy(logits.flatten(0, -2), flat, reduction="none")
            loss, right = loss.view(k, -1).sum(1), (logits.argmax(-1) == y).flatten(1).sum(1)
        loss_sum = loss if loss_sum is None else loss_sum.add_(loss)
        correct = right if correct is None else correct.add_(right)
        n += y.numel()
    assert loss_sum is not None and correct is not None, "an empty validation split"
    return [v / n for v in loss_sum.view(-1).tolist()], [v / n for v in correct.view(-1).tolist()]


# -- schedule-free optimizers (Defazio et al. 2024, the `schedulefree` package) ---------------
def schedule_free(optimizer: Any) -> bool:
    """An optimizer that keeps two points, one to take gradients at (train mode) and one to
    evaluate (eval mode), and switches the model's weights between them with its own
    `train()`/`eval()`: schedulefree's SGDScheduleFree, AdamWScheduleFree, or any class
    that has both methods (known by them, not by name: a `_target_` one works alike)."""
    return all(callable(getattr(optimizer, name, None)) for name in ("train", "eval"))


def train_weights(optimizer: Any) -> None:
    """The weights gradients are taken at, before training steps (a no-op for an ordinary
    optimizer, and for one in train mode already): schedulefree's step() refuses to run
    in eval mode, and a resumed checkpoint holds the eval weights."""
    if schedule_free(optimizer):
        optimizer.train()


def _in_train_mode(optimizer: Any) -> bool:
    """schedulefree records its mode in every param group (`train_mode`); an optimizer that
    does not say is taken to be training."""
    return all(g.get("train_mode", True) for g in optimizer.param_groups)


@contextmanager
def eval_weights(*optimizers: Any) -> Iterator[None]:
    """The weights a schedule-free optimizer evaluates at (its `x`, the average, not the
    `y` gradients are taken at) inside: every validation, the LR range test's evaluations
    and every checkpoint snapshot run in it, so that a checkpoint always holds the eval
    weights and its optimizer state says eval mode (schedulefree's rule). The mode it
    found is restored after: nested uses (a snapshot inside the epoch end's window) switch
    nothing, and a fresh optimizer (eval mode until its first train()) stays as it was.
    Ordinary optimizers: nothing happens."""
    switched = [o for o in optimizers if schedule_free(o) and _in_train_mode(o)]
    for optimizer in switched:
        optimizer.eval()
    try:
        yield
    finally:
        for optimizer in switched:
            optimizer.train()


def has_batch_norm(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def recalibrate_bn(
    model: torch.nn.Module, batches: Iterable[torch.Tensor], forward: Callable[[Any], Any]
) -> int:
    """BatchNorm running statistics recomputed for the weights the model holds now (a
    schedule-free optimizer's eval weights: the running stats that training collected
    belong to its other point), as torch.optim.swa_utils.update_bn does: reset, then the
    plain mean over `batches` (momentum None), BatchNorm layers alone in train mode.
    Everything else stays in eval mode, so dropout draws nothing from the global RNG and
    the stats are those of the network as it is evaluated. Returns the batches used."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    was_training = model.training
    momenta = {m: m.momentum for m in norms}
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches
        m.train()
    n = 0
    try:
        for x in batches:
            forward(x)
            n += 1
    finally:
        for m in norms:
            m.momentum = momenta[m]
        model.train(was_training)
    return n


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
