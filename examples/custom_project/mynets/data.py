"""A dataset of our own: small grey images of four shapes, drawn from the sample's index.

It stands in for whatever data a project really has, and shows what the runner needs from a
class of yours (conf/data/shapes.yaml names it by `_target_`): `__len__`, `__getitem__` giving
(float tensor, integer label), and a `classes` attribute, from which the runner infers
`data.num_classes`. Nothing is downloaded or read from disk: sample `i` is rendered from a
random generator seeded by (`offset`, `i`), so every epoch, worker and resumed run sees the
same image, and the train (offset 0) and val (offset 1) splits never share one.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset


class Shapes(Dataset):
    """`size` images [1, image_size, image_size] in [0, 1]: a square, a disc, a cross or a
    triangle of random position, size and brightness on a noisy background; sample `i` is of
    class `i % 4`, so the classes are balanced.

    Args:
        size: number of samples.
        offset: which stream of images (0 for train, 1 for val, ...); the same offset and
            index always give the same image.
        image_size: side of the square images, in pixels (at least 8).
        noise: standard deviation of the Gaussian pixel noise.
        transform: called on each image tensor, e.g. a torchvision.transforms.v2 pipeline;
            random transforms are seeded per sample by the runner.
    """

    classes = ("square", "disc", "cross", "triangle")

    def __init__(
        self,
        size: int,
        offset: int = 0,
        image_size: int = 16,
        noise: float = 0.1,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        # checked here, so a bad value is a config error naming its key, not a crash mid-epoch
        if size < 1:
            raise ValueError(f"size must be at least 1, got {size}")
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}")
        if image_size < 8:
            raise ValueError(f"image_size must be at least 8 pixels, got {image_size}")
        self.size = size
        self.offset = offset
        self.image_size = image_size
        self.noise = noise
        self.transform = transform

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} samples")
        label = index % len(self.classes)
        image = self.render(index, label)
        if self.transform is not None:
            image = self.transform(image)
        return image, label

    def render(self, index: int, label: int) -> torch.Tensor:
        """The image of sample `index` (of class `label`), before any transform."""
        # a generator of this sample's own: independent of the global RNGs and of the order
        # in which samples are fetched
        rng = np.random.default_rng([self.offset, index])
        n = self.image_size
        radius = rng.uniform(0.2, 0.35) * n
        cy, cx = rng.uniform(radius, n - 1 - radius, size=2)
        y, x = np.mgrid[0:n, 0:n]
        dy, dx = y - cy, x - cx
        name = self.classes[label]
        if name == "square":
            mask = (np.abs(dx) <= radius) & (np.abs(dy) <= radius)
        elif name == "disc":
            mask = dx**2 + dy**2 <= radius**2
        elif name == "cross":
            bar = radius / 3
            mask = ((np.abs(dx) <= bar) & (np.abs(dy) <= radius)) | (
                (np.abs(dy) <= bar) & (np.abs(dx) <= radius)
            )
        else:  # triangle, apex up: it widens from the top (dy = -radius) to its base
            mask = (np.abs(dy) <= radius) & (np.abs(dx) <= (dy + radius) / 2)
        brightness = rng.uniform(0.6, 1.0)
        pixels = 0.1 + brightness * mask + self.noise * rng.standard_normal((n, n))
        return torch.from_numpy(pixels.clip(0.0, 1.0)).float().unsqueeze(0)
