"""data=dataset: any torch `Dataset` given by `_target_`, streamed through a DataLoader.

The in-memory tensor path (runner/core/data.py) stays the fast path: a data set that fits
and has no random transform is materialised once into tensors (`data.in_memory`), and then
nothing here runs per batch. Otherwise each split gets one DataLoader for the whole run.

What makes a streamed run reproducible, whatever `num_workers`:
- the epoch's order is `torch.randperm(n, generator=shuffle)`, the run's data-order
  generator that the in-memory `batches()` draws from too and every checkpoint saves, so a
  resumed run continues at its epoch boundary with the same orders, and a materialised
  set gives the same batches as the streamed one;
- every sample is fetched with the global RNGs (torch CPU, `random`, numpy) seeded from
  (seed, epoch, index), in whichever process fetches it, so a random transform draws the
  same crop for that sample in that epoch with 0 or 8 workers. The batch sampler yields
  (epoch, index) pairs, so the epoch reaches the workers with each index (persistent
  workers hold their own copy of the dataset, which an attribute set later would miss);
- in the main process (num_workers=0) the global RNGs are restored after each batch, so
  the model's own randomness (dropout) is untouched, and the DataLoader draws its worker
  seeds from a generator of its own, not from torch's global one.

Nothing here imports runner/core/data.py (which dispatches to this module): materialised
splits are returned as tensors for data.py to wrap.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from runner.core import targets
from runner.core.rngs import numpy_state, same_numpy_state
from runner.core.schema import SCHEMAS, check_node
from schedulers import ConfigError
from schedulers.checks import need_call

log = logging.getLogger("schedlab")
SPLITS = ("train", "val")
VAL_EPOCH = -1  # the epoch validation samples are seeded with: the same in every epoch
MATERIALISE_EPOCH = -2  # ... and materialised samples (in_memory), which have no run seed
MEMORY_FRACTION = 0.25  # in_memory=auto materialises what fits in this share of free memory
_PROBES = 4  # fetches of sample 0 under different seeds: all equal = no random transform
_MASK = (1 << 64) - 1
_TO_FLOAT = {
    "_target_": "torchvision.transforms.v2.Compose",
    "transforms": [
        {"_target_": "torchvision.transforms.v2.ToImage"},
        {
            "_target_": "torchvision.transforms.v2.ToDtype",
            "dtype": {"_target_": "hydra.utils.get_object", "path": "torch.float32"},
            "scale": True,
        },
    ],
}
_FAKE = {"_target_": "torchvision.datasets.FakeData", "image_size": [3, 32, 32], "num_classes": 10}
# data.train/val null: torchvision's FakeData (random images made per index, nothing on disk),
# so that `data=dataset` runs as it is; a node given replaces null whole (a default node would
# be merged with it, key by key)
DEMO = {
    "train": {**_FAKE, "size": 256, "transform": _TO_FLOAT},
    "val": {**_FAKE, "size": 64, "random_offset": 256, "transform": _TO_FLOAT},
}
last_choice = ""  # the in_memory decision of the data set load_data holds (see `announce`)


# -- seeding ------------------------------------------------------------------------------------
def _splitmix(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 64-bit seed for one sample in one epoch: splitmix64 chained over the three, so
    neighbouring samples and epochs get unrelated streams."""
    return _splitmix(epoch_seed(seed, epoch) ^ index)


def epoch_seed(seed: int, epoch: int) -> int:
    """sample_seed's part shared by the samples of an epoch (a batch computes it once)."""
    return _splitmix(_splitmix(seed) ^ (epoch & _MASK))


