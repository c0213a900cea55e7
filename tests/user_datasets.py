"""Datasets of a user's own, for the tests (streamed data, data checks, fingerprints): imported
by `_target_` as a user's package would be."""

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


class Odd(Blobs):
    """Blobs (3 classes) with one odd sample at index `at`, odd as `kind` says: its
    __getitem__ raises ("raises"), its shape differs ("shape"), or its label is out of range
    ("range"), a float ("float"), one-hot ("onehot") or a str ("str"); "one" gives every
    sample label 0 (a one-class set)."""

    def __init__(self, size: int, kind: str, at: int = 0, offset: int = 0) -> None:
        super().__init__(size, offset)
        self.kind, self.at = kind, at

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Any]:
        x, y = super().__getitem__(i)
        if self.kind == "one":
            return x, 0
        if i != self.at:
            return x, y
        if self.kind == "raises":
            raise ValueError("cannot decode this sample")
        odd = {
            "shape": lambda: (torch.zeros(1, 5, 4), y),
            "range": lambda: (x, 7),
            "float": lambda: (x, float(y) + 0.5),
            "onehot": lambda: (x, torch.nn.functional.one_hot(torch.tensor(y), 3)),
            "str": lambda: (x, "mid"),
        }.get(self.kind)  # any other kind: none odd
        return (x, y) if odd is None else odd()


class Listed(Odd):
    """Odd, listing its labels in `targets` as torchvision's datasets do."""

    @property
    def targets(self) -> list[int]:
        return [0] * len(self.y) if self.kind == "one" else self.y.tolist()


class Counted(Blobs):
    """Blobs without `targets`, counting the samples fetched from it (`fetched`, for the
    whole class); sample `broken` cannot be read."""

    fetched = 0

    def __init__(self, size: int, offset: int = 0, broken: int = -1) -> None:
        super().__init__(size, offset)
        self.broken = broken

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        Counted.fetched += 1
        if i == self.broken:
            raise OSError("a bad sector")
        return super().__getitem__(i)


class MarkovTokens(Dataset):
    """A language model's windows without data=text: a deterministic order-1 Markov chain
    over `vocab` symbols (each symbol's next one drawn from 2 likely successors, seeded),
    cut into windows (x [T], y [T] = x shifted by one), long ids. Its per-token entropy is
    about ln 2 (0.69), well below a unigram's ln(vocab), so learning shows as a falling loss."""

    def __init__(self, size: int, block: int = 16, vocab: int = 16, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(1234)  # the chain: the same for every split
        successors = torch.randint(vocab, (vocab, 2), generator=g)
        g.manual_seed(seed)  # the walk: one per split
        n = size * block + 1
        picks = torch.randint(2, (n,), generator=g)
        seq = torch.empty(n, dtype=torch.long)
        seq[0] = 0
        for i in range(1, n):
            seq[i] = successors[seq[i - 1], picks[i]]
        self.x = seq[:-1].view(size, block)
        self.y = seq[1:].view(size, block)
        self.num_classes = vocab

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


class SlowBlobs(Blobs):
    """Blobs that take `delay_s` per sample, like a slow disk: slow enough for a test to kill
    its run mid-way, with no image files to write."""

    def __init__(self, size: int, offset: int = 0, delay_s: float = 0.0) -> None:
        super().__init__(size, offset)
        self.delay_s = delay_s

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        time.sleep(self.delay_s)
        return super().__getitem__(i)


class Fielded(Blobs):
    """Blobs whose samples are not (x, y) pairs: (x, y, index) ("triple") or a dict of
    fields ("dict"), as many users' datasets return them."""

    def __init__(self, size: int, form: str, offset: int = 0) -> None:
        super().__init__(size, offset)
        self.form = form

    def __getitem__(self, i: int) -> Any:
        x, y = super().__getitem__(i)
        return (x, y, i) if self.form == "triple" else {"image": x, "label": y}
