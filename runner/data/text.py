"""data=text: byte-level text for language models, from the user's files or the bundled source.

Tokens are bytes (vocabulary 256: no tokenizer, nothing to download). `data.path` names a
text file, or a folder whose files (every non-hidden one under it, in sorted order of their
relative paths) are concatenated; `data.path: null` is the bundled source, text sampled from
a fixed hidden Markov model (runner/data/hmm.py) whose optimal loss is known exactly.

The token stream is one uint8 file in `data.cache_dir`, memory-mapped, never held whole in
memory: for the user's text it is named by a hash of the files' names and contents (read
once per process), so a second run reuses it and a changed file makes a new one (the
stale one for the same path is removed); for the bundled source by its seed and size. It
is written atomically: a run killed mid-write leaves no half a cache.

The stream's tail (`data.val_fraction`) is held out. Training windows of block_size + 1
tokens (inputs x, and targets y = x shifted by one) start at offsets drawn for every batch
from the run's data-order generator, the one each checkpoint saves, so a resumed run draws
the windows it would have drawn. A batch is one gather from the memory map in the training
process: there is no DataLoader and no worker process, so the windows cannot depend on a
worker count (data=text has no num_workers key). Validation windows are fixed: consecutive,
non-overlapping windows from the start of the tail (at most `data.val_tokens` tokens).
An epoch is `tokens_per_epoch // block_size` windows (`n_train`), batched as any data set.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from runner.config.schema import SCHEMAS, check_node
from runner.data import hmm
from runner.io import files
from schedulers import ConfigError

log = logging.getLogger("schedlab")
VOCAB = 256  # byte values
SOURCE_VERSION = 1  # in the bundled corpus' cache name: bump when hmm.py changes its bytes
_CHUNK = 1 << 20  # bytes read at a time when hashing or copying the user's files


# -- the windows --------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Windows:
    """The training split as `count` windows of block_size tokens over a memory-mapped
    stream, gathered only when a batch asks for them: inputs (shift 0) or targets (shift
    1). Shaped like the tensor it stands for ([count, block_size]); sets.batches() draws
    from it with `window_batches`."""

    tokens: np.ndarray  # uint8 [N], the split's stream (a memory map)
    block_size: int
    count: int  # windows per epoch
    shift: int = 0

    @property
    def shape(self) -> tuple[int, int]:
        return (self.count, self.block_size)

    @property
    def starts(self) -> int:
        """How many offsets a window (block_size + 1 tokens) can start at."""
        return int(self.tokens.shape[0]) - self.block_size

    def gather(self, offsets: torch.Tensor) -> torch.Tensor:
        """[len(offsets), block_size] long tokens from each offset (+ shift). Gathered by
        numpy: torch's indexing of a small batch costs ~1000x more (its thread pool)."""
        span = np.arange(self.shift, self.block_size + self.shift)
        return torch.from_numpy(self.tokens[offsets.numpy()[:, None] + span].astype(np.int64))

    def in_order(self, first: int, n: int) -> torch.Tensor:
        """The offsets of windows first..first+n-1 in order: consecutive, wrapping around."""
        return (torch.arange(first, first + n) * self.block_size) % self.starts

    def __getitem__(self, index: slice) -> torch.Tensor:
        """The first windows in order (`windows[:n]`: a sample batch for start-up checks)."""
        first, stop, _ = index.indices(self.count)
        return self.gather(self.in_order(first, max(stop - first, 0)))


