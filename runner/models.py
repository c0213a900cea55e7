"""The models a run can train, each shaped by the data it is given (channels, size, classes)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from schedulers import ConfigError

MODELS = ("mlp", "lenet", "resnet18")


def part_names(cfg: Mapping[str, Any]) -> tuple[str, ...]:
    """The named parts of a model that `optimizer.param_groups` can give their own lr."""
    if cfg["name"] == "mlp":
        return ("hidden", "head") if cfg["hidden"] else ("head",)
    return {"lenet": ("features", "classifier"), "resnet18": ("backbone", "head")}[cfg["name"]]


def model_parts(model: nn.Module, cfg: Mapping[str, Any]) -> dict[str, list[nn.Parameter]]:
    """Parameters of each part in `part_names` order; together they cover the whole model."""
    if cfg["name"] == "mlp":
        *hidden, head = model.net
        groups = {
            "hidden": [p for m in hidden for p in m.parameters()],
            "head": [*head.parameters()],
        }
    elif cfg["name"] == "lenet":
        groups = {
            "features": [*model.features.parameters()],
            "classifier": [*model.classifier.parameters()],
        }
    else:
        head_ids = {id(p) for p in model.fc.parameters()}
        groups = {
            "backbone": [p for p in model.parameters() if id(p) not in head_ids],
            "head": [*model.fc.parameters()],
        }
    return {name: groups[name] for name in part_names(cfg)}


class MLP(nn.Module):
    def __init__(self, in_features: int, hidden: list[int], num_classes: int, dropout: float):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LeNet(nn.Module):
    """The lecture's LeNet; `features` and `classifier` are separate so they can get own lrs."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int, min_input_size: int):
        super().__init__()
        # LeNet's two 5x5 convs + pools need >= 16 px; the original was designed for 32x32.
        self.input_size = max(image_size, min_input_size)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        side = ((self.input_size - 4) // 2 - 4) // 2
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * side * side, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False)
        return self.classifier(self.features(x))


def _resnet18(in_channels: int, image_size: int, num_classes: int, small_stem: Any) -> nn.Module:
    from torchvision.models import resnet18

    model = resnet18(weights=None, num_classes=num_classes)
    if small_stem is True or (small_stem == "auto" and image_size <= 64):
        # The ImageNet stem shrinks inputs 4x before the first block; on 32 px images that
        # throws away most of the picture, so use the usual CIFAR stem instead.
        model.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    return model


def validate_model(cfg: Mapping[str, Any]) -> None:
    name = cfg["name"]
    if name not in MODELS:
        raise ConfigError(
            "model.name", name, f"must be one of {list(MODELS)}"
        )  # validate_model ran
    if name == "mlp":
        hidden = cfg["hidden"]
        if not all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in hidden):
            raise ConfigError("model.hidden", list(hidden), "must be a list of positive integers")
        if not 0 <= cfg["dropout"] < 1:
            raise ConfigError("model.dropout", cfg["dropout"], "must be in [0, 1)")
    elif name == "lenet" and cfg["min_input_size"] < 16:
        # two 5x5 convs with 2x2 pools leave nothing of a smaller image
        raise ConfigError("model.min_input_size", cfg["min_input_size"], "must be >= 16 for LeNet")
    elif name == "resnet18" and cfg["small_input_stem"] not in ("auto", True, False):
        raise ConfigError(
            "model.small_input_stem", cfg["small_input_stem"], "must be auto, true or false"
        )


def build_model(
    cfg: Mapping[str, Any], image_shape: tuple[int, int, int], num_classes: int
) -> nn.Module:
    channels, height, width = image_shape
    name = cfg["name"]
    if name == "mlp":
        return MLP(channels * height * width, list(cfg["hidden"]), num_classes, cfg["dropout"])
    if name == "lenet":
        return LeNet(channels, min(height, width), num_classes, cfg["min_input_size"])
    if name == "resnet18":
        return _resnet18(channels, min(height, width), num_classes, cfg["small_input_stem"])
    raise ConfigError("model.name", name, f"must be one of {list(MODELS)}")  # validate_model ran
