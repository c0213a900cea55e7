"""Datasets of a user's own, for tests/test_stream.py: imported by `_target_` as a user's
package would be."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder


class Blobs(Dataset):
    """`size` samples [1, 4, 4] of noise around their class's level (3 classes), drawn from
    a generator of their own seeded by `offset` (train and val differ by it)."""

    classes = ("low", "mid", "high")

    def __init__(self, size: int, offset: int = 0, noise: float = 0.5) -> None:
        g = torch.Generator().manual_seed(offset)
        self.y = torch.arange(size) % 3
        self.x = self.y.float()[:, None, None, None] + noise * torch.randn(
            size, 1, 4, 4, generator=g
        )

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i], int(self.y[i])


class NoClasses(Blobs):
    """Blobs that do not say how many classes they hold."""

    classes = None


class SlowFolder(ImageFolder):
    """An ImageFolder that takes `delay_s` per sample, like a slow disk: slow enough for a
    test to kill its run mid-way."""

    def __init__(self, root: str, transform: Any = None, delay_s: float = 0.0) -> None:
        super().__init__(root, transform=transform)
        self.delay_s = delay_s

    def __getitem__(self, i: int) -> Any:
        time.sleep(self.delay_s)
        return super().__getitem__(i)
