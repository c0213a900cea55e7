"""Components given by `_target_` (the user's model, any optimizer): checked, then built.

Hydra's `instantiate` builds them. Before that, the node's kwargs are bound to the
target's signature, so a typo'd kwarg or a target that cannot be imported is a config
error naming the key (exit 2) instead of a TypeError deep inside a run. Keys that the
runner itself reads (an optimizer's `param_groups`) are "ours" and never reach the target.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Collection, Mapping
from typing import Any

from schedulers import ConfigError

TARGET = "_target_"
HYDRA_KEYS = ("_target_", "_partial_", "_convert_", "_recursive_", "_args_")


def is_target(node: Mapping[str, Any]) -> bool:
    return node.get(TARGET) is not None


def builtin_spec(group: str, node: Mapping[str, Any], table: Mapping[str, Any]) -> Any:
    """The spec of a built-in option from its group's name -> spec table, None for a
    `_target_` component, or a ConfigError naming `<group>.name` (models and optimizers
    share this rule)."""
    if is_target(node):
        return None
    name = node.get("name")
    if name not in table:
        raise ConfigError(
            f"{group}.name", name, f"must be one of {list(table)}, or give {group}._target_"
        )
    return table[name]


def label(node: Mapping[str, Any]) -> str:
    """How a component is named in logs and reports: its `name`, or its class name."""
    if is_target(node):
        return str(node[TARGET]).rsplit(".", 1)[-1]
    return str(node.get("name"))


def locate(group: str, node: Mapping[str, Any]) -> Callable[..., Any]:
    """The class or function `_target_` names; unimportable -> ConfigError on the key."""
    from hydra._internal.utils import _locate  # hydra.utils.get_object, minus its error log

    path = node[TARGET]
    if not isinstance(path, str) or not path:
        raise ConfigError(f"{group}.{TARGET}", path, "must be a dotted path, e.g. mypkg.nets.Net")
    try:
        target = _locate(path)
    except Exception as err:  # ImportError, AttributeError, or an error inside that module
        lines = [line for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
        cause = " ".join(lines[1:] if len(lines) > 1 else lines)
        raise ConfigError(f"{group}.{TARGET}", path, f"cannot be imported: {cause}") from None
    if not callable(target):
        raise ConfigError(f"{group}.{TARGET}", path, "is not a class or a function")
    return target


def kwargs_of(node: Mapping[str, Any], ours: Collection[str] = ()) -> dict[str, Any]:
    """The node's keys that are the target's keyword arguments."""
    return {k: v for k, v in node.items() if k not in HYDRA_KEYS and k not in ours}


def accepts(target: Callable[..., Any], name: str) -> bool:
    """Whether `target` takes a keyword argument `name` explicitly (not only via **kwargs)."""
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False
    p = params.get(name)
    return p is not None and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)


def takes_any_keyword(target: Callable[..., Any]) -> bool:
    """Whether `target` has a **kwargs parameter."""
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind == p.VAR_KEYWORD for p in params)


def key_named_in(group: str, message: str, keys: Collection[str]) -> str:
    """The config key a constructor's error message names (torch says e.g. 'Invalid alpha
    value: -1'), else the group's `_target_`."""
    for key in sorted(keys, key=len, reverse=True):
        if re.search(rf"\b{re.escape(key)}\b", message):
            return f"{group}.{key}"
    return f"{group}.{TARGET}"


def instantiate(
    node: Mapping[str, Any], *args: Any, ours: Collection[str] = (), **extra: Any
) -> Any:
    """Build the target with `args` first and `extra` beside the node's own kwargs.
    `_partial_: true` (needed by Hydra for optimizers and schedulers, which take their
    params/optimizer later) is honoured: the partial is called with `args` and `extra`."""
    from hydra.utils import instantiate as hydra_instantiate
    from omegaconf import DictConfig, OmegaConf

    plain = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    spec = {k: v for k, v in dict(plain).items() if k not in ours}
    spec["_partial_"] = True
    spec.setdefault("_convert_", "all")  # plain lists and dicts, not OmegaConf containers
    return hydra_instantiate(spec)(*args, **extra)
