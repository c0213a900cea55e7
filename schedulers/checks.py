"""One helper per kind of config check, each raising ConfigError with the full key.

The scheduler registry and the runner's schema (runner/config/schema.py) both use these, so an
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


INT64_MAX = 2**63 - 1  # the largest integer torch (and most of numpy) can take
# the largest float32, the dtype torch trains in: a larger lr or weight decay fails at the
# first step ("value cannot be converted to type float without overflow")
FLOAT32_MAX = 3.4028234663852886e38


def need_int(key: str, v: Any, low: int, optional: bool = False, high: int | None = None) -> None:
    """An integer (not a bool) in [low, high]; with no `high`, one that fits an int64, so
    an overflowing value is a config error here rather than an OverflowError in torch."""
    if optional and v is None:
        return
    top = INT64_MAX if high is None else high
    if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= top:
        if high is None and isinstance(v, int) and not isinstance(v, bool) and v > top:
            rule = f"must be an integer >= {low} that fits in 64 bits (<= 2**63 - 1)"
        elif high is None:
            rule = f"must be an integer >= {low}"
        else:
            rule = f"must be an integer in [{low}, {high}]"
        raise ConfigError(key, v, rule + (" or null" * optional))


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
    if ok and high == math.inf and abs(v) > FLOAT32_MAX:
        raise ConfigError(
            key, v, f"must fit in float32 (|x| <= {FLOAT32_MAX:.4g}), the dtype torch computes in"
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


def need_str_list(key: str, v: Any) -> None:
    ok = (
        isinstance(v, Sequence)
        and not isinstance(v, str)
        and all(isinstance(x, str) and x for x in v)
    )
    if not ok:
        raise ConfigError(key, v, "must be a list of non-empty strings")


def need_int_list(key: str, v: Any, low: int, length: int | None = None) -> None:
    ok = (
        isinstance(v, Sequence)
        and not isinstance(v, str)
        and all(isinstance(x, int) and not isinstance(x, bool) and low <= x <= INT64_MAX for x in v)
        and (length is None or len(v) == length)
    )
    if not ok:
        size = f"{length} " if length is not None else ""
        raise ConfigError(key, list(v) if ok else v, f"must be a list of {size}integers >= {low}")


def need_increasing_ints(key: str, v: Any, low: int) -> None:
    """A non-empty list of integers >= low, each above the one before (milestones)."""
    is_list = isinstance(v, Sequence) and not isinstance(v, str)
    ints = is_list and all(isinstance(m, int) and not isinstance(m, bool) for m in v)
    if not ints or not v or v[0] < low or any(b <= a for a, b in zip(v, v[1:], strict=False)):
        raise ConfigError(key, v, f"must be a non-empty list of strictly increasing ints >= {low}")


def need_str_or_str_list(key: str, v: Any) -> None:
    if isinstance(v, str) and v:
        return
    try:
        need_str_list(key, v)
    except ConfigError:
        raise ConfigError(key, v, "must be a non-empty string or a list of them") from None


# -- the same checks as values: a schema field names its check once ----------------------
def integer(low: int, optional: bool = False, high: int | None = None) -> Check:
    return lambda key, v: need_int(key, v, low, optional, high)


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


def auto_or_int(low: int) -> Check:
    """`auto`, or an integer >= low."""

    def check(key: str, v: Any) -> None:
        if v != "auto":
            try:
                need_int(key, v, low)
            except ConfigError:
                raise ConfigError(key, v, f"must be auto or an integer >= {low}") from None

    return check


def worded(check: Check, rule: str) -> Check:
    """`check`, a rejection told as `rule`: for a key whose message says why its bound is
    what it is ("must be >= 2 (a paired t test needs 2 seeds)")."""

    def run(key: str, v: Any) -> None:
        try:
            check(key, v)
        except ConfigError:
            raise ConfigError(key, v, rule) from None

    return run


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


def str_list() -> Check:
    return need_str_list


def increasing_ints(low: int) -> Check:
    return lambda key, v: need_increasing_ints(key, v, low)


def str_or_str_list() -> Check:
    return need_str_or_str_list


def anything() -> Check:
    return lambda key, v: None


# -- which way a monitored metric should go -------------------------------------------------
MODES = ("auto", "min", "max")


def natural_mode(metric: Any) -> str | None:
    """'max' for an accuracy (`val/acc`), 'min' for a loss (`train/loss`), else None."""
    name = str(metric).rsplit("/", 1)[-1].lower()
    if name.endswith("acc") or name.endswith("accuracy"):
        return "max"
    if name.endswith("loss"):
        return "min"
    return None


def mode_for(metric: Any, mode: str) -> str:
    """The one place `auto` is resolved: 'min' or 'max' for monitoring `metric`. An explicit
    min or max is returned as given (need_mode has checked it against the metric)."""
    if mode != "auto":
        return mode
    natural = natural_mode(metric)
    if natural is None:
        raise ValueError(f"mode auto cannot tell which way {metric!r} should go: give min or max")
    return natural


def need_mode(key: str, mode: Any, metric: Any, metric_key: str) -> None:
    """`mode` (at `key`) is auto, min or max, and agrees with the metric it is for: min for a
    loss, max for an accuracy. A contradiction (`monitor=val/acc mode=min`) would reduce
    the lr, or pick best.pt, whenever the metric improves."""
    need_choice(key, mode, MODES)
    natural = natural_mode(metric)
    if natural is None:
        if mode == "auto":
            rule = f"cannot tell which way {metric_key}={metric!r} should go: give min or max"
            raise ConfigError(key, mode, rule)
        return
    if mode != "auto" and mode != natural:
        what = "an accuracy (higher is better)" if natural == "max" else "a loss (lower is better)"
        raise ConfigError(
            key, mode, f"contradicts {metric_key}={metric!r}, {what}: use {natural} or auto"
        )
