"""data=dataset: any torch `Dataset` given by `_target_`, streamed through a DataLoader.

The in-memory tensor path (runner/data/sets.py) stays the fast path: a data set that fits
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

Nothing here imports runner/data/sets.py (which dispatches to this module): materialised
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
from torch.utils.data import DataLoader, Dataset, Sampler, Subset, default_collate, get_worker_info

from runner.config.schema import SCHEMAS, check_node
from runner.data.digits import stratified_split
from runner.data.labels import check_labels, sample_label_problem, warn_one_class
from runner.data.paths import as_absolute, path_values
from runner.dist.workers import in_loky_worker, worker_init
from runner.io.rngs import numpy_state, same_numpy_state
from schedulers import ConfigError, binder

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


class SampleError(RuntimeError):
    """A sample that cannot be fetched, or is not the (x, label) the run needs, named as
    `<split>[<index>]` (and its file, where the dataset says). Start-up turns it into a
    ConfigError (`config_error`); mid-run it ends the run as any other error, named.

    Built with one string as well: torch's DataLoader re-raises a worker's error as its type
    called with the worker's report (a header, the traceback, then our line)."""

    def __init__(self, key: str, rule: str | None = None) -> None:
        if rule is None:  # the worker's report: our line is the last one naming us
            marker = f"{type(self).__name__}: "
            lines = [line for line in key.splitlines() if marker in line]
            line = lines[-1].split(marker, 1)[1] if lines else key
            key, _, rule = line.partition(": ")
        self.key, self.rule = key, rule
        super().__init__(f"{key}: {rule}")

    def config_error(self) -> ConfigError:
        return ConfigError(self.key, None, self.rule)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:300]}" if text else type(err).__name__


def _file_of(dataset: Any, index: int) -> str | None:
    """The file a sample is read from, where the dataset says (ImageFolder's `samples`,
    through a Subset), for an error to name it."""
    while isinstance(dataset, Subset):
        dataset, index = dataset.dataset, int(dataset.indices[index])
    samples = getattr(dataset, "samples", None)
    try:
        path = samples[index][0] if isinstance(samples, Sequence) else None
    except (IndexError, TypeError, KeyError):
        return None
    return str(path) if isinstance(path, str | Path) else None


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

    def __init__(
        self, dataset: Any, seed: int, where: str = "data", expect: tuple | None = None
    ) -> None:
        """`where`: the split, for errors; `expect`: (sample shape, num_classes) that every
        (x, label) sample is checked against (for default_collate, which stacks them)."""
        self.dataset, self.seed, self.where, self.expect = dataset, seed, where, expect
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
            try:
                sample = dataset[index]
            except Exception as err:  # a truncated image, the user's own bug
                raise self._error(index, f"could not be read: {_one_line(err)}") from err
            if self.expect is not None:
                self._check(index, sample)
            samples.append(sample)
        return samples

    def _check(self, index: int, sample: Any) -> None:
        """An (x, label) sample of the expected shape, with an integer class label."""
        if not isinstance(sample, tuple | list) or len(sample) != 2:
            return  # not a pair: collation says what it makes of it
        (shape, num_classes), (x, y) = self.expect, sample
        if torch.is_tensor(x) and x.shape != shape:
            raise self._error(
                index,
                f"shape {tuple(x.shape)}, data.train[0]'s is {shape}: samples must have "
                "one shape to be batched (resize them in the transform, or give data.collate_fn)",
            )
        if type(y) is int and 0 <= y < num_classes:
            return  # the common case, without a call
        if _tokens(x, y):  # next-token targets: each one a class index
            if len(y) and not (int(y.min()) >= 0 and int(y.max()) < num_classes):
                raise self._error(index, f"target outside [0, {num_classes}) (data.num_classes)")
            return
        problem = sample_label_problem(y, num_classes)
        if problem is not None:
            raise self._error(index, problem)

    def _error(self, index: int, what: str) -> SampleError:
        path = _file_of(self.dataset, index)
        return SampleError(f"{self.where}[{index}]", f"{path}: {what}" if path else what)


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
        self,
        data: StreamData,
        batch_size: int,
        seed: int,
        device: torch.device,
        share: tuple[int, int] = (0, 1),
    ) -> None:
        """`share`: (rank, world) under DDP, each rank then loads only its share of each
        training batch; every rank validates on the whole val split (as in memory)."""
        opts = data.loader
        self.device = device
        pin = opts["pin_memory"]
        self.pin = device.type == "cuda" if pin == "auto" else bool(pin)
        self.n_val = len(data.val)
        self.train_batches = EpochBatches(len(data.train), batch_size, *share)
        self.val_batches = EpochBatches(self.n_val, val_batch_size(batch_size))
        self.train_loader = _loader(
            data.train, self.train_batches, seed, data, self.pin, "data.train"
        )
        self.val_loader = _loader(data.val, self.val_batches, seed, data, self.pin, "data.val")

    def train(self, epoch: int, shuffle: torch.Generator) -> Iterator[tuple[Any, Any, int]]:
        """The epoch's batches on the device, in the order drawn from `shuffle` (the same
        draw as the in-memory `batches()`), as (x, y, n): this rank's share and the size
        of the global batch it is a share of (DDP scales its loss by the two)."""
        order = torch.randperm(self.train_batches.n, generator=shuffle)
        self.train_batches.set_epoch(epoch, order)
        sizes = self.train_batches.global_sizes()
        return ((x, y, n) for (x, y), n in zip(self._moved(self.train_loader), sizes, strict=True))

    def train_in_order(self, epoch: int) -> Iterator[tuple[Any, Any]]:
        """The train split in order (no draw from any generator), samples seeded as in
        `epoch`: what the averaged model's BatchNorm statistics are computed over
        (runner/train/averaging.py)."""
        self.train_batches.set_epoch(epoch)
        return self._moved(self.train_loader)

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


