"""Composing the config outside `@hydra.main`: for checks before Hydra starts, the preview,
and tests. Same config dir and same composition as `python -m runner`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

CONF = Path(__file__).resolve().parents[1] / "conf"


def expand(overrides: list[str]) -> list[list[str]]:
    """Every combination a Hydra multirun with these overrides would launch."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    (batch,) = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    return [list(combo) for combo in batch]


def compose_config(overrides: list[str], with_hydra: bool = False) -> Any:
    """The job's config; `with_hydra` keeps Hydra's own node (launcher, sweep dir, ...)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=with_hydra)
