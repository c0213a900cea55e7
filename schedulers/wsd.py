"""Warmup-stable-decay (WSD), the one schedule here that torch does not ship.

The warmup is the generic `scheduler.warmup_epochs` (or `warmup_steps`) chained in front (see
`schedule.py`); this class is the stable plateau followed by a decay over the
last `decay_fraction` of its length. Written as a closed form of `last_epoch`
(the nanoGPT way), so it resumes from the step count alone.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


def decay_length(total: int, decay_fraction: float) -> int:
    """Steps of the decay phase, at least 1; its first is still at the base lr, so 1 step
    decays nothing (schedulers/phases.py refuses that)."""
    return max(1, round(total * decay_fraction))


def wsd_factor(t: int, total: int, decay_fraction: float, shape: str, final_scale: float) -> float:
    """Multiplier of the base lr at step t of `total`: 1 while stable, then down to final_scale."""
    decay_len = decay_length(total, decay_fraction)
    start = total - decay_len
    if t < start:
        return 1.0
    p = min(1.0, (t - start) / decay_len)
    if shape == "linear":
        drop = p
    elif shape == "cosine":
        drop = 0.5 * (1 - math.cos(math.pi * p))
    else:  # sqrt: the "1 - sqrt" cooldown of Hägele et al. (2024)
        drop = math.sqrt(p)
    return 1.0 - (1.0 - final_scale) * drop


class WarmupStableDecayLR(LRScheduler):
    def __init__(
        self,
        optimizer: Optimizer,
        total: int,
        decay_fraction: float = 0.2,
        decay_shape: str = "linear",
        final_lr_scale: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        self.total, self.decay_fraction = total, decay_fraction
        self.decay_shape, self.final_lr_scale = decay_shape, final_lr_scale
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        f = wsd_factor(
            self.last_epoch, self.total, self.decay_fraction, self.decay_shape, self.final_lr_scale
        )
        return [base * f for base in self.base_lrs]
