"""A small CNN in two parts, `backbone` and `head`, so the optimizer can give them their own
lr by name pattern (conf/optimizer/rmsprop.yaml)."""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    # in_channels and num_classes are filled in by the runner from the data, because the
    # constructor names them; width and dropout come from conf/model/small_cnn.yaml
    def __init__(self, in_channels: int, num_classes: int, width: int = 16, dropout: float = 0.0):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))
