"""Any component by its import path (`_target_`): located, its kwargs bound, then built.

One binder for every `_target_` node the runner reads: a scheduler (schedulers/target.py),
a model, an optimizer, a dataset, its transforms, a collate function (runner/train,
runner/data). The node's kwargs are bound to the target's signature before anything is
built, so a typo'd
kwarg or a target that cannot be imported is a config error naming the key (exit 2)
instead of a TypeError deep inside a run. Keys the runner itself reads (an optimizer's
`param_groups`, a schedule's `interval`) are "ours" and never reach the target.

Arguments are given by name: `_args_` is refused (the runner passes its own leading
argument to optimizers and schedulers, which Hydra would put after `_args_`, and a model's
positional arguments would collide with the shape it is offered).

Also the one OmegaConf -> plain dict conversion (`plain`), which every reader of a node
needs first. hydra and omegaconf are imported where used: `import schedulers` stays light
(no hydra, ~0.1 s, until a `_target_` is located or built).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Collection, Mapping
from typing import Any

from schedulers.errors import ConfigError

TARGET = "_target_"
HYDRA_KEYS = ("_target_", "_partial_", "_convert_", "_recursive_", "_args_")


def plain(node: Any) -> Any:
    """`node` with OmegaConf containers turned into plain dicts and lists, `${...}`
    resolved; anything else as it is."""
    from omegaconf import OmegaConf  # ~50 ms; only an OmegaConf node needs it (see above)

    if OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


def is_target(node: Mapping[str, Any]) -> bool:
    return node.get(TARGET) is not None


def label(node: Mapping[str, Any]) -> str:
    """How a component is named in logs and reports: its `name`, or its class name."""
    if is_target(node):
        return str(node[TARGET]).rsplit(".", 1)[-1]
    return str(node.get("name"))


def builtin_spec(group: str, target: Any, name: Any, table: Mapping[str, Any]) -> Any:
    """The spec of a built-in option from its group's name -> spec table, None for a
    `_target_` component, or a ConfigError naming `<group>.name` (models and optimizers
    share this rule). Given the node's `_target_` and `name` values, all it reads: the
    node stays with its reader."""
    if target is not None:
        return None
    if name not in table:
        raise ConfigError(
            f"{group}.name", name, f"must be one of {list(table)}, or give {group}._target_"
        )
    return table[name]


def locate(where: str, node: Mapping[str, Any]) -> Callable[..., Any]:
    """The class or function `_target_` names; unimportable -> ConfigError on the key.
    `_args_` is refused here, the first thing every `_target_` node goes through."""
    # hydra (~0.1 s) only when a `_target_` is located (see above); _locate is
    # hydra.utils.get_object minus its error log
    from hydra._internal.utils import _locate

    if "_args_" in node:
        raise ConfigError(
            f"{where}._args_",
            node["_args_"],
            "give the arguments by name (the runner passes "
            "the positional ones: an optimizer's params, a scheduler's optimizer)",
        )
    path = node[TARGET]
    if not isinstance(path, str) or not path:
        raise ConfigError(f"{where}.{TARGET}", path, "must be a dotted path, e.g. mypkg.nets.Net")
    try:
        target = _locate(path)
    except Exception as err:  # ImportError, AttributeError, or an error inside that module
        # hydra's message: "Error loading 'x':", the cause, a hint; the cause says most
        lines = [line for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
        cause = " ".join(lines[1:] if len(lines) > 1 else lines)
        raise ConfigError(f"{where}.{TARGET}", path, f"cannot be imported: {cause}") from None
    if not callable(target):
        raise ConfigError(f"{where}.{TARGET}", path, "is not a class or a function")
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


def need_call(
    where: str, target: Callable[..., Any], kwargs: dict[str, Any], leading: int = 0
) -> None:
    """`target(<leading positional args>, **kwargs)` must be a valid call: every key one of
    its parameters (the leading ones, e.g. a scheduler's optimizer, are the caller's), every
    required parameter given. Values are not checked here."""
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return  # no signature to read (a builtin): building it will tell
    name = getattr(target, "__name__", str(target))
    params = list(sig.parameters.values())
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params)
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    known = [p.name for p in params[leading:] if p.kind in kinds]
    for key in kwargs:
        if key not in known and not takes_any:
            raise ConfigError(
                f"{where}.{key}", kwargs[key], f"{name} has no argument '{key}'; it takes {known}"
            )
        # a parameter annotated plainly as a number (torch's `gamma: float`) given a word: the
        # key now, not a TypeError deep inside the class later
        annotation = sig.parameters[key].annotation if key in sig.parameters else None
        kind = {float: "float", int: "int"}.get(annotation, annotation)
        if kind in ("float", "int") and isinstance(kwargs[key], str):
            raise ConfigError(f"{where}.{key}", kwargs[key], f"{name} takes a number ({kind})")
    try:
        sig.bind(*([None] * leading), **kwargs)
    except TypeError as err:
        missing = re.search(r"missing a required argument: '(\w+)'", str(err))
        if missing:
            raise ConfigError(
                f"{where}.{missing.group(1)}", None, f"required by {name}; set it in the config"
            ) from None
        twice = re.search(r"multiple values for argument '(\w+)'", str(err))
        key = f"{where}.{twice.group(1)}" if twice else f"{where}._target_"
        raise ConfigError(key, kwargs.get(twice.group(1)) if twice else name, str(err)) from None


def key_named_in(
    where: str, message: str, keys: Collection[str], fallback: str | None = None
) -> str:
    """The config key a constructor's error message names (torch says e.g. 'Invalid alpha
    value: -1', 'Expected positive integer T_max'), in any case; else `fallback`, by
    default the node's `_target_`. A key inside a file name or URL (`train` in
    train-images-idx3-ubyte.gz, .../train/...) is not named by it."""
    for key in sorted(keys, key=len, reverse=True):
        if re.search(rf"(?<![\w/-]){re.escape(key)}(?![\w/-])", message, re.IGNORECASE):
            return f"{where}.{key}"
    return f"{where}.{TARGET}" if fallback is None else fallback


def partial_of(node: Mapping[str, Any], ours: Collection[str] = ()) -> Callable[..., Any]:
    """The target with the node's kwargs bound, to be called with what the runner adds
    (Hydra's `_partial_: true`, which optimizers and schedulers need: they take their
    params/optimizer later). Its kwargs arrive as plain lists and dicts (`_convert_: all`)
    unless the node says otherwise."""
    from hydra.utils import instantiate  # ~0.1 s: only when a `_target_` is built (see above)

    spec = {k: v for k, v in dict(plain(node)).items() if k not in ours}
    spec["_partial_"] = True
    spec.setdefault("_convert_", "all")
    return instantiate(spec)


def instantiate(
    node: Mapping[str, Any], *args: Any, ours: Collection[str] = (), **extra: Any
) -> Any:
    """Build the target with `args` first and `extra` beside the node's own kwargs."""
    return partial_of(node, ours)(*args, **extra)
