"""Datasets as tensors in memory, and shuffled mini-batches drawn from them.

Images are [N, C, H, W]; 1-D signals (MNIST-1D) are [N, C, L]. Every supported dataset
is small enough to hold as one tensor, so batching is
index shuffling with a seeded generator: no per-sample Python work, no worker
processes (which also keeps the joblib launcher happy), and an exactly
reproducible order.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from runner.config.schema import SCHEMAS, check_node
from runner.data import digits, stream, text
from runner.data.labels import check_labels, warn_one_class
from runner.data.mnist1d import load_mnist1d
from runner.data.paths import with_absolute_paths
from runner.data.stream import StreamData
from runner.data.text import TextData, Windows, window_batches
from schedulers import ConfigError

log = logging.getLogger("schedlab")

# torchvision class name, the folder it reads under data.root, and the files that must be there.
_TORCHVISION = {
    "mnist": ("MNIST", "MNIST/raw", ["train-images-idx3-ubyte", "t10k-images-idx3-ubyte"]),
    "fashion_mnist": (
        "FashionMNIST",
        "FashionMNIST/raw",
        ["train-images-idx3-ubyte", "t10k-images-idx3-ubyte"],
    ),
    "cifar10": (
        "CIFAR10",
        "cifar-10-batches-py",
        [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"],
    ),
}
DATASETS = ("digits", "fake", "mnist1d", "text", *_TORCHVISION)

_FETCH_HINT = (
    "download it once on a machine with network, e.g.\n"
    "  python -c \"import torchvision; torchvision.datasets.{cls}('{root}', train=True, "
    "download=True); torchvision.datasets.{cls}('{root}', train=False, download=True)\"\n"
    "then copy '{root}' here (or point data.root at it)."
)


@dataclass(frozen=True)
class TensorData:
    """Normalised float samples (images [N, C, H, W] or signals [N, C, L]) and integer
    labels [N], for train and val."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    num_classes: int

    @property
    def image_shape(self) -> tuple[int, ...]:
        """One sample's shape: (C, H, W) for images, (C, L) for 1-D signals."""
        return tuple(self.x_train.shape[1:])

    @property
    def n_train(self) -> int:
        """Training samples (StreamData says the same): what steps per epoch are made of."""
        return int(self.y_train.shape[0])

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
    if "name" not in cfg:  # a data/<name>.yaml of the user's own, without its defaults
        raise ConfigError("data.name", None, "missing")
    name = cfg["name"]
    if name == "dataset":  # any torch Dataset, streamed: runner/data/stream.py
        stream.validate(cfg)
        return
    if name == "text":  # byte-level text: runner/data/text.py
        text.validate(cfg)
        return
    if name not in DATASETS:
        raise ConfigError("data.name", name, f"must be one of {list(DATASETS)}")
    check_node("data", cfg, SCHEMAS["data"][name])
    if name == "mnist1d":
        _check_mnist1d(cfg)
    if name not in _TORCHVISION:
        return
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
    """Number of training samples, read from the data (for steps per epoch)."""
    return load_data(cfg).n_train


def data_shape(cfg: Mapping[str, Any]) -> tuple[tuple[int, ...], int]:
    """A sample's shape ([C, H, W] or [C, L]) and the number of classes, read from the
    data: start-up checks build the model on the meta device with them."""
    data = load_data(cfg)
    return data.image_shape, data.num_classes


def check_data(node: Mapping[str, Any], found: dict[str, Any]) -> None:
    """The data's checker in start-up validation (runner/run/check.py `CHECKS`): its keys,
    then the data itself, loaded (what the run then trains on; the table's later checkers
    read it from `found`) and data.num_classes: null filled in from the train set
    (`fill_inferred`). Here, beside what it calls, so that validation calls down once."""
    validate_data(node)
    data = load_data(node)
    if node.get("num_classes", 0) is None:
        node["num_classes"] = data.num_classes  # type: ignore[index]
    found["data"], found["data_name"] = data, node["name"]
    found["image_shape"], found["num_classes"] = tuple(data.image_shape), data.num_classes
    found["n_train"] = data.n_train
    found["batch_size"] = node["batch_size"]
    found["steps_per_epoch"] = steps_per_epoch(
        data.n_train, node["batch_size"], found["accumulate"]
    )


