"""Datasets as tensors in memory, and shuffled mini-batches drawn from them.

Every supported dataset is small enough to hold as one tensor, so batching is
index shuffling with a seeded generator: no per-sample Python work, no worker
processes (which also keeps the joblib launcher happy), and an exactly
reproducible order.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from schedulers import ConfigError

if TYPE_CHECKING:
    import torch

# torchvision class name, the folder it reads under data.root, and the files that must be there.
_TORCHVISION = {
    "mnist": ("MNIST", "MNIST/raw", ["train-images-idx3-ubyte", "t10k-images-idx3-ubyte"]),
    "fashion_mnist": (
        "FashionMNIST",
        "FashionMNIST/raw",
        ["train-images-idx3-ubyte", "t10k-images-idx3-ubyte"],
    ),
    "cifar10": ("CIFAR10", "cifar-10-batches-py", ["data_batch_1", "test_batch"]),
}
DATASETS = ("digits", "fake", *_TORCHVISION)

_FETCH_HINT = (
    "download it once on a machine with network, e.g.\n"
    "  python -c \"import torchvision; torchvision.datasets.{cls}('{root}', train=True, "
    "download=True); torchvision.datasets.{cls}('{root}', train=False, download=True)\"\n"
    "then copy '{root}' here (or point data.root at it)."
)


@dataclass(frozen=True)
class TensorData:
    """Normalised float images [N, C, H, W] and integer labels [N], for train and val."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    num_classes: int

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    def to(self, device: Any) -> TensorData:
        return TensorData(
            self.x_train.to(device),
            self.y_train.to(device),
            self.x_val.to(device),
            self.y_val.to(device),
            self.num_classes,
        )


def validate_data(cfg: Mapping[str, Any]) -> None:
    """Fail before training on bad values, or when a file-based dataset is not on disk
    (saying how to get it)."""
    name = cfg["name"]
    if name not in DATASETS:
        raise ConfigError("data.name", name, f"must be one of {list(DATASETS)}")
    bs = cfg["batch_size"]
    if isinstance(bs, bool) or not isinstance(bs, int) or bs < 1:
        raise ConfigError("data.batch_size", bs, "must be an integer >= 1")
    if name == "digits" and not 0 < cfg["val_fraction"] < 1:
        raise ConfigError("data.val_fraction", cfg["val_fraction"], "must be in (0, 1)")
    if name == "fake":
        for key in ("train_size", "val_size", "num_classes"):
            if cfg[key] < 1:
                raise ConfigError(f"data.{key}", cfg[key], "must be >= 1")
        if len(cfg["image_size"]) != 3 or min(cfg["image_size"]) < 1:
            raise ConfigError("data.image_size", list(cfg["image_size"]), "must be [C, H, W] >= 1")
    if name not in _TORCHVISION:
        return
    if cfg["limit"] is not None and cfg["limit"] < 1:
        raise ConfigError("data.limit", cfg["limit"], "must be null or >= 1")
    cls, folder, files = _TORCHVISION[name]
    root = Path(cfg["root"])
    missing = [f for f in files if not (root / folder / f).exists()]
    if missing:
        where = (root / folder).resolve()
        raise ConfigError(
            "data.root",
            str(cfg["root"]),
            f"{cls} not found: expected {missing[0]} in {where}. No download at run time; "
            + _FETCH_HINT.format(cls=cls, root=cfg["root"]),
        )


def train_size(cfg: Mapping[str, Any]) -> int:
    """Number of training samples, known without loading the data (for steps per epoch)."""
    name = cfg["name"]
    if name == "digits":
        return 1797 - math.ceil(1797 * cfg["val_fraction"])  # how train_test_split rounds
    if name == "fake":
        return cfg["train_size"]
    full = 50_000 if name == "cifar10" else 60_000
    return full if cfg["limit"] is None else min(full, cfg["limit"])


def load_data(cfg: Mapping[str, Any]) -> TensorData:
    name = cfg["name"]
    if name == "digits":
        return _digits(cfg)
    if name == "fake":
        return _fake(cfg)
    return _torchvision(cfg)


def batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches in a random order drawn from `generator`, or in order when it is None."""
    import torch

    n = x.shape[0]
    order = None if generator is None else torch.randperm(n, generator=generator).to(x.device)
    for start in range(0, n, batch_size):
        if order is None:
            yield x[start : start + batch_size], y[start : start + batch_size]
        else:
            idx = order[start : start + batch_size]
            yield x[idx], y[idx]


def _standardise(x_train: torch.Tensor, x_val: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero mean, unit variance per channel, with statistics of the training split only."""
    mean = x_train.mean(dim=(0, 2, 3), keepdim=True)
    std = x_train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-8)
    return (x_train - mean) / std, (x_val - mean) / std


def _digits(cfg: Mapping[str, Any]) -> TensorData:
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    idx_train, idx_val = train_test_split(
        list(range(len(y))),
        test_size=cfg["val_fraction"],
        stratify=digits.target,
        random_state=cfg["split_seed"],
    )
    x_train, x_val = _standardise(x[idx_train], x[idx_val])
    return TensorData(x_train, y[idx_train], x_val, y[idx_val], num_classes=10)


def _fake(cfg: Mapping[str, Any]) -> TensorData:
    import torch
    from torchvision.datasets import FakeData
    from torchvision.transforms.functional import pil_to_tensor

    shape = tuple(cfg["image_size"])

    def split(size: int, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
        ds = FakeData(size, shape, cfg["num_classes"], random_offset=offset)
        xs, ys = zip(*((pil_to_tensor(img), label) for img, label in ds), strict=True)
        return torch.stack(xs).float() / 255.0, torch.tensor(ys, dtype=torch.long)

    x_train, y_train = split(cfg["train_size"], 0)
    x_val, y_val = split(cfg["val_size"], cfg["train_size"])
    x_train, x_val = _standardise(x_train, x_val)
    return TensorData(x_train, y_train, x_val, y_val, num_classes=cfg["num_classes"])


def _torchvision(cfg: Mapping[str, Any]) -> TensorData:
    import torch
    import torchvision

    cls_name = _TORCHVISION[cfg["name"]][0]
    cls = getattr(torchvision.datasets, cls_name)
    parts = []
    for train in (True, False):
        try:
            ds = cls(str(cfg["root"]), train=train, download=False)
        except RuntimeError as err:  # files present but incomplete or failing the checksum
            raise ConfigError("data.root", str(cfg["root"]), f"{cls_name}: {err}") from err
        x = torch.as_tensor(ds.data)
        x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)  # grey [N,H,W] / RGB [N,H,W,C]
        parts += [x.float() / 255.0, torch.as_tensor(ds.targets, dtype=torch.long)]
    x_train, y_train, x_val, y_val = parts
    if cfg.get("limit") is not None:
        x_train, y_train = x_train[: cfg["limit"]], y_train[: cfg["limit"]]
    x_train, x_val = _standardise(x_train, x_val)
    return TensorData(x_train, y_train, x_val, y_val, num_classes=10)
