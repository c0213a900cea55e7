"""A run tied to its data: relative data paths made absolute at the run's start, and a
fingerprint of the data it trained on, kept in every checkpoint, so that `resume=` on other
data is refused instead of training on it. Before this a root relative to the cwd meant
that a resume from another cwd trained on whatever that cwd held, with exit 0.

The fingerprint is cheap: sizes, classes and a sample's shape come from the loaded data
(`load_data`, cached, which start-up loads anyway); the labels hashed are the first
`LABELS` of each split, read from the tensors in memory, from a streamed dataset's
`targets` where it has them, else fetched (those samples only, never a pass over the set).
Bundled sets (digits, fake, mnist1d) are made from their arguments: those are hashed.
Text (data=text) is hashed whole already (its cache's name): that hash is kept.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import torch
from omegaconf import OmegaConf, open_dict

from runner.data.paths import as_absolute, path_values, roots
from runner.data.sets import load_data
from runner.data.stream import MATERIALISE_EPOCH, SampleError, SeededSamples, is_streamed
from runner.data.text import is_text
from schedulers import ConfigError
from schedulers.binder import plain

BUNDLED = ("digits", "fake", "mnist1d")  # generated from their keys; mnist1d's root: a cache
LABELS = 256  # labels hashed per split


# -- paths (runner/data/paths.py finds them) ------------------------------------------------
def absolute_roots(cfg: Any) -> list[str]:
    """Relative paths of the data config made absolute in `cfg` itself, at the run's start,
    so that config.yaml records the data the run reads and a resume from another cwd
    reads the same: every `root` (root, data_root, ...), and any other path-like key
    (*_dir, path, file, ...) whose value exists from the cwd (else it is left as given:
    a name that is not a path, or a file the dataset makes). Returns the `key=value`
    texts changed."""
    changed = []
    for key, value, always in path_values(dict(plain(cfg.data)), "data"):
        absolute = as_absolute(value, always)
        if absolute is None or absolute == value or _through_interpolation(cfg, key):
            continue
        with open_dict(cfg):
            OmegaConf.update(cfg, key, absolute, merge=False)
        changed.append(f"{key}={absolute}")
    return changed


def _through_interpolation(cfg: Any, key: str) -> bool:
    """Whether `key` lies inside a node that is an interpolation (data.val: ${data.train}):
    its target's path is made absolute itself; writing the key would replace the whole
    interpolation with a node holding that one key."""
    node: Any = OmegaConf.to_container(cfg, resolve=False) if OmegaConf.is_config(cfg) else cfg
    for part in key.split(".")[:-1]:
        if isinstance(node, str):  # an interpolation, unresolved
            return True
        node = node[int(part)] if isinstance(node, list) else node.get(part)
    return isinstance(node, str)


# -- the fingerprint ------------------------------------------------------------------------
def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _first_labels(dataset: Any, split: str) -> list[Any]:
    """The labels of a streamed dataset's first LABELS samples: its `targets` (torchvision's
    folders and sets) unless a target_transform changes them, else the samples fetched as
    a materialised set fetches them (runner/data/stream.py), so both paths agree."""
    n = min(len(dataset), LABELS)
    targets = getattr(dataset, "targets", None)
    if getattr(dataset, "target_transform", None) is None and _sized(targets, len(dataset)):
        return [torch.as_tensor(t).tolist() for t in list(targets[:n])]
    samples = SeededSamples(dataset, 0, f"data.{split}")
    try:  # the user's __getitem__ failing: one line naming the split and the sample
        return [torch.as_tensor(samples[(MATERIALISE_EPOCH, i)][1]).tolist() for i in range(n)]
    except SampleError as err:
        raise err.config_error() from None


def _sized(targets: Any, n: int) -> bool:
    try:
        return targets is not None and len(targets) == n and not isinstance(targets, str)
    except TypeError:
        return False


def _labels(data: Any) -> list[list[Any]]:
    if is_streamed(data):
        return [_first_labels(data.train, "train"), _first_labels(data.val, "val")]
    return [data.y_train[:LABELS].tolist(), data.y_val[:LABELS].tolist()]


def _n_val(data: Any) -> int:
    return len(data.val) if is_streamed(data) else int(data.y_val.shape[0])


_last: tuple[Any, dict[str, Any]] | None = None  # (data, its fingerprint): one load, one hash


def fingerprint(data_cfg: Mapping[str, Any], data: Any) -> dict[str, Any]:
    """What a run trains on, as plain values (kept in its checkpoints and status.json):
    `roots` (absolute paths of the data config), `n_train`, `n_val`, `num_classes`,
    `sample_shape`, and `labels` (a hash of each split's first labels) or, for a bundled
    set, `args` (a hash of the keys it is generated from). `data_cfg`: the data node's
    plain values; `data`: load_data(data_cfg)."""
    global _last
    values = dict(data_cfg)
    if _last is not None and _last[0] is data and _last[1]["_cfg"] == _digest(values):
        return {k: v for k, v in _last[1].items() if k != "_cfg"}
    record: dict[str, Any] = {
        "n_train": int(data.n_train),
        "n_val": _n_val(data),
        "num_classes": int(data.num_classes),
        "sample_shape": [int(s) for s in data.image_shape],
    }
    if values["name"] in BUNDLED:
        args = {k: v for k, v in values.items() if k not in ("batch_size", "root")}
        record["args"] = _digest(args)
    elif is_text(data):  # its stream's hash: what the cache is named by, not where it is
        record["roots"] = {k: v for k, v in roots(values).items() if k != "data.cache_dir"}
        record["content"] = data.content[:32]
    else:
        record["roots"] = roots(values)
        record["labels"] = _digest(_labels(data))
    _last = (data, {**record, "_cfg": _digest(values)})
    return record


def describe(record: Mapping[str, Any]) -> str:
    """One line for the run's log: what the fingerprint says."""
    where = ", ".join(f"{k}={v}" for k, v in record.get("roots", {}).items())
    return (
        f"data: {record['n_train']} train / {record['n_val']} val samples, "
        f"{record['num_classes']} classes, sample shape {record['sample_shape']}"
        + (f", {where}" if where else "")
    )


# -- the check on resume --------------------------------------------------------------------
def _split_key(record: Mapping[str, Any], split: str) -> str:
    """The key that says where a split is read from: its root when it has one."""
    keys = sorted(record.get("roots", {}))
    own = [k for k in keys if k.startswith(f"data.{split}.")]
    return (own or [k for k in keys if k.count(".") == 1] or [f"data.{split}"])[0]


def difference(trained: Mapping[str, Any], now: Mapping[str, Any]) -> ConfigError | None:
    """The first way the data now differs from the data the run trained on, as a ConfigError
    naming the key (None when they agree)."""
    n_old, n_new = trained.get("n_train"), now.get("n_train")
    old_roots, new_roots = trained.get("roots", {}), now.get("roots", {})
    for key in sorted(set(old_roots) | set(new_roots)):
        was, is_ = old_roots.get(key), new_roots.get(key)
        if was != is_:
            return _refused(
                key,
                is_,
                f"the run trained on {was or '(none)'} ({n_old} train samples), "
                f"this command gives {is_ or '(none)'} ({n_new})",
            )
    for split, field in (("train", "n_train"), ("val", "n_val")):
        if trained.get(field) != now.get(field):
            key = _split_key(now, split)
            value = new_roots.get(key, now.get(field))
            return _refused(
                key,
                value,
                f"the run trained on {trained.get(field)} {split} samples there, "
                f"this command gives {now.get(field)}",
            )
    for field, key in (
        ("num_classes", "data.num_classes"),
        ("sample_shape", "data"),
        ("labels", _split_key(now, "train")),  # a hash of the first samples' labels
        ("args", "data"),  # a hash of a bundled set's generating keys
        ("content", "data.path"),  # data=text: a hash of the token stream
    ):
        was, is_ = trained.get(field), now.get(field)
        if was != is_:
            value = new_roots.get(key, is_)
            what = _WHAT.get(field, field)
            why = f"{what}: the run trained on {was}, this command gives {is_}"
            return _refused(key, value, why)
    return None


_WHAT = {"labels": "the first samples' labels (hashed)", "content": "the text (hashed)"}


# what to do, in the words of the command given (resume= or branch=)
RESUMED = (
    "a resumed run continues on the data it trained on: restore that data, or start a new "
    "run (without resume=) on this one"
)
BRANCHED = (
    "a branch continues its trunk on the data the trunk trained on: restore that data, or "
    "start a new run (without branch=) on this one"
)


def _refused(key: str, value: Any, why: str) -> ConfigError:
    return ConfigError(key, value, f"{why}; {RESUMED}")


def check_same_data(
    state: Mapping[str, Any], data_cfg: Mapping[str, Any], branch: bool = False
) -> None:
    """resume= (or branch=, `branch`) on other data than the checkpoint's (`state`) is a
    ConfigError naming what differs, and what to do in the words of the command given; a
    checkpoint from before fingerprints were kept resumes as before. `data_cfg`: the data
    node's plain values."""
    trained = state.get("data")
    if not isinstance(trained, Mapping):
        return
    refused = difference(trained, fingerprint(data_cfg, load_data(data_cfg)))
    if refused is not None and branch:
        rule = refused.rule.replace(RESUMED, BRANCHED).replace(
            "the run trained", "the trunk trained"
        )
        raise ConfigError(refused.key, refused.value, rule)
    if refused is not None:
        raise refused
