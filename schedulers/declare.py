"""How a config node's keys are declared, and the one pass that checks a node against them.

A declaration is a dataclass: one field per key, made with `key(default, check)`, the check
one of the helpers in schedulers/checks.py; what ties several keys together is a
`check_keys(prefix, node)` staticmethod beside the fields. The runner declares every
built-in option this way (runner/config/schema.py) and the scheduler registry every
schedule (schedulers/registry.py); it lives here, below both, because schedulers/ is a
library the runner imports, never the other way round.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from dataclasses import field
from typing import Any

from schedulers.checks import Check
from schedulers.errors import ConfigError


def key(default: Any, check: Check) -> Any:
    """A schema field: its default (lists copied per instance) and its check."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"check": check})
    return field(default=default, metadata={"check": check})


def check_node(
    prefix: str,
    node: Mapping[str, Any],
    schema: type,
    *,
    others: Collection[str] = (),
    owner: str | None = None,
) -> None:
    """Every key of `node` declared by `schema`, every declared key present, every value
    passing its field's check, then the schema's `check_keys`. Raises ConfigError naming
    the first bad key.

    `others`: keys the node may also hold that another check owns (a schedule's `interval`,
    a plugin's `_target_`); they are listed as allowed, and not checked here. `owner`: what
    the unknown-key message says has these keys (default: the prefix). `node`: plain
    values, `${...}` resolved (`plain`, made once by the caller's entry: runner/run/check.py
    `validate`, a scheduler's `_resolve`): what is checked and what errors show."""
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for name in node:
        if name not in fields and name not in others:
            allowed = [*others, *fields]
            raise ConfigError(
                f"{prefix}.{name}" if prefix else name,
                node[name],
                f"unknown key; {owner or prefix or 'the config'} has {allowed}",
            )
    for name, f in fields.items():
        full = f"{prefix}.{name}" if prefix else name
        if name not in node:
            raise ConfigError(full, None, "missing; its default is " + repr(default(f)))
        f.metadata["check"](full, node[name])
    check_keys = getattr(schema, "check_keys", None)
    if check_keys is not None:
        check_keys(prefix, node)


def typed(node: Mapping[str, Any], schema: type) -> Any:
    """A node `check_node` passed, given as plain values (`plain`), as an instance of its
    schema: read by attribute, a typo caught by the type checker instead of at run time."""
    return schema(**node)


def default(f: dataclasses.Field) -> Any:
    """A field's default (a fresh copy of a list)."""
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def defaults(schema: type) -> dict[str, Any]:
    """The schema's values, as its YAML file should hold them."""
    return {f.name: default(f) for f in dataclasses.fields(schema)}