def _seed_globals(seed: int) -> None:
    # the CPU generator only: torch.manual_seed would also reseed every CUDA device
    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)  # numpy takes 32 bits


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """The global RNGs (torch CPU, random, numpy) as they were before, whatever draws or
    seeds them inside: loading and fetching samples in the main process leave training's
    RNG alone. Saving and restoring costs ~150 us (Python's state, and numpy's when it
    moved, are copied word by word), so a batch is fetched inside one of these, not each
    sample."""
    saved = torch.default_generator.get_state(), random.getstate(), numpy_state()
    try:
        yield
    finally:
        torch.default_generator.set_state(saved[0])
        random.setstate(saved[1])
        np.random.set_state(saved[2])


@contextlib.contextmanager
def isolated_rng(seed: int) -> Iterator[None]:
    """The global RNGs seeded with `seed` inside, as they were after (preserved_rng)."""
    with preserved_rng():
        _seed_globals(seed)
        yield


class SeededSamples(Dataset):
    """The user's dataset, indexed by (epoch, index): each sample fetched as if the global
    RNGs (torch CPU, random, numpy) were seeded from (seed, epoch, index), so its random
    transforms do not depend on which worker (or the main process) fetches it, nor on what
    was fetched before.

    Seeding all three costs ~25 us a sample, a tenth of a crop + flip. torchvision's
    transforms draw from torch's generator alone, so at first only it is seeded per sample,
    and Python's and numpy's are watched: seeding a generator that no sample of the batch
    drew from would have changed nothing. A batch that did draw from either is fetched
    again with all three seeded per sample, and so is every later batch (`every_rng`, per
    process). The samples are the same either way."""

    def __init__(self, dataset: Any, seed: int) -> None:
        self.dataset, self.seed = dataset, seed
        self.every_rng = False  # the dataset draws from random or numpy: seed all three

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list[tuple[int, int]]) -> list[Any]:
        """A batch's samples (the DataLoader asks for a batch at once). In the main process
        the RNGs training uses are as they were after it (a worker's RNGs are its own)."""
        restore = get_worker_info() is None
        if not self.every_rng:
            samples = self._torch_seeded(keys, restore)
            if samples is not None:
                return samples
        if not restore:
            return self._fetch(keys, every_rng=True)
        with preserved_rng():
            return self._fetch(keys, every_rng=True)

    def _torch_seeded(self, keys: list[tuple[int, int]], restore: bool) -> list[Any] | None:
        """The batch with torch's generator alone seeded per sample; None (and `every_rng`
        set, Python's and numpy's generators put back) when a sample drew from either."""
        torch_state = torch.default_generator.get_state() if restore else None
        py_state, np_state = random.getstate(), numpy_state()
        try:
            samples = self._fetch(keys, every_rng=False)
        finally:
            if torch_state is not None:
                torch.default_generator.set_state(torch_state)
        if random.getstate() == py_state and same_numpy_state(numpy_state(), np_state):
            return samples
        self.every_rng = True
        random.setstate(py_state)
        np.random.set_state(np_state)
        return None

    def _fetch(self, keys: list[tuple[int, int]], every_rng: bool) -> list[Any]:
        seed_rngs = _seed_globals if every_rng else torch.default_generator.manual_seed
        samples, dataset, shared = [], self.dataset, {}  # shared: epoch -> epoch_seed
        for epoch, index in keys:  # = seed_rngs(sample_seed(self.seed, epoch, index))
            if (prefix := shared.get(epoch)) is None:
                prefix = shared[epoch] = epoch_seed(self.seed, epoch)
            seed_rngs(_splitmix(prefix ^ index))
            samples.append(dataset[index])
        return samples