def _loader(
    dataset: Any, batches: EpochBatches, seed: int, data: StreamData, pin: bool, where: str
) -> DataLoader:
    """`where` names the split in a sample's error; with default_collate every sample is
    checked (shape, label) as it is fetched, at a few us a sample."""
    opts = data.loader
    expect = None if data.collate_fn is not None else (data.image_shape, data.num_classes)
    workers = opts["num_workers"]
    extra: dict[str, Any] = {}
    if workers > 0:
        extra["persistent_workers"] = opts["persistent_workers"]
        if opts["prefetch_factor"] is not None:
            extra["prefetch_factor"] = opts["prefetch_factor"]
        if in_loky_worker():  # hydra/launcher=joblib: loky's default context fails (hydra#964)
            extra["multiprocessing_context"] = "fork"
        # dies with the run: an orphan would hold the data pipes (torch checks every 5 s)
        extra["worker_init_fn"] = worker_init(extra.get("multiprocessing_context"))
    return DataLoader(
        SeededSamples(dataset, seed, where, expect),
        batch_sampler=batches,
        num_workers=workers,
        pin_memory=pin,
        collate_fn=data.collate_fn,
        # worker seeds from a generator of its own: none drawn from torch's global RNG
        generator=torch.Generator().manual_seed(seed),
        **extra,
    )


def loaders_for(
    data: Any,
    batch_size: int,
    seed: int,
    device: torch.device,
    share: tuple[int, int] = (0, 1),
    dataset: bool = False,
) -> Loaders | None:
    """A run's Loaders when its data is streamed, else None (in-memory tensors). `dataset`:
    the run's data is data=dataset, whose in_memory decision is logged into the run's log
    either way (`load` logged it before the run's log was open; another data's run logs
    none, though a data=dataset run before it in this process left its decision here)."""
    if dataset and last_choice:
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
        if not isinstance(node, Mapping) or not binder.is_target(node):
            raise ConfigError(
                f"data.{split}",
                node,
                "must be a node with _target_ (a Dataset class) and its "
                "arguments, e.g. {_target_: torchvision.datasets.ImageFolder, root: data/train}",
            )
        _check_target(f"data.{split}", node)
        root = node.get("root")
        if isinstance(root, str) and not Path(root).exists():
            raise ConfigError(f"data.{split}.root", root, f"not found: {Path(root).resolve()}")
    if cfg["collate_fn"] is not None:
        node = cfg["collate_fn"]
        if not isinstance(node, Mapping) or not binder.is_target(node):
            raise ConfigError("data.collate_fn", node, "must be null or a node with _target_")
        _check_target("data.collate_fn", node, collate=True)
    if cfg["num_workers"] == 0:
        for key in ("prefetch_factor", "persistent_workers"):
            if cfg[key] not in (None, False):
                raise ConfigError(f"data.{key}", cfg[key], "needs data.num_workers > 0")
    check_splits(cfg)


