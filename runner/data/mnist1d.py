"""MNIST-1D (Greydanus 2020): 40-sample 1-D signals of ten digit templates, generated here.

Generated with the `mnist1d` package's own `make_dataset` (never its download path), from
the `data.*` keys, and cached under `data.root/mnist1d/` in a file named by a hash of
those keys: a sweep, and every later run with the same keys, generates it once. The
package's train/test split is our train/val split; its values are used as it makes
them (it standardises the whole set itself), as float32 signals [N, 1, L].
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from runner.io import files

log = logging.getLogger("schedlab")

# the data.* keys that are the generator's arguments (the rest: name, root, batch_size, ...)
GENERATOR_KEYS = (
    "num_samples", "train_split", "padding", "scale_coeff", "max_translation",
    "corr_noise_scale", "iid_noise_scale", "shear_scale", "shuffle_seq", "final_seq_length",
    "seed",
)  # fmt: skip
_ARRAYS = ("x", "y", "x_test", "y_test")


def generator_args(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The package's own argument dict (its defaults, e.g. template_len) with our keys."""
    from mnist1d.data import get_dataset_args  # the mnist1d package, ~2 s: not for a cached set

    args = get_dataset_args(as_dict=True)
    args.update({k: cfg[k] for k in GENERATOR_KEYS})
    args["padding"] = list(args["padding"])
    return args


def generate(args: Mapping[str, Any]) -> dict[str, Any]:
    """`mnist1d.data.make_dataset(args)`, leaving the global RNGs as they were: the package
    seeds python's and numpy's global generators, and a run seeds its own before loading."""
    from mnist1d.data import make_dataset  # the mnist1d package, ~2 s: not for a cached set
    from mnist1d.utils import ObjectView

    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        return make_dataset(ObjectView(dict(args)))
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def cache_path(cfg: Mapping[str, Any]) -> Path:
    """`<root>/mnist1d/mnist1d-<hash of the generator's arguments>.npz`."""
    return _path(cfg["root"], generator_args(cfg))


def _path(root: str, args: Mapping[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()[:16]
    return Path(root) / "mnist1d" / f"mnist1d-{digest}.npz"


def _read(path: Path, args: Mapping[str, Any]) -> dict[str, Any] | None:
    """The cached arrays, or None when the file is missing, damaged or not the set of `args`
    (then regenerated). Read without pickle (a crafted file runs no code), and checked
    against the arguments it records and the shapes they give: a readable file of other
    data (another config's copied over it, an edited one) would otherwise train silently."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in _ARRAYS}
            stored = json.loads(str(npz["args"]))
    except Exception as err:  # truncated, not a zip, a key missing: generate it again
        log.warning("MNIST-1D cache %s unreadable (%s): generating it again", path, err)
        return None
    problem = _mismatch(arrays, stored, args)
    if problem:
        log.warning("MNIST-1D cache %s is not this set (%s): generating it again", path, problem)
        return None
    return arrays


def _mismatch(arrays: Mapping[str, Any], stored: Any, args: Mapping[str, Any]) -> str:
    """Why cached arrays are not what `args` generate ("" when they are): other recorded
    arguments, or shapes, dtypes or labels the generator never makes."""
    if stored != json.loads(json.dumps(args)):
        return "it records other generator arguments"
    x, y, x_test, y_test = (arrays[k] for k in _ARRAYS)
    length, n = args["final_seq_length"], args["num_samples"]
    if any(a.ndim != 2 or a.shape[1] != length for a in (x, x_test)):
        return f"signals are not [N, {length}]"
    if y.shape != (len(x),) or y_test.shape != (len(x_test),) or len(x) + len(x_test) != n:
        return f"not {n} signals with one label each"
    if not all(np.issubdtype(a.dtype, np.floating) and np.isfinite(a).all() for a in (x, x_test)):
        return "signals are not finite floats"
    labels = np.concatenate([y, y_test])
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() > 9:
        return "labels are not digits 0-9"
    return ""


def _write(path: Path, arrays: Mapping[str, Any], args: Mapping[str, Any]) -> None:
    """Atomically (a reader never sees half a cache); a cache that cannot be written only
    costs the next run a regeneration."""
    buf = io.BytesIO()
    np.savez(buf, **{k: arrays[k] for k in _ARRAYS}, args=np.array(json.dumps(args)))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        files.write_bytes_atomic(path, buf.getbuffer(), fsync=False)
    except OSError as err:
        log.warning("MNIST-1D not cached (%s): each run will generate it", err)


def load_mnist1d(cfg: Mapping[str, Any]) -> tuple[Any, Any, Any, Any]:
    """x_train, y_train, x_val, y_val: [N, 1, final_seq_length] float32 signals and their
    labels (runner/data/sets.py makes them its TensorData)."""
    import torch  # at call time: the cache helpers above are used without torch

    args = generator_args(cfg)
    path = _path(cfg["root"], args)
    arrays = _read(path, args)
    if arrays is None:
        arrays = generate(args)
        _write(path, arrays, args)

    def signals(a: Any) -> torch.Tensor:
        return torch.as_tensor(a, dtype=torch.float32).unsqueeze(1)

    def labels(a: Any) -> torch.Tensor:
        return torch.as_tensor(a, dtype=torch.long)

    return (
        signals(arrays["x"]),
        labels(arrays["y"]),
        signals(arrays["x_test"]),
        labels(arrays["y_test"]),
    )