class EpochBatches(Sampler[list[tuple[int, int]]]):
    """A batch sampler over the order set for the epoch (in order when none), yielding
    (epoch, index) pairs; the last, smaller batch is kept, as `batches()` keeps it. Under
    DDP (`rank` of `world`) it yields only this rank's share of each global batch, every
    world-th sample from the rank-th (the in-memory path's slice), so a rank fetches and
    transforms only the samples it trains on."""

    def __init__(self, n: int, batch_size: int, rank: int = 0, world: int = 1) -> None:
        self.n, self.batch_size, self.rank, self.world = n, batch_size, rank, world
        self.epoch, self.order = VAL_EPOCH, list(range(n))

    def set_epoch(self, epoch: int, order: torch.Tensor | None = None) -> None:
        """Before the epoch's iterator is made: the DataLoader reads the sampler then."""
        self.epoch = epoch
        self.order = list(range(self.n)) if order is None else order.tolist()

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, order, size = self.epoch, self.order, self.batch_size
        rank, world = self.rank, self.world
        for start in range(0, self.n, size):
            yield [(epoch, i) for i in order[start : start + size][rank::world]]

    def global_sizes(self) -> Iterator[int]:
        """How many samples each global batch has (all ranks' shares together)."""
        for start in range(0, self.n, self.batch_size):
            yield min(self.batch_size, self.n - start)


# -- the loaded data set ------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class StreamData:
    """Both splits as datasets, with the sizes the rest of the runner reads from any data
    (a TensorData says the same): `image_shape`, `num_classes`, `n_train`. Its samples are
    only ever fetched through the Loaders below."""

    train: Any
    val: Any
    num_classes: int
    image_shape: tuple[int, ...]
    loader: dict[str, Any]  # num_workers, pin_memory, persistent_workers, prefetch_factor
    collate_fn: Callable[[list[Any]], Any] | None = None

    @property
    def n_train(self) -> int:
        return len(self.train)

    def to(self, device: Any) -> StreamData:
        return self  # batches are moved one at a time


def is_streamed(data: Any) -> bool:
    return isinstance(data, StreamData)


def val_batch_size(batch_size: int) -> int:
    """Validation batches as the in-memory path makes them (so both give the same sums)."""
    return max(batch_size, 1024)


class Loaders:
    """The run's two DataLoaders, built once (persistent workers live across epochs); each
    epoch's order is set on the train batch sampler before its iterator is made."""

    def __init__(
        self, data: StreamData, batch_size: int, seed: int, device: torch.device,
        share: tuple[int, int] = (0, 1),
    ) -> None:  # fmt: skip
        """`share`: (rank, world) under DDP, each rank then loads only its share of each
        training batch; every rank validates on the whole val split (as in memory)."""
        opts = data.loader
        self.device = device
        pin = opts["pin_memory"]
        self.pin = device.type == "cuda" if pin == "auto" else bool(pin)
        self.n_val = len(data.val)
        self.train_batches = EpochBatches(len(data.train), batch_size, *share)
        self.val_batches = EpochBatches(self.n_val, val_batch_size(batch_size))
        self.train_loader = _loader(data.train, self.train_batches, seed, data, self.pin)
        self.val_loader = _loader(data.val, self.val_batches, seed, data, self.pin)

    def train(self, epoch: int, shuffle: torch.Generator) -> Iterator[tuple[Any, Any, int]]:
        """The epoch's batches on the device, in the order drawn from `shuffle` (the same
        draw as the in-memory `batches()`), as (x, y, n): this rank's share and the size
        of the global batch it is a share of (DDP scales its loss by the two)."""
        order = torch.randperm(self.train_batches.n, generator=shuffle)
        self.train_batches.set_epoch(epoch, order)
        sizes = self.train_batches.global_sizes()
        return ((x, y, n) for (x, y), n in zip(self._moved(self.train_loader), sizes, strict=True))

    def val(self) -> Iterator[tuple[Any, Any]]:
        """The val split in order, every sample seeded as in every other epoch."""
        self.val_batches.set_epoch(VAL_EPOCH)
        return self._moved(self.val_loader)

    def _moved(self, loader: DataLoader) -> Iterator[tuple[Any, Any]]:
        for x, y in loader:
            yield (
                x.to(self.device, non_blocking=self.pin),
                y.to(self.device, non_blocking=self.pin),
            )

    @torch.no_grad()
    def evaluate(
        self, model: torch.nn.Module, amp_ctx: Any, prepare: Callable[[Any], Any] = lambda x: x
    ) -> tuple[float, float]:
        """Mean loss and accuracy over the val split: runner/core/steps.py `evaluate`'s
        sums, over streamed batches."""
        model.eval()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device)
        for x, y in self.val():
            with amp_ctx:
                logits = model(prepare(x))
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
        return loss_sum.item() / self.n_val, correct.item() / self.n_val