def window_batches(
    x: Windows,
    y: Windows,
    batch_size: int,
    generator: torch.Generator | None = None,
    device: Any = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """An epoch's batches of (x, y) [B, block_size] long: x.count windows, batch_size at a
    time (the last one smaller), each batch's offsets drawn uniformly from `generator` as
    it is made (in order when it is None)."""
    for first in range(0, x.count, batch_size):
        n = min(batch_size, x.count - first)
        if generator is None:
            offsets = x.in_order(first, n)
        else:
            offsets = torch.randint(0, x.starts, (n,), generator=generator)
        xb, yb = x.gather(offsets), y.gather(offsets)
        if device is not None and xb.device != device:
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        yield xb, yb


@dataclass(frozen=True, eq=False)
class TextData:
    """Both splits, with the sizes the rest of the runner reads from any data (TensorData
    and StreamData say the same): `image_shape` (block_size,), `num_classes` (the
    vocabulary, 256), `n_train` (windows per epoch). `source_loss`: the Bayes-optimal loss
    on the validation windows (the bundled source; None for the user's text), so
    val/gap = val/loss - source_loss; `entropy_rate`: the source's, estimated."""

    x_train: Windows
    y_train: Windows
    x_val: torch.Tensor  # [W, block_size] long: the fixed validation windows
    y_val: torch.Tensor
    num_classes: int
    content: str  # a hash of the token stream: the cache's key, the run's fingerprint
    source_loss: float | None = None
    entropy_rate: float | None = None

    @property
    def image_shape(self) -> tuple[int, ...]:
        return (self.x_train.block_size,)

    @property
    def n_train(self) -> int:
        return self.x_train.count

    def to(self, device: Any) -> TextData:
        return self  # batches are gathered on the host and moved one at a time


def is_text(data: Any) -> bool:
    return isinstance(data, TextData)


# -- the config ---------------------------------------------------------------------------------
def validate(cfg: Mapping[str, Any]) -> None:
    """Keys, the path, and whether the splits hold a window: from the files' sizes, before
    anything is read or built."""
    check_node("data", cfg, SCHEMAS["data"]["text"])
    n = _source_size(cfg)
    block = cfg["block_size"]
    n_val = _val_size(n, cfg["val_fraction"])
    # what gives the split more tokens: the validation split grows with val_fraction and
    # val_tokens, the training split shrinks with val_fraction (more text, or lower it)
    more = {
        "train": "give more text or lower data.val_fraction",
        "validation": "raise data.val_fraction or data.val_tokens",
    }
    for split, tokens in (("train", n - n_val), ("validation", _val_used(cfg, n_val))):
        if tokens < block + 1:
            raise ConfigError(
                "data.block_size",
                block,
                f"is longer than the {split} split: it holds {tokens} tokens of {n}, and a "
                f"window needs block_size + 1 ({more[split]}, or lower data.block_size)",
            )
    per_epoch = cfg["tokens_per_epoch"]
    if per_epoch is not None and per_epoch < block:
        raise ConfigError(
            "data.tokens_per_epoch",
            per_epoch,
            f"is less than one window (data.block_size={block}): an epoch would be empty",
        )


def _val_size(n: int, fraction: float) -> int:
    return int(n * fraction)


def _val_used(cfg: Mapping[str, Any], n_val: int) -> int:
    cap = cfg["val_tokens"]
    return n_val if cap is None else min(n_val, cap)


def source_files(path: str, cache_dir: str | None = None) -> list[Path]:
    """The file, or every non-hidden file under the folder in sorted order of relative
    path (hidden files and folders, such as .git, are left out, and so is `cache_dir`
    when it lies inside: the default data/cache under a data.path=data would otherwise
    feed each run's cache into the next run's text, a new and longer stream every run,
    its validation tail a copy of training bytes)."""
    root = Path(os.path.expanduser(path))
    if root.is_file():
        return [root]
    skip = None if cache_dir is None else os.path.realpath(os.path.expanduser(cache_dir))
    found = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [
            d
            for d in dirs
            if not d.startswith(".") and os.path.realpath(os.path.join(folder, d)) != skip
        ]
        found += [Path(folder, n) for n in names if not n.startswith(".")]
    found = [f for f in found if f.is_file()]
    return sorted(found, key=lambda f: f.relative_to(root).as_posix())


def _source_size(cfg: Mapping[str, Any]) -> int:
    """Tokens in the stream: the files' total size, or the bundled source's."""
    path = cfg["path"]
    if path is None:
        return int(cfg["source_tokens"])
    root = Path(os.path.expanduser(path))
    if not root.exists():
        raise ConfigError("data.path", path, f"no such file or folder ({root.absolute()})")
    found = source_files(path, cfg["cache_dir"])
    n = sum(f.stat().st_size for f in found)
    if n == 0:
        what = "is empty" if root.is_file() else f"holds no text ({len(found)} non-hidden files)"
        raise ConfigError("data.path", path, f"{what}: there is nothing to train on")
    return n


# -- the token stream ---------------------------------------------------------------------------
def _digest_files(found: list[Path], root: Path) -> str:
    """A hash of each file's name (relative to the folder) and content, in order."""
    outer = hashlib.sha256()
    for f in found:
        inner = hashlib.sha256()
        with f.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                inner.update(chunk)
        name = f.name if f == root else f.relative_to(root).as_posix()
        outer.update(f"{name}\0{inner.hexdigest()}\0".encode())
    return outer.hexdigest()


def _write_concatenated(target: Path, found: list[Path]) -> None:
    def fill(tmp: Path) -> None:
        with tmp.open("wb") as out:
            for f in found:
                with f.open("rb") as handle:
                    while chunk := handle.read(_CHUNK):
                        out.write(chunk)

    files.replace_atomic(target, fill, fsync=False)


def user_tokens(path: str, cache_dir: str) -> tuple[Path, str]:
    """The cache file of the user's text and its content hash, written when missing (a
    cache for an earlier version of the same path is removed)."""
    root = Path(os.path.expanduser(path)).absolute()
    found = source_files(str(root), cache_dir)
    content = _digest_files(found, root)
    where = hashlib.sha256(str(root).encode()).hexdigest()[:12]  # one cache per path
    folder = Path(os.path.expanduser(cache_dir))
    target = folder / f"text-{where}-{content[:16]}.u8"
    if not target.exists():
        folder.mkdir(parents=True, exist_ok=True)
        log.info("tokenising %s (%d files) into %s", path, len(found), target)
        _write_concatenated(target, found)
        for stale in folder.glob(f"text-{where}-*.u8"):
            if stale != target:
                stale.unlink(missing_ok=True)
    return target, content


def bundled_tokens(seed: int, n: int, cache_dir: str) -> Path:
    """The bundled source's sample, generated once into the cache."""
    folder = Path(os.path.expanduser(cache_dir))
    target = folder / f"hmm-v{SOURCE_VERSION}-seed{seed}-{n}.u8"
    if not target.exists():
        folder.mkdir(parents=True, exist_ok=True)
        log.info("generating the bundled text source (%d tokens) into %s", n, target)
        files.write_bytes_atomic(target, hmm.sample(hmm.bundled(), n, seed).tobytes(), fsync=False)
    return target


def memory_map(path: Path) -> np.ndarray:
    """The file as a uint8 array, memory-mapped read-only."""
    return np.memmap(path, dtype=np.uint8, mode="r", shape=(path.stat().st_size,))


# -- loading ------------------------------------------------------------------------------------
def load(cfg: Mapping[str, Any]) -> TextData:
    """Both splits over the memory-mapped stream, and for the bundled source its optimal
    loss on the validation windows (cached beside the stream)."""
    bundled = cfg["path"] is None
    if bundled:
        path = bundled_tokens(cfg["source_seed"], cfg["source_tokens"], cfg["cache_dir"])
        content = path.stem
    else:
        path, content = user_tokens(cfg["path"], cfg["cache_dir"])
    tokens = memory_map(path)
    n, block = int(tokens.shape[0]), cfg["block_size"]
    split = n - _val_size(n, cfg["val_fraction"])
    val_len = _val_used(cfg, n - split)
    train = tokens[:split]
    per_epoch = cfg["tokens_per_epoch"] or split
    x_train = Windows(train, block, per_epoch // block)
    n_val = (val_len - 1) // block
    val = torch.from_numpy(tokens[split : split + n_val * block + 1].astype(np.int64))
    x_val, y_val = val[:-1].view(n_val, block), val[1:].view(n_val, block)
    source = (_source_loss(path, val, split, block), hmm.ENTROPY_RATE) if bundled else ()
    y_train = Windows(train, block, x_train.count, shift=1)
    return TextData(x_train, y_train, x_val, y_val, VOCAB, content, *source)


def _source_loss(path: Path, val: torch.Tensor, split: int, block: int) -> float:
    """The bundled source's optimal loss on the validation windows, read from
    `<stream>.json` beside the stream when it was computed before for these windows."""
    side = path.with_suffix(".json")
    known = files.read_json(side) or {}
    key = f"block{block}-at{split}-len{val.shape[0]}"
    if key in known:
        return float(known[key])
    n_val = (val.shape[0] - 1) // block
    offsets = split + np.arange(n_val) * block
    windows = val[: n_val * block + 1].unfold(0, block + 1, block).numpy()
    optimal = hmm.optimal_loss(hmm.bundled(), windows, offsets)
    try:
        files.write_json_atomic(side, {**known, key: optimal}, fsync=False)
    except OSError as err:  # a read-only cache: computed again next time
        log.warning("the bundled source's optimal loss not cached (%s)", err)
    return optimal
