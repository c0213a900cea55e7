"""What a language model's epoch rows add: bits per byte, the gap to the data's optimal
loss, tokens per second and, on CUDA, the model FLOPs utilisation (MFU).

A run is a language model's when its data gives token windows (x [T] integer ids, targets
[T]: data=text, or a data=dataset of such windows); its loss is then per token
(runner/train/steps.py `loss_of`) and its rows carry, beside the usual keys:
- `val/bpb`: val/loss in bits (/ ln 2), bits per byte for byte tokens (data=text);
- `val/gap`: val/loss minus the data's `source_loss` (the bundled corpus's exact optimal
  loss: no schedule gets below it), when the data has one;
- `train/tokens_per_s`: tokens trained per second of the epoch's training steps
  (validation excluded), all processes together;
- `train/mfu`: on CUDA, FLOPs per token x tokens/s over the card's bf16 dense peak, as
  nanoGPT's estimate_mfu (a card not in `PEAK_BF16` gets none).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from runner.train import gpt
from runner.train.model_check import sample_batch

VAL_TOKENS = 4096  # a language model's validation batch, in tokens (val_batch_size)

# dense bf16 tensor-core peaks in FLOP/s (vendors' datasheets, without sparsity), by a
# substring of torch.cuda.get_device_name(); the first match wins (H100 PCIe before H100)
PEAK_BF16 = (
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM
    ("A100", 312e12),
    ("L40S", 362e12),
    ("A10G", 70e12),
    ("L4", 121e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
)


@dataclass(frozen=True)
class TokenStats:
    """A language-model run's constants for its rows (`row`)."""

    tokens_per_epoch: int  # trained per epoch, every process's together
    source_loss: float | None  # the data's optimal loss: val/gap; None for a user's text
    flops_per_token: float  # training FLOPs per token
    peak_flops: float | None  # every process's device together; None: no MFU (CPU, unknown)


def token_data(data: Any) -> bool:
    """The data gives token windows: integer ids of shape [T] a sample. Data that says so
    itself (a `tokens` attribute) is taken at its word; otherwise its first sample is
    looked at (images and signals are float, and of rank 3 and 2)."""
    said = getattr(data, "tokens", None)
    if said is not None:
        return bool(said)
    if len(data.image_shape) != 1:
        return False
    return not sample_batch(data, 1).is_floating_point()


def val_batch_size(data: Any, batch_size: int) -> int:
    """Windows (samples) per validation batch: without gradients larger batches fit than
    training's `batch_size`, 1024 samples; a language model's at most VAL_TOKENS tokens
    (at least the training batch, which is what nanoGPT validates with): on CPU one batch of
    all 16k validation tokens cost 35 % more CPU time than batches of 4096 for a 2-layer
    GPT, 20 % for model=gpt's size (its activations outgrow the caches; bench_lm.py)."""
    if token_data(data):
        return max(batch_size, VAL_TOKENS // data.image_shape[0])
    return max(batch_size, 1024)


def peak_flops(device: torch.device) -> float | None:
    """The card's dense bf16 peak (PEAK_BF16), None off CUDA or for a card not listed."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for part, peak in PEAK_BF16 if part in name), None)


def token_stats(
    data: Any, model: torch.nn.Module, device: torch.device, world: int = 1
) -> TokenStats | None:
    """The run's TokenStats, or None when its data is not token windows. An epoch trains
    every training window once; FLOPs per token are gpt's own count (with attention), for
    another model 6 N (N its parameters, the issue's and Kaplan et al.'s approximation)."""
    if not token_data(data):
        return None
    block = data.image_shape[0]
    if isinstance(model, gpt.GPT):
        flops = gpt.flops_per_token(model, block)
    else:
        flops = 6.0 * sum(p.numel() for p in model.parameters())
    peak = peak_flops(device)
    return TokenStats(
        tokens_per_epoch=data.n_train * block,
        source_loss=getattr(data, "source_loss", None),
        flops_per_token=flops,
        peak_flops=None if peak is None else peak * world,
    )


def row(stats: TokenStats, val_loss: float, train_s: float) -> dict[str, float]:
    """The epoch row's language-model keys, from its val/loss and its training seconds."""
    out = {"val/bpb": val_loss / math.log(2)}
    if stats.source_loss is not None:
        out["val/gap"] = val_loss - stats.source_loss
    if train_s > 0:
        rate = stats.tokens_per_epoch / train_s
        out["train/tokens_per_s"] = rate
        if stats.peak_flops is not None:
            out["train/mfu"] = stats.flops_per_token * rate / stats.peak_flops
    return out
