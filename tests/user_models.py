"""Models a user might bring: defined here, outside the project's packages, and reached by
`model._target_=tests.user_models.<Class>` (the tests put the repo root on PYTHONPATH)."""

from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    """An MLP in two named parts, taking the data's shape from the runner's offer."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int, hidden: int = 32):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Flatten(), nn.Linear(in_channels * image_size * image_size, hidden), nn.ReLU()
        )
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class SmallCNN(nn.Module):
    """A small conv net; `classes` is not a name the runner offers, so configs interpolate
    ${data.num_classes} for it."""

    def __init__(self, classes: int, in_channels: int = 1, width: int = 8):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
        )
        self.head = nn.Linear(4 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class LazyNet(nn.Module):
    """A user model in the common lazy style: its input width comes from the first batch."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.LazyLinear(16), nn.ReLU(), nn.Linear(16, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Frozen(nn.Module):
    """A model whose every parameter is frozen: an optimizer over it trains nothing."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))
        self.head.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


class Double(nn.Module):
    """Parameters in float64, the data in float32."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes)).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


class Classes(nn.Module):
    """Takes its width as `classes` (not a name the runner offers): configs interpolate
    ${data.num_classes}."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(16, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


class EmbedNet(nn.Module):
    """Pixels as tokens: an nn.Embedding table, a LayerNorm, a bias-free projection and a
    linear head, so it holds every kind of parameter optimizer.no_decay tells apart."""

    def __init__(self, num_classes: int, levels: int = 17, width: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(levels, width)
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, width, bias=False)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top = self.embed.num_embeddings - 1
        tokens = x.flatten(1).abs().mul(top).round().long().clamp(max=top)
        return self.head(self.proj(self.norm(self.embed(tokens).mean(1))))


class BnNet(nn.Module):
    """An MLP with a BatchNorm layer (body.2): its running statistics are what a
    schedule-free optimizer's eval weights (tests/test_schedule_free.py) and an averaged
    model (trainer.average, swa_utils.update_bn: tests/test_averaging.py) need recomputed."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int, hidden: int = 32):
        super().__init__()
        self.body = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels * image_size * image_size, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
        )
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class Softmaxed(TinyNet):
    """TinyNet with a softmax at the end of forward(): probabilities, where the runner's
    cross_entropy wants raw scores (it trained, badly, with exit 0)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(super().forward(x), -1)


class LogSoftmaxed(TinyNet):
    """TinyNet ending in log_softmax: log-probabilities, which cross_entropy takes as they
    are (its log-softmax leaves them unchanged)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(super().forward(x), -1)


class HalfDouble(nn.Module):
    """A float32 body and a float64 head, its input never cast: torch refuses the mix at
    the head's matmul, which the meta device's kernels let pass."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 8))
        self.head = nn.Linear(8, num_classes).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(x)))


class Detached(TinyNet):
    """TinyNet whose scores are detached from the graph (as a NumPy round trip or a
    forward under torch.no_grad() leaves them): the first backward crashed."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).detach()
