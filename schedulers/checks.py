"""One helper per kind of config check, each raising ConfigError with the full key.

The scheduler registry and the runner's schema (runner/schema.py) both use these, so an
integer is checked one way everywhere: a bool is not an int, NaN and inf are not numbers,
and every message says what would be accepted.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

from schedulers.errors import ConfigError

Check = Callable[[str, Any], None]  # (full key, value) -> None, or ConfigError


def is_number(v: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def need_int(key: str, v: Any, low: int, optional: bool = False) -> None:
    if optional and v is None:
        return
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ConfigError(key, v, f"must be an integer >= {low}" + (" or null" * optional))


def need_number(
    key: str,
    v: Any,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    optional: bool = False,
) -> None:
    """A finite number in [low, high], each end open or closed as asked."""
    if optional and v is None:
        return
    ok = (
        is_number(v) and (v > low if lo_open else v >= low) and (v < high if hi_open else v <= high)
    )
    if not ok:
        if low == -math.inf and high == math.inf:
            rule = "must be a finite number"
        elif high == math.inf:
            rule = f"must be a number {'>' if lo_open else '>='} {low:g}"
        else:
            left, right = "(" if lo_open else "[", ")" if hi_open else "]"
            rule = f"must be a number in {left}{low:g}, {high:g}{right}"
        raise ConfigError(key, v, rule + (" or null" if optional else ""))


def need_positive(key: str, v: Any, optional: bool = False) -> None:
    need_number(key, v, 0, lo_open=True, optional=optional)


def need_choice(key: str, v: Any, choices: Sequence[Any]) -> None:
    if isinstance(v, bool) and not any(isinstance(c, bool) for c in choices):
        raise ConfigError(key, v, f"must be one of {list(choices)}")
    if v not in choices:
        raise ConfigError(key, v, f"must be one of {list(choices)}")


def need_bool(key: str, v: Any) -> None:
    if not isinstance(v, bool):
        raise ConfigError(key, v, "must be true or false")


def need_str(key: str, v: Any, optional: bool = False) -> None:
    if optional and v is None:
        return
    if not isinstance(v, str) or not v:
        raise ConfigError(key, v, "must be a non-empty string" + (" or null" * optional))


def need_match(key: str, v: Any, pattern: str, rule: str) -> None:
    if not isinstance(v, str) or not re.fullmatch(pattern, v):
        raise ConfigError(key, v, rule)


def need_int_list(key: str, v: Any, low: int, length: int | None = None) -> None:
    ok = (
        isinstance(v, Sequence)
        and not isinstance(v, str)
        and all(isinstance(x, int) and not isinstance(x, bool) and x >= low for x in v)
        and (length is None or len(v) == length)
    )
    if not ok:
        size = f"{length} " if length is not None else ""
        raise ConfigError(key, list(v) if ok else v, f"must be a list of {size}integers >= {low}")


# -- the same checks as values: a schema field names its check once ----------------------
def integer(low: int, optional: bool = False) -> Check:
    return lambda key, v: need_int(key, v, low, optional)


def number(
    low: float = -math.inf,
    high: float = math.inf,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    optional: bool = False,
) -> Check:
    return lambda key, v: need_number(
        key, v, low, high, lo_open=lo_open, hi_open=hi_open, optional=optional
    )


def choice(*choices: Any) -> Check:
    return lambda key, v: need_choice(key, v, choices)


def boolean() -> Check:
    return need_bool


def text(optional: bool = False) -> Check:
    return lambda key, v: need_str(key, v, optional)


def matches(pattern: str, rule: str) -> Check:
    return lambda key, v: need_match(key, v, pattern, rule)


def int_list(low: int, length: int | None = None) -> Check:
    return lambda key, v: need_int_list(key, v, low, length)


def anything() -> Check:
    return lambda key, v: None