def check_splits(cfg: Mapping[str, Any]) -> None:
    """The user's data, never mixed with the demo's: data.train and data.val both given, or
    data.train with data.val_fraction (a seeded split of it), or neither (the FakeData
    demo). data.train alone used to validate on FakeData: random noise, a meaningless
    val/acc with exit 0."""
    train, val, fraction = cfg["train"], cfg["val"], cfg.get("val_fraction")
    if fraction is not None:
        if val is not None:
            raise ConfigError(
                "data.val_fraction",
                fraction,
                "splits data.train for validation, so data.val must be null (it is given)",
            )
        if train is None:
            raise ConfigError(
                "data.val_fraction",
                fraction,
                "needs data.train to split (null is the FakeData demo)",
            )
        return
    if train is not None and val is None:
        raise ConfigError(
            "data.val",
            None,
            "must be given with data.train (a _target_ node like data.train's; "
            "null is the FakeData demo's random noise), or set data.val_fraction to validate "
            "on a seeded split of data.train",
        )
    if val is not None and train is None:
        raise ConfigError(
            "data.train",
            None,
            "must be given with data.val (null is the FakeData demo's random noise)",
        )
    if train is not None and val is not None and _same_files(train, val):
        raise ConfigError(
            "data.val.root" if "root" in val else "data.val",
            val.get("root"),
            "is data.train's dataset again (the same files and arguments, transforms aside): "
            "val/acc would score the training samples; give data.val files of its own, or "
            "data.val: null and data.val_fraction: 0.1 to hold out a share of data.train",
        )


# the keys of a split's node that change how its samples look, not which samples they are
_TRANSFORMS = ("transform", "target_transform", "transforms")


