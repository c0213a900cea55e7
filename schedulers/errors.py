"""The one exception type for bad configuration.

It lives in the lowest-level package so `schedulers` and `runner` raise the same
type, and the CLI can turn every config mistake into one short message + exit 2.
"""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key, the value and the rule."""

    def __init__(self, key: str, value: Any, rule: str) -> None:
        self.key, self.value, self.rule = key, value, rule
        super().__init__(f"{key}={value!r}: {rule}")