def steps_per_epoch(n_train: int, batch_size: int, accumulate: int = 1) -> int:
    """Optimizer steps in an epoch: `batches()` yields the last, smaller batch too, and with
    trainer.accumulate N each step takes N batches, the epoch's last step the batches left
    (runner/train/steps.py `groups`). The one formula behind per-step schedules, the loops'
    step counts, start-up validation and the previews."""
    return math.ceil(math.ceil(n_train / batch_size) / accumulate)


def load_data(cfg: Mapping[str, Any]) -> TensorData | StreamData | TextData:
    """The data set, loaded once per process for the same data: start-up validation reads
    its sizes and shapes from it, then the run trains on the same tensors, a resume checks
    its fingerprint on them, and a sweep's jobs in one process share them. Loading uses no
    global RNG. data=dataset gives a StreamData (runner/data/stream.py) unless it is
    materialised (data.in_memory); data=text a TextData (runner/data/text.py). All answer
    the same size and shape questions. `cfg`: the data node's plain values (`${...}`
    resolved: runner/run/check.py `validate`, the typed spec's `data`)."""
    settings = {k: v for k, v in cfg.items() if k != "batch_size"}  # not the data's
    key = _cache_key(settings)
    held = _HELD["data"]
    if key in _HELD["keys"]:
        if _versions(held) == _HELD["versions"]:
            return held
        log.warning(
            "the data set held in memory was changed in place by a run (a model or "
            "transform that writes into its input?): loading it again"
        )
    data = _load(settings)
    keys = {key}
    if settings.get("num_classes", 0) is None:  # the same data once the run has filled it in
        keys.add(_cache_key({**settings, "num_classes": data.num_classes}))
    # one data set at a time: a second would double the memory held
    _HELD.update(keys=keys, data=data, versions=_versions(data))
    return data


# The data set this process loaded last, the keys that name it, and the version counters
# of its tensors then (torch bumps a tensor's on every in-place write, through any view of
# it too): a run that wrote into the shared tensors is caught, and the next one gets the
# data loaded afresh rather than the changed tensors.
_HELD: dict[str, Any] = {"keys": set(), "data": None, "versions": ()}


def still_held(data: Any) -> bool:
    """`data` is the data set this process holds, unchanged since it was loaded (no run
    wrote into its tensors): what `load_data` would return again for its config. A run
    validated on it (runner/run/check.py `Checked.data`) then trains on it."""
    return data is not None and data is _HELD["data"] and _versions(data) == _HELD["versions"]


def clear_cache() -> None:
    """Forget the data set held (tests: a fresh load)."""
    _HELD.update(keys=set(), data=None, versions=())


def _cache_key(settings: dict[str, Any]) -> str:
    """The data node's content: its paths absolute (data.root=data and =/work/data read the
    same files), and the cwd, which a path not recognised as one is relative to."""
    return json.dumps([with_absolute_paths(settings), os.getcwd()], sort_keys=True, default=str)


def _versions(data: Any) -> tuple[int, ...]:
    if not isinstance(data, TensorData):
        return ()  # streamed: read from its Dataset each epoch, nothing held
    return tuple(t._version for t in (data.x_train, data.y_train, data.x_val, data.y_val))


def _load(settings: dict[str, Any]) -> TensorData | StreamData | TextData:
    data = _build(settings)
    if isinstance(data, TensorData):  # every label in memory: a min and a max, cheap
        tokens = not data.x_train.is_floating_point()  # token windows: targets [N, T]
        check_labels("data.train", data.y_train, data.num_classes, tokens=tokens)
        check_labels("data.val", data.y_val, data.num_classes, tokens=tokens)
        warn_one_class(data.y_train)
    return data