def _loader(
    dataset: Any, batches: EpochBatches, seed: int, data: StreamData, pin: bool
) -> DataLoader:
    opts = data.loader
    workers = opts["num_workers"]
    extra: dict[str, Any] = {}
    if workers > 0:
        extra["persistent_workers"] = opts["persistent_workers"]
        if opts["prefetch_factor"] is not None:
            extra["prefetch_factor"] = opts["prefetch_factor"]
        from runner.core.resolvers import in_loky_worker

        if in_loky_worker():  # hydra/launcher=joblib: loky's default context fails (hydra#964)
            extra["multiprocessing_context"] = "fork"
    return DataLoader(
        SeededSamples(dataset, seed),
        batch_sampler=batches,
        num_workers=workers,
        pin_memory=pin,
        collate_fn=data.collate_fn,
        # worker seeds from a generator of its own: none drawn from torch's global RNG
        generator=torch.Generator().manual_seed(seed),
        **extra,
    )


def loaders_for(
    data_cfg: Mapping[str, Any], data: Any, batch_size: int, seed: int, device: torch.device,
    share: tuple[int, int] = (0, 1),
) -> Loaders | None:  # fmt: skip
    """A run's Loaders when its data is streamed, else None (in-memory tensors); with
    data=dataset the in_memory decision is logged into the run's log either way."""
    if data_cfg.get("name") == "dataset" and last_choice:
        log.info(last_choice)
    return Loaders(data, batch_size, seed, device, share) if is_streamed(data) else None


# -- validation ---------------------------------------------------------------------------------
def validate(cfg: Mapping[str, Any]) -> None:
    """The keys by their schema, each `_target_` node (nested ones too) importable and its
    kwargs bound to its signature, a `root` that exists, loader options that go together.
    Building the datasets (data.py's load_data, called next by start-up validation) checks
    the rest: a constructor's own error, samples that are not tensors, num_classes."""
    check_node("data", cfg, SCHEMAS["data"]["dataset"])
    for split in SPLITS:
        node = DEMO[split] if cfg[split] is None else cfg[split]
        if not isinstance(node, Mapping) or not targets.is_target(node):
            raise ConfigError(
                f"data.{split}", node, "must be a node with _target_ (a Dataset class) and its "
                "arguments, e.g. {_target_: torchvision.datasets.ImageFolder, root: data/train}",
            )  # fmt: skip
        _check_target(f"data.{split}", node)
        root = node.get("root")
        if isinstance(root, str) and not Path(root).exists():
            raise ConfigError(f"data.{split}.root", root, f"not found: {Path(root).resolve()}")
    if cfg["collate_fn"] is not None:
        node = cfg["collate_fn"]
        if not isinstance(node, Mapping) or not targets.is_target(node):
            raise ConfigError("data.collate_fn", node, "must be null or a node with _target_")
        _check_target("data.collate_fn", node, collate=True)
    if cfg["num_workers"] == 0:
        for key in ("prefetch_factor", "persistent_workers"):
            if cfg[key] not in (None, False):
                raise ConfigError(f"data.{key}", cfg[key], "needs data.num_workers > 0")


def _check_target(where: str, node: Mapping[str, Any], collate: bool = False) -> None:
    """`node` and every `_target_` node inside it (a transform pipeline) importable, with
    kwargs its target takes; a collate function is called with the batch first."""
    target = targets.locate(where, node)
    kwargs = targets.kwargs_of(node)
    need_call(where, target, kwargs, leading=1 if collate and not inspect.isclass(target) else 0)
    for key, value in kwargs.items():
        _check_nested(f"{where}.{key}", value)


