"""Which values of a data config name files or folders, and those paths made absolute:
what a run records in config.yaml (fingerprint.absolute_roots), what its fingerprint keeps
(fingerprint.roots) and what the in-process data cache is keyed by (sets.load_data), so a
relative and an absolute path to the same data are the same data."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from typing import Any

# keys whose string value names a file or folder: root, data_root, root_dir, path, files, ...
_PATH_KEY = re.compile(r"(^|_)(root|dir|directory|folder|path|file|filename)s?$")
# ... and those that always do (torchvision's `root`, the built-in sets' data.root), even
# before it exists (a download or a cache makes it): made absolute whether or not it exists
_ROOT_KEY = re.compile(r"(^|_)roots?$")
_NOT_PATHS = "hydra.utils."  # get_object/get_class/get_method: `path` is an import path


# -- paths ----------------------------------------------------------------------------------
def path_values(node: Any, prefix: str, key: str = "") -> Iterator[tuple[str, str, bool]]:
    """(dotted key, value, always a path) of every string under a path-like key of the data
    config; `key`: the name of the key that holds `node`."""
    if isinstance(node, Mapping):
        if str(node.get("_target_") or "").startswith(_NOT_PATHS):
            return
        for name, value in node.items():
            yield from path_values(value, f"{prefix}.{name}", str(name))
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from path_values(value, f"{prefix}.{i}", key)
    elif isinstance(node, str) and node and "://" not in node and _PATH_KEY.search(key):
        yield prefix, node, bool(_ROOT_KEY.search(key))


def as_absolute(value: str, always: bool) -> str | None:
    """The value as an absolute path against the cwd, when it is one: absolute already, a
    `root` (`always`), or a path that exists; None for a value that is no path here (a
    hub name under `path`, a file the dataset makes later)."""
    expanded = os.path.expanduser(value)
    if always or os.path.isabs(expanded) or os.path.exists(expanded):
        return os.path.abspath(expanded)
    return None


def roots(data_cfg: Mapping[str, Any]) -> dict[str, str]:
    """Every path-like value of the data config (its plain values) as the absolute path it
    names from here."""
    found = {}
    for key, value, always in path_values(data_cfg, "data"):
        absolute = as_absolute(value, always)
        if absolute is not None:
            found[key] = absolute
    return found


def with_absolute_paths(settings: dict[str, Any]) -> dict[str, Any]:
    """A copy of a data node's plain settings with every path in it absolute (as `roots`
    finds them), e.g. {"root": "data"} -> {"root": "/work/data"}."""
    out = json_copy(settings)
    for dotted, path in roots(settings).items():
        *parents, last = dotted.split(".")[1:]
        node = out
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[int(last) if isinstance(node, list) else last] = path
    return out


def json_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: json_copy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_copy(v) for v in value]
    return value