def _same_files(train: Mapping[str, Any], val: Mapping[str, Any]) -> bool:
    """Both splits the same dataset over the same files: equal nodes but for their
    transforms, naming at least one path (relative or not). A copied `root:` line validates
    on the training samples with exit 0; a class that draws its samples (no path) may be
    given the same arguments for both splits and still differ."""

    def parts(node: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        kept = {k: v for k, v in node.items() if k not in _TRANSFORMS}
        paths = {k: as_absolute(v, a) or v for k, v, a in path_values(kept, "")}
        return paths, {k: v for k, v in kept.items() if f".{k}" not in paths}

    (train_paths, train_rest), (val_paths, val_rest) = parts(train), parts(val)
    return bool(train_paths) and train_paths == val_paths and train_rest == val_rest


def _check_target(where: str, node: Mapping[str, Any], collate: bool = False) -> None:
    """`node` and every `_target_` node inside it (a transform pipeline) importable, with
    kwargs its target takes; a collate function is called with the batch first."""
    target = binder.locate(where, node)
    kwargs = binder.kwargs_of(node)
    batch_first = collate and not inspect.isclass(target)
    binder.need_call(where, target, kwargs, leading=1 if batch_first else 0)
    torchvision = getattr(target, "__module__", "").startswith("torchvision.")
    for key, value in kwargs.items():
        if torchvision:
            _check_yaml_value(f"{where}.{key}", key, value)
        _check_nested(f"{where}.{key}", value)


def _check_yaml_value(where: str, key: str, value: Any) -> None:
    """Two things a torchvision class's kwargs cannot be as YAML writes them, which failed
    only when a sample was fetched (a list of transforms: "imgs/train/cat/0.png: could not
    be read: TypeError: 'list' object is not callable") or named only the dataset ("dtype
    must be a dict or a torch.dtype, got str"). A class of one's own may take either."""
    if key in ("transform", "target_transform") and isinstance(value, list | tuple):
        raise ConfigError(
            where,
            None,
            "is a list; a dataset takes one transform: "
            "{_target_: torchvision.transforms.v2.Compose, transforms: [...]}",
        )
    if key == "dtype" and isinstance(value, str) and value.startswith("torch."):
        raise ConfigError(
            where,
            value,
            f"a string, not a dtype: dtype: {{_target_: hydra.utils.get_object, path: {value}}}",
        )


def _check_nested(where: str, value: Any) -> None:
    if isinstance(value, Mapping):
        if binder.is_target(value):
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
    check_splits(cfg)
    nodes = DEMO if cfg["train"] is None else cfg  # data.val null here: data.val_fraction
    with isolated_rng(0):
        train, val = (None if nodes[s] is None else _build(f"data.{s}", nodes[s]) for s in SPLITS)
    num_classes = _num_classes(cfg, train)
    if val is not None:
        _check_class_names(train, val, nodes["val"])
    if val is None:  # data.val_fraction of data.train
        train, val = _split(train, cfg["val_fraction"], cfg["split_seed"])
    collate = _collate(cfg["collate_fn"])
    shape = _probe_shape(train, collate, "data.train", num_classes)
    val_shape = _probe_shape(val, collate, "data.val", num_classes)
    if val_shape != shape and collate is None:  # the model takes one shape
        raise ConfigError(
            "data.val[0]",
            None,
            f"shape {val_shape}, data.train[0]'s is {shape}: "
            "give both splits transforms that make one shape",
        )
    data = StreamData(
        train,
        val,
        num_classes,
        shape,
        {k: cfg[k] for k in ("num_workers", "pin_memory", "persistent_workers", "prefetch_factor")},
        collate,
    )
    materialise, why = _choose(cfg["in_memory"], data)
    last_choice = f"data.in_memory={cfg['in_memory']}: {why}"
    log.info(last_choice)
    if not materialise:
        targets_ = _targets(train)
        if targets_ is not None:
            warn_one_class(targets_)
        return data
    # data.py checks and warns about the labels of whatever it holds in memory
    return (
        *_materialise(data, train, "data.train"),
        *_materialise(data, val, "data.val"),
        data.num_classes,
    )


def _check_class_names(train: Any, val: Any, node: Mapping[str, Any]) -> None:
    """Each class data.val names has data.train's index for it. ImageFolder numbers the
    class folders it finds, sorted: a val folder without one of train's classes ("dog" of
    cat, dog, eel) gives the classes after it other indices (eel: 1, train's dog), and
    val/acc scored them against the wrong labels with exit 0."""
    names, val_names = _class_index(train), _class_index(val)
    if names is None or val_names is None or names == val_names:
        return
    for name, i in val_names.items():
        if names.get(name) == i:
            continue
        where = f"is {names[name]} in data.train" if name in names else "is not in data.train"
        raise ConfigError(
            "data.val.root" if "root" in node else "data.val",
            node.get("root"),
            f"class {name!r} is {i} here and {where} (classes {list(val_names)} against "
            f"{list(names)}): val's labels would name other classes; give data.val train's "
            "class folders (ImageFolder numbers those it finds, sorted; an empty one needs "
            "+data.val.allow_empty=true)",
        )


def _class_index(dataset: Any) -> dict[str, int] | None:
    """A dataset's class names and their label indices (`class_to_idx`, else the order of
    `classes`: torchvision's), or None when it names none."""
    mapping = getattr(dataset, "class_to_idx", None)
    if isinstance(mapping, Mapping) and all(isinstance(k, str) for k in mapping):
        return dict(mapping)
    classes = getattr(dataset, "classes", None)
    if isinstance(classes, list | tuple) and all(isinstance(c, str) for c in classes):
        return {c: i for i, c in enumerate(classes)}
    return None


def _targets(dataset: Any) -> torch.Tensor | None:
    """The labels a dataset lists without fetching a sample (torchvision's `targets`,
    through a Subset), or None."""
    indices = None
    if isinstance(dataset, Subset):
        dataset, indices = dataset.dataset, list(dataset.indices)
    found = getattr(dataset, "targets", None)
    try:
        labels = torch.as_tensor(found) if found is not None else None
    except (TypeError, ValueError, RuntimeError):
        return None
    if labels is None or labels.dim() != 1 or len(labels) != len(dataset):
        return None
    if labels.is_floating_point():
        return None
    return labels if indices is None else labels[indices]


def _split(dataset: Any, fraction: float, seed: int) -> tuple[Subset, Subset]:
    """(train, val) Subsets of `dataset`: `fraction` of it for validation, drawn with
    `seed`; stratified by class where the dataset lists its labels (`targets`), as
    data=digits splits. The val samples go through data.train's transforms (seeded, the
    same in every epoch): give data.val for a val set with transforms of its own."""
    n = len(dataset)
    labels = _targets(dataset)
    if labels is not None and len(torch.unique(labels)) > 1:
        idx_train, idx_val = stratified_split(labels.numpy(), fraction, seed)
    else:
        order = np.random.RandomState(seed).permutation(n)
        n_val = math.ceil(fraction * n)
        idx_train, idx_val = order[n_val:], order[:n_val]
    if len(idx_train) == 0 or len(idx_val) == 0:
        raise ConfigError(
            "data.val_fraction",
            fraction,
            f"leaves {len(idx_train)} of {n} samples for training and {len(idx_val)} for "
            "validation: both splits need samples",
        )
    return Subset(dataset, idx_train.tolist()), Subset(dataset, idx_val.tolist())


def _build(where: str, node: Mapping[str, Any]) -> Any:
    """The dataset; a constructor's error names the key it is about (`root` for a missing
    file), else the node's `_target_`."""
    try:
        dataset = binder.instantiate(node)
    except ConfigError:
        raise
    except Exception as err:  # whatever the user's constructor raises
        cause = err.__cause__ if type(err).__name__ == "InstantiationException" else err
        text = str(cause or err)
        kwargs = binder.kwargs_of(node)
        if isinstance(cause, FileNotFoundError) and "root" in kwargs:
            key = f"{where}.root"
        else:
            key = binder.key_named_in(where, text, kwargs)
        value = node.get(key.rsplit(".", 1)[1], node.get("_target_"))
        raise ConfigError(key, value, f"{binder.label(node)} failed: {text}") from None
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
    if inspect.isclass(binder.locate("data.collate_fn", node)):
        return binder.instantiate(node)
    return binder.partial_of(node)


def _batch_of(dataset: Any, collate: Callable | None, epoch: int, seed: int = 0) -> Any:
    """Sample 0 alone, collated as the loader collates it."""
    sample = SeededSamples(dataset, seed)[(epoch, 0)]
    return (collate or default_collate)([sample])


def _probe_shape(
    dataset: Any, collate: Callable | None, where: str, num_classes: int
) -> tuple[int, ...]:
    """One sample's shape; samples must collate into (float tensor, label tensor). Sample
    0's label is checked here; every other one as it is fetched (SeededSamples)."""
    how = (
        f"{where}'s samples must collate into (float tensor, integer label) pairs, e.g. with "
        "transforms v2.ToImage and v2.ToDtype(torch.float32, scale=True)"
    )
    try:
        sample = SeededSamples(dataset, 0, where)[(MATERIALISE_EPOCH, 0)]
    except SampleError as err:  # __getitem__ raised: the dataset's error, not collation's
        raise err.config_error() from None
    pair = isinstance(sample, tuple | list) and len(sample) == 2
    if collate is None and not pair:  # the loop unpacks each batch as (inputs, labels)
        raise ConfigError(f"{where}[0]", None, f"{_sample_kind(sample)}; {PAIRS}")
    if collate is None and pair and not _tokens(*sample):
        problem = sample_label_problem(sample[1], num_classes)
        if problem is not None:
            raise ConfigError(f"{where}[0]", None, problem)
    try:
        x, y = (collate or default_collate)([sample])
    except Exception as err:  # PIL images, dicts, a transform that fails on the sample
        raise ConfigError(f"{where}.transform", None, f"{how}: {err}") from None
    tokens = _tokens(x, y)
    if not (torch.is_tensor(x) and (x.is_floating_point() or tokens)):
        got = type(x).__name__ if not torch.is_tensor(x) else f"a {x.dtype} tensor"
        raise ConfigError(f"{where}.transform", None, f"{how}; got {got}")
    check_labels(where, y, num_classes, tokens=tokens)
    return tuple(x.shape[1:])


PAIRS = (
    "the runner takes (input, label) pairs: return those two from __getitem__, or give "
    "data.collate_fn (a _target_ function from a list of samples to (inputs, labels))"
)


def _sample_kind(sample: Any) -> str:
    """What a sample that is no (input, label) pair is, in words: (x, y, index) or a dict
    of fields got "too many values to unpack" or "got str" and a hint about transforms."""
    if isinstance(sample, Mapping):
        return f"a sample is a dict with keys {list(sample)[:6]}"
    if isinstance(sample, tuple | list):
        return f"a sample is a {type(sample).__name__} of {len(sample)} values"
    return f"a sample is a {type(sample).__name__} alone, no label"


def _tokens(x: Any, y: Any) -> bool:
    """A language model's sample (or batch): integer token ids x and next-token targets y
    of the same shape ([T], collated [N, T]); y's values are checked as labels are."""
    return (
        torch.is_tensor(x)
        and torch.is_tensor(y)
        and not x.is_floating_point()
        and x.dim() in (1, 2)
        and x.shape == y.shape
    )


def _num_classes(cfg: Mapping[str, Any], train: Any) -> int:
    if cfg["num_classes"] is not None:
        return int(cfg["num_classes"])
    classes = getattr(train, "classes", None)
    if classes is not None:
        return len(classes)
    if isinstance(getattr(train, "num_classes", None), int):
        return int(train.num_classes)
    raise ConfigError(
        "data.num_classes",
        None,
        f"{type(train).__name__} has no `classes` (or `num_classes`) to infer it from; set "
        "data.num_classes",
    )


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


def _materialise(data: StreamData, dataset: Any, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Every sample once (through the configured workers), as tensors; every label
    checked (SeededSamples checks each sample's, a collate_fn's batches are checked here)."""
    order = EpochBatches(len(dataset), 256)
    order.set_epoch(MATERIALISE_EPOCH)
    loader = _loader(dataset, order, 0, data, False, where)
    xs, ys, done = [], [], 0
    try:
        for x, y in loader:
            check_labels(where, y, data.num_classes, offset=done, tokens=_tokens(x, y))
            xs.append(x)
            ys.append(y)
            done += len(y)
    except SampleError as err:
        raise err.config_error() from None
    try:
        return torch.cat(xs), torch.cat(ys).long()
    except RuntimeError as err:  # a collate_fn's batches of different sample shapes
        raise ConfigError(
            f"{where}.collate_fn", None, f"batches do not concatenate: {err}"
        ) from None


def sample_batch(data: StreamData, n: int) -> torch.Tensor:
    """The inputs of the first `n` training samples, fetched as materialising fetches them
    (seeded, the global RNGs restored) and collated as the loader collates them: start-up
    runs the model on them (runner/train/model_check.py)."""
    samples = SeededSamples(data.train, 0, "data.train", (data.image_shape, data.num_classes))
    keys = [(MATERIALISE_EPOCH, i) for i in range(min(n, len(data.train)))]
    try:
        with preserved_rng():
            return (data.collate_fn or default_collate)(samples.__getitems__(keys))[0]
    except SampleError as err:
        raise err.config_error() from None