def _build(cfg: dict[str, Any]) -> TensorData | StreamData | TextData:
    name = cfg["name"]
    if name == "text":
        return text.load(cfg)
    if name == "dataset":
        loaded = stream.load(cfg)
        return loaded if isinstance(loaded, StreamData) else TensorData(*loaded)
    if name == "digits":
        return _digits(cfg)
    if name == "fake":
        return _fake(cfg)
    if name == "mnist1d":
        return TensorData(*load_mnist1d(cfg), num_classes=cfg["num_classes"])
    if name == "cifar10":
        return _cifar10(cfg)
    return _torchvision(cfg)


def place(data: TensorData, device: Any) -> TensorData:
    """On the training device when it fits in a quarter of its free memory; otherwise in
    pinned host memory, and `batches` copies each batch over without blocking."""
    if not isinstance(data, TensorData):  # streamed: each batch is moved as it comes
        return data

    if device.type != "cuda":
        return data.to(device)
    nbytes = sum(t.numel() * t.element_size() for t in (data.x_train, data.x_val))
    free, _ = torch.cuda.mem_get_info(device)
    if nbytes < free / 4:
        return data.to(device)
    pinned = [t.pin_memory() for t in (data.x_train, data.y_train, data.x_val, data.y_val)]
    return TensorData(*pinned, num_classes=data.num_classes)


def resize_images(data: TensorData, size: int | None) -> TensorData:
    """Images upsampled (bilinear) to `size` once for the whole set, for models that need a
    minimum input size (LeNet on 8x8 digits), instead of in every forward pass. Bilinear
    interpolation is per image, so the numbers are the ones per-batch resizing gives."""
    if not isinstance(data, TensorData):  # streamed: the model resizes (LeNet's forward)
        return data
    if size is None or data.x_train.shape[-1] == size:
        return data

    def up(x: Any) -> Any:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    return TensorData(up(data.x_train), data.y_train, up(data.x_val), data.y_val, data.num_classes)


def batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    generator: torch.Generator | None = None,
    device: Any = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches in a random order drawn from `generator`, or in order when it is None.
    Index shuffling of in-memory tensors: no per-sample Python work, no workers. Text's
    training windows (x, y: `Windows`) are gathered at offsets drawn for each batch."""
    if isinstance(x, Windows):
        yield from window_batches(x, y, batch_size, generator, device)  # type: ignore[arg-type]
        return
    n = x.shape[0]
    order = None if generator is None else torch.randperm(n, generator=generator).to(x.device)
    for start in range(0, n, batch_size):
        if order is None:
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        else:
            idx = order[start : start + batch_size]
            xb, yb = x.index_select(0, idx), y.index_select(0, idx)  # leaner than x[idx]
        if device is not None and xb.device != device:  # host-resident data (did not fit)
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        yield xb, yb


def augment(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop (zero padding of `pad` px) and horizontal flip, per image, as batch tensor
    ops on x's device; the randomness comes from `generator` (CPU), so it is seeded and
    checkpointed with the data order."""
    n, c, h, w = x.shape
    shifts = torch.randint(0, 2 * pad + 1, (2, n), generator=generator).to(x.device)
    flips = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = (shifts[0, :, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (shifts[1, :, None] + torch.arange(w, device=x.device))[:, None, None, :]
    out = padded.gather(2, rows.expand(n, c, h, w + 2 * pad)).gather(3, cols.expand(n, c, h, w))
    return torch.where(flips[:, None, None, None], out.flip(3), out)


def _standardise(x_train: torch.Tensor, x_val: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero mean, unit variance per channel, with statistics of the training split only."""
    mean = x_train.mean(dim=(0, 2, 3), keepdim=True)
    std = x_train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-8)
    return (x_train - mean) / std, (x_val - mean) / std


def _check_mnist1d(cfg: Mapping[str, Any]) -> None:
    """What the generator needs beyond each key's own range: both splits non-empty, a
    padding interval that is one."""
    low, high = cfg["padding"]
    if low > high:
        raise ConfigError("data.padding", [low, high], "must be [low, high] with low <= high")
    total = cfg["num_samples"] // 10 * 10  # the generator makes num_samples // 10 per class
    n_train = int(total * cfg["train_split"])
    if not 0 < n_train < total:
        raise ConfigError(
            "data.train_split",
            cfg["train_split"],
            f"leaves {n_train} of {total} samples for training: both splits need samples",
        )


def _digits(cfg: Mapping[str, Any]) -> TensorData:
    images, target = digits.load()
    x = torch.tensor(images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(target, dtype=torch.long)
    idx_train, idx_val = (
        torch.from_numpy(i)
        for i in digits.stratified_split(target, cfg["val_fraction"], cfg["split_seed"])
    )
    x_train, x_val = _standardise(x[idx_train], x[idx_val])
    return TensorData(x_train, y[idx_train], x_val, y[idx_val], num_classes=10)


def _fake(cfg: Mapping[str, Any]) -> TensorData:
    # torchvision (seconds, cold) only for the data sets it makes: not for digits/mnist1d
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


# What a CIFAR-10 batch pickle may name: numpy's array and dtype rebuilders, nothing else
# (its dict, lists, ints and bytes need no import). Python 2's pickles (the released files)
# say numpy.core, numpy 2's say numpy._core.
_CIFAR_GLOBALS = {
    *((core, "_reconstruct") for core in ("numpy.core.multiarray", "numpy._core.multiarray")),
    *((core, "_frombuffer") for core in ("numpy.core.numeric", "numpy._core.numeric")),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # bytes in a protocol-2 pickle written by Python 3
}


def _load_cifar_batch(file: Any) -> Any:
    """A CIFAR batch unpickled as data, never code: a plain pickle.load runs whatever a
    crafted file in data.root names (its __reduce__), so every global it asks for beyond
    numpy's array rebuilders is refused. This, not torchvision's md5 list, keeps the small
    CIFAR-format sets the tests write (and any re-packed copy) readable."""

    class Restricted(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if (module, name) not in _CIFAR_GLOBALS:
                raise pickle.UnpicklingError(
                    f"it asks to import {module}.{name}, which a CIFAR batch (a dict of numpy "
                    "arrays, lists and bytes) never does: refused, files under data.root are "
                    "read as data, never run"
                )
            return super().find_class(module, name)

    return Restricted(file, encoding="bytes").load()


def _cifar10(cfg: Mapping[str, Any]) -> TensorData:
    """CIFAR-10 from torchvision's on-disk layout (cifar-10-batches-py), read directly (with
    a restricted unpickler): torchvision's class insists on the files' md5 sums, which rules
    out the small CIFAR-format sets the tests write."""
    folder = Path(cfg["root"]) / "cifar-10-batches-py"

    def read(names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for name in names:
            try:
                with (folder / name).open("rb") as f:
                    batch = _load_cifar_batch(f)
                xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                ys.extend(batch[b"labels"])
            except Exception as err:  # missing, truncated or not a CIFAR batch
                raise ConfigError(
                    "data.root",
                    str(cfg["root"]),
                    f"CIFAR10 file {folder / name} unreadable: {err!r}",
                ) from None
        x = torch.from_numpy(np.concatenate(xs)).float() / 255.0
        return x, torch.tensor(ys, dtype=torch.long)

    x_train, y_train = read([f"data_batch_{i}" for i in range(1, 6)])
    x_val, y_val = read(["test_batch"])
    if cfg.get("limit") is not None:
        x_train, y_train = x_train[: cfg["limit"]], y_train[: cfg["limit"]]
    x_train, x_val = _standardise(x_train, x_val)
    return TensorData(x_train, y_train, x_val, y_val, num_classes=10)


def _torchvision(cfg: Mapping[str, Any]) -> TensorData:
    import torchvision  # seconds, cold: only for the data sets it reads (see _fake)

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