def _check_nested(where: str, value: Any) -> None:
    if isinstance(value, Mapping):
        if targets.is_target(value):
            _check_target(where, value)
        else:
            for key, item in value.items():
                _check_nested(f"{where}.{key}", item)
    elif isinstance(value, Sequence) and not isinstance(value, str):
        for i, item in enumerate(value):
            _check_nested(f"{where}.{i}", item)


# -- loading ------------------------------------------------------------------------------------
Tensors = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]


def load(cfg: Mapping[str, Any]) -> StreamData | Tensors:
    """Both datasets built, sample 0 probed (shape, dtype, randomness), then kept as
    datasets or materialised (data.in_memory). The constructors run with the global RNGs
    seeded (a user class that draws its data from them gets the same data in a resumed
    process) and restored after."""
    global last_choice
    with isolated_rng(0):
        train, val = (_build(f"data.{s}", DEMO[s] if cfg[s] is None else cfg[s]) for s in SPLITS)
    collate = _collate(cfg["collate_fn"])
    shape = _probe_shape(train, collate, "data.train")
    _probe_shape(val, collate, "data.val")
    data = StreamData(
        train, val, _num_classes(cfg, train), shape,
        {k: cfg[k] for k in ("num_workers", "pin_memory", "persistent_workers",
                             "prefetch_factor")},
        collate,
    )  # fmt: skip
    materialise, why = _choose(cfg["in_memory"], data)
    last_choice = f"data.in_memory={cfg['in_memory']}: {why}"
    log.info(last_choice)
    if not materialise:
        return data
    return (*_materialise(data, train), *_materialise(data, val), data.num_classes)


def _build(where: str, node: Mapping[str, Any]) -> Any:
    """The dataset; a constructor's error names the key it is about (`root` for a missing
    file), else the node's `_target_`."""
    try:
        dataset = targets.instantiate(node)
    except ConfigError:
        raise
    except Exception as err:  # whatever the user's constructor raises
        cause = err.__cause__ if type(err).__name__ == "InstantiationException" else err
        text = str(cause or err)
        kwargs = targets.kwargs_of(node)
        if isinstance(cause, FileNotFoundError) and "root" in kwargs:
            key = f"{where}.root"
        else:
            key = targets.key_named_in(where, text, kwargs)
        value = node.get(key.rsplit(".", 1)[1], node.get("_target_"))
        raise ConfigError(key, value, f"{targets.label(node)} failed: {text}") from None
    try:
        size = len(dataset) if hasattr(dataset, "__getitem__") else None
    except Exception:  # a __len__ that fails: as unusable as none
        size = None
    if size is None:
        raise ConfigError(f"{where}._target_", node["_target_"], "is not a map-style Dataset")
    if size == 0:
        raise ConfigError(f"{where}._target_", node["_target_"], "gave an empty dataset")
    return dataset


def _collate(node: Mapping[str, Any] | None) -> Callable[[list[Any]], Any] | None:
    """A collate function (its kwargs bound) or an instance of a collator class."""
    if node is None:
        return None
    if inspect.isclass(targets.locate("data.collate_fn", node)):
        return targets.instantiate(node)
    from hydra.utils import instantiate
    from omegaconf import DictConfig, OmegaConf

    plain = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    return instantiate({**dict(plain), "_partial_": True, "_convert_": "all"})


def _batch_of(dataset: Any, collate: Callable | None, epoch: int, seed: int = 0) -> Any:
    """Sample 0 alone, collated as the loader collates it."""
    from torch.utils.data import default_collate

    sample = SeededSamples(dataset, seed)[(epoch, 0)]
    return (collate or default_collate)([sample])


