"""Composing the config outside `@hydra.main`: for checks before Hydra starts, the preview,
and tests. Same config dir and same composition as `python -m runner`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

CONF = Path(__file__).resolve().parents[2] / "conf"


# Hydra's command-line options that take a value
_WITH_VALUE = {"--config-dir", "-cd", "--config-path", "-cp", "--config-name", "-cn", "--cfg",
               "-c", "--package", "-p", "--experimental-rerun"}  # fmt: skip


def options_first(argv: Sequence[str]) -> list[str]:
    """Hydra's options moved in front of the overrides, keeping their order: argparse
    (Python < 3.12) rejects overrides on both sides of an option, so
    `--config-dir conf model=x -m seed=0,1` would fail with "unrecognized arguments"."""
    options, overrides = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in _WITH_VALUE and i + 1 < len(argv):
            options += [arg, argv[i + 1]]
            i += 2
            continue
        (options if arg.startswith("-") else overrides).append(arg)
        i += 1
    return [*options, *overrides]


def expand(overrides: list[str]) -> list[list[str]]:
    """Every combination a Hydra multirun with these overrides would launch."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    (batch,) = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    return [list(combo) for combo in batch]


def compose_config(
    overrides: list[str], with_hydra: bool = False, config_dirs: Sequence[str] = ()
) -> Any:
    """The job's config; `with_hydra` keeps Hydra's own node (launcher, sweep dir, ...).
    `config_dirs` are a user's own config dirs (`--config-dir`), searched beside conf/."""
    from hydra import compose, initialize_config_dir

    if config_dirs:
        paths = ",".join(f"file://{Path(d).resolve()}" for d in config_dirs)
        overrides = [*overrides, f"hydra.searchpath=[{paths}]"]
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=with_hydra)


def one_line(err: Exception) -> str:
    """Hydra's composition errors span lines (a tab-indented list of the group's options,
    then the search path, then a link); say the same on one line, with the cause of a
    failed override ("Error merging override epochs=abc") after it."""
    lines = str(err).split("\nConfig search path:")[0].splitlines()
    head = [line.strip() for line in lines if line.strip() and not line.startswith("\t")]
    listed = [line.strip() for line in lines if line.startswith("\t")]
    text = " ".join(head) + (" " + ", ".join(listed) if listed else "")
    cause = err.__cause__
    if cause is not None and str(cause).splitlines():
        text += f": {str(cause).splitlines()[0]}"
    link = "See https://hydra.cc/docs/1.2/advanced/override_grammar/basic for details"
    return text.replace(link, "").strip()