def _probe_shape(dataset: Any, collate: Callable | None, where: str) -> tuple[int, ...]:
    """One sample's shape; samples must collate into (float tensor, label tensor)."""
    how = (
        f"{where}'s samples must collate into (float tensor, integer label) pairs, e.g. with "
        "transforms v2.ToImage and v2.ToDtype(torch.float32, scale=True)"
    )
    try:
        x, y = _batch_of(dataset, collate, MATERIALISE_EPOCH)
    except Exception as err:  # PIL images, dicts, a transform that fails on the sample
        raise ConfigError(f"{where}.transform", None, f"{how}: {err}") from None
    if not (torch.is_tensor(x) and x.is_floating_point() and torch.is_tensor(y)):
        got = type(x).__name__ if not torch.is_tensor(x) else f"a {x.dtype} tensor"
        raise ConfigError(f"{where}.transform", None, f"{how}; got {got}")
    return tuple(x.shape[1:])


def _num_classes(cfg: Mapping[str, Any], train: Any) -> int:
    if cfg["num_classes"] is not None:
        return int(cfg["num_classes"])
    classes = getattr(train, "classes", None)
    if classes is not None:
        return len(classes)
    if isinstance(getattr(train, "num_classes", None), int):
        return int(train.num_classes)
    raise ConfigError(
        "data.num_classes", None,
        f"{type(train).__name__} has no `classes` (or `num_classes`) to infer it from; set "
        "data.num_classes",
    )  # fmt: skip


def _random(data: StreamData) -> bool:
    """Conservatively: sample 0 fetched under several seeds is not always the same."""
    first = _batch_of(data.train, data.collate_fn, 0, seed=0)[0]
    return any(
        not torch.equal(first, _batch_of(data.train, data.collate_fn, 0, seed=s)[0])
        for s in range(1, _PROBES)
    )


def free_memory() -> int | None:
    """MemAvailable from /proc/meminfo in bytes, None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _choose(setting: Any, data: StreamData) -> tuple[bool, str]:
    """Whether to materialise, and why (the log line)."""
    if setting is False:
        return False, "streamed"
    random_transforms = _random(data)
    if setting is True:
        if random_transforms:
            return True, (
                "materialised in memory; the train transforms are random, and are drawn "
                "once for all epochs"
            )
        return True, "materialised in memory"
    n = len(data.train) + len(data.val)
    nbytes = n * (math.prod(data.image_shape) * 4 + 8)  # float32 samples + int64 labels
    if random_transforms:
        return False, "streamed: the train transforms are random (each epoch draws anew)"
    free = free_memory()
    if free is None:
        return False, "streamed: free memory unknown (/proc/meminfo unreadable)"
    size = f"{nbytes / 2**20:.1f} MiB for {n} samples"
    share = f"{MEMORY_FRACTION:.0%} of {free / 2**30:.1f} GiB free"
    if nbytes > MEMORY_FRACTION * free:
        return False, f"streamed: {size} exceeds {share}"
    return True, f"materialised in memory: no random transforms, {size} fits in {share}"


def _materialise(data: StreamData, dataset: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Every sample once (through the configured workers), as tensors."""
    order = EpochBatches(len(dataset), 256)
    order.set_epoch(MATERIALISE_EPOCH)
    loader = _loader(dataset, order, 0, data, pin=False)
    xs, ys = zip(*loader, strict=True)
    return torch.cat(xs), torch.cat(ys).long()


def sample_batch(data: StreamData, n: int) -> torch.Tensor:
    """The inputs of the first `n` training samples, fetched as materialising fetches them
    (seeded, the global RNGs restored) and collated as the loader collates them: start-up
    runs the model on them (runner/core/model_check.py)."""
    from torch.utils.data import default_collate

    samples = SeededSamples(data.train, 0)
    with preserved_rng():
        batch = [samples[(MATERIALISE_EPOCH, i)] for i in range(min(n, len(data.train)))]
        return (data.collate_fn or default_collate)(batch)[0]
