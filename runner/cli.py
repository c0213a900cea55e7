"""What every command line (`python -m runner`, `python -m runner.lr_find`) checks before
Hydra starts: Hydra makes the run dir and writes .hydra/ before the task runs, and reports
a bad override as a generic error with exit 1; checked here, a bad config is one line,
exit 2, with nothing left on disk."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import open_dict
from omegaconf.errors import InterpolationResolutionError, OmegaConfBaseException

from runner.config.compose import (
    CONF,
    check_yaml_files,
    compose_config,
    expand,
    given,
    one_line,
)
from runner.io.files import WRITE_ERRNOS
from runner.sweep.launch import check_callbacks, check_launcher, check_sweeper
from schedulers import ConfigError

EXIT_CONFIG = 2

NO_COMPOSE = {"--help", "-h", "--hydra-help", "--version", "--shell-completion", "-sc"}


def config_dirs(argv: list[str]) -> list[str]:
    """The dirs given with Hydra's `--config-dir DIR` / `-cd DIR` (or `--config-dir=DIR`):
    a user's own groups (model/my_cnn.yaml -> model=my_cnn) beside the built-ins."""
    dirs = []
    for i, arg in enumerate(argv):
        if arg in ("--config-dir", "-cd") and i + 1 < len(argv):
            dirs.append(argv[i + 1])
        elif arg.startswith("--config-dir="):
            dirs.append(arg.split("=", 1)[1])
    return dirs


def check_config_dirs(dirs: list[str], key: str = "--config-dir") -> None:
    """Each `--config-dir` exists: Hydra's own message for one that does not is a warning,
    an error and a hint (exit 1); the preview's Hydra only warns and goes on without it.
    Its YAML files are checked too (check_yaml_files): a broken one is one line naming it.
    `key`: where the dirs were given (hydra.searchpath's file:// entries likewise: Hydra
    skips one that does not exist without a word, and `model=mine` is then "not found")."""
    for d in dirs:
        if not Path(d).is_dir():
            raise ConfigError(
                key, d, "no such directory (give the dir that holds your config groups)"
            )
        check_yaml_files(d)


def searchpath_dirs(argv: list[str]) -> list[str]:
    """The dirs of `hydra.searchpath=[file://DIR, ...]` on the command line (pkg:// entries
    are packages, not dirs)."""
    overrides = [a for a in argv if a.lstrip("+").startswith("hydra.searchpath=")]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException:  # a malformed override: Hydra's own parse reports it
        return []
    dirs = []
    for override in parsed:
        value = override.value()
        for entry in value if isinstance(value, list) else [value]:
            if isinstance(entry, str) and not entry.startswith("pkg://"):
                dirs.append(entry.removeprefix("file://"))
    return dirs


# characters an unquoted override value may hold (Hydra's grammar): others, e.g. the `=` and
# `,` of a sweep job's dir (scheduler=cosine,seed=1), need the value quoted
_UNQUOTED = re.compile(r"[A-Za-z0-9_/\\\-+.$%*@?|]*")


def quote_run_dirs(argv: list[str]) -> list[str]:
    """`resume=<dir>` (or `hydra.run.dir=<dir>`, or a branch's `branch=<trunk dir>`) naming
    an existing dir whose name Hydra would misread, quoted for it: a sweep job's dir is
    named by its overrides, and `resume=<that dir>` as printed then works as given, as for
    any other run, and so does a trunk trained in a sweep."""
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if (
            sep
            and key.lstrip("+") in ("resume", "hydra.run.dir", "branch")
            and "'" not in value
            and not _UNQUOTED.fullmatch(value)
            and Path(value).is_dir()
        ):
            arg = f"{key}='{value}'"
        out.append(arg)
    return out


OUTPUT_DIRS = ("hydra.run.dir", "hydra.sweep.dir", "hydra.sweep.subdir")


def check_dir_names(overrides: dict[str, str]) -> None:
    """A run or sweep dir with a name longer than the file system takes (NAME_MAX, 255
    bytes on most): Hydra would fail making it (exit 1, a parent dir left behind). Only
    the literal text is counted: an interpolation (${seed}) only makes a name longer."""
    for key in OUTPUT_DIRS:
        path = overrides.get(key)
        if not path:
            continue
        top = _name_max(Path(path))
        for part in Path(path).parts:
            size = len(re.sub(r"\$\{[^}]*\}", "", part).encode())
            if size > top:
                raise ConfigError(
                    key, path, f"a name of {size} bytes in it; the file system takes at most {top}"
                )


def _name_max(path: Path) -> int:
    """The file system's longest file name where `path` would be made (255 if unknown)."""
    existing = next((p for p in [path, *path.parents] if p.is_dir()), Path("."))
    try:
        return os.pathconf(existing, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def check_composition(argv: list[str]) -> str:
    """Compose the config for these overrides before Hydra starts, so a typo'd key, an
    unknown group option or a bad override is a config error (exit 2, no run dir) like
    every other bad value, rather than Hydra's generic exit 1. Sweeps are expanded and
    every combination is checked, and the launcher's own keys (hydra/launcher=fused).
    A single new run is validated whole here too, so a bad value (a `_target_` that cannot
    be imported, a typo'd kwarg) leaves nothing on disk, and its job takes that result
    rather than validating again (runner/run/check.py); in a sweep each job still checks
    and records its own config, so one bad combination never stops the others.
    Returns a note for `python -m runner` to print: a preset's sweep started without -m
    (unswept_note), or ""."""
    if NO_COMPOSE & set(argv):
        return ""
    dirs = config_dirs(argv)
    try:
        check_config_dirs(dirs)
        check_config_dirs(searchpath_dirs(argv), key="hydra.searchpath")
        check_dir_names(given(argv))
    except ConfigError as err:
        config_error(err)
    overrides = [a for a in argv if not a.startswith("-") and "=" in a and a not in dirs]
    multirun = "-m" in argv or "--multirun" in argv

    try:
        first, *others = expand(overrides)
        composed = compose_config(first, with_hydra=True, config_dirs=dirs)
        check_launcher(composed.hydra.launcher)
        check_joblib(composed.hydra.launcher)
        check_sweeper(composed.hydra.sweeper, overrides, multirun)
        check_callbacks(composed.hydra.get("callbacks"))
        for combo in others:
            compose_config(combo, config_dirs=dirs)
        note = "" if multirun else unswept_note(composed.hydra.sweeper.get("params"), overrides)
        if not multirun and not composed.resume:
            from runner.run.check import validate_and_hand_on  # imports torch: once valid

            with open_dict(composed):
                del composed["hydra"]
            validate_and_hand_on(composed)  # the job takes the result: checked once
    except (HydraException, ConfigError, OmegaConfBaseException) as err:
        if (cause := resolver_error(err)) is not None:
            config_error(cause)
        hint = "" if isinstance(err, ConfigError) else primary_hint(dirs)
        print(f"config error: {one_line(err)}{hint}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    except TypeError:  # Hydra: a group given a list of values that are not option names
        found = group_list_error(overrides, dirs)
        if found is None:
            raise
        config_error(found)
    except yaml.YAMLError as err:  # a file from hydra.searchpath (--config-dir's are checked)
        print(f"config error: {' '.join(str(err).split())}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    except UnicodeDecodeError as err:
        print(f"config error: a config file Hydra read is not UTF-8 text ({err})", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    except (RecursionError, OSError) as err:  # an override nested too deep for the parser
        print(f"config error: an override nested too deep to read ({err})", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    except AssertionError as err:  # OmegaConf: a key set under a node that is null
        print(
            f"config error: an override sets a key under a node that is null ({err}); e.g. "
            "hydra.sweeper.params.<key>=... needs a preset that defines hydra.sweeper.params: "
            "sweep with <key>=a,b instead",
            file=sys.stderr,
        )
        sys.exit(EXIT_CONFIG)
    return note


def unswept_note(params: Any, overrides: list[str]) -> str:
    """What a preset's sweep (its hydra.sweeper.params) becomes without -m: one run at the
    config's own values of the swept keys the command does not give, named after the preset.
    `python -m runner +experiment=lecture_schedulers` trained one cosine job, no sweep and no
    report, and said nothing. Only a note: one job of a preset is a fair wish."""
    if not params:
        return ""
    unset = [k for k in params if k.lstrip("+~") not in given(overrides)]
    if not unset:
        return ""
    return (
        f"note: the preset sweeps {', '.join(unset)} (hydra.sweeper.params), but without -m "
        "this is one run at the config's own values of them; add -m to run the sweep and "
        "get its report"
    )


JOBLIB_LAUNCHER = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"


def check_joblib(launcher: Any) -> None:
    """hydra/launcher=joblib's n_jobs: 0 means nothing to joblib, which refuses it only once
    the sweep dir and its multirun.yaml are written (exit 1, with Hydra's hint)."""
    if launcher.get("_target_") != JOBLIB_LAUNCHER:
        return
    if launcher.get("n_jobs") == 0:  # an int: the launcher's structured config says so
        why = "must be the number of jobs at once (>= 1), or -1 for one per CPU core"
        raise ConfigError("hydra.launcher.n_jobs", 0, f"{why} (-2: all but one, ...)")


def primary_hint(dirs: list[str]) -> str:
    """What to add to a composition error when a user's config.yaml is the primary config:
    it replaces schedlab's conf/config.yaml whole, so a partial one lacks keys and groups."""
    for d in dirs:
        if (Path(d) / "config.yaml").is_file():
            return (
                f" ({Path(d) / 'config.yaml'} is used in place of schedlab's "
                "conf/config.yaml: start it from a copy of that file)"
            )
    return ""


def group_list_error(overrides: list[str], dirs: list[str]) -> ConfigError | None:
    """The override that gives a config group a list holding something other than option
    names (optimizer=[1,2]): Hydra fails on it with a TypeError from deep inside."""
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        value = override.value()
        names = isinstance(value, list) and all(isinstance(v, str) for v in value)
        group = any((Path(d) / key).is_dir() for d in [str(CONF), *dirs])
        if group and isinstance(value, list) and not names:
            why = f"{key}=<name>, or {key}=[<name>,<name>] to merge several"
            return ConfigError(key, value, f"a config group takes option names: {why}")
    return None


def resolver_error(err: BaseException) -> ConfigError | None:
    """The ConfigError a resolver raised (`${text_epoch_steps:...}` on a null value), found
    under OmegaConf's wrappers: said in its own words, without theirs. Only under those: a
    ConfigError that another ConfigError replaced says less than its replacement."""
    seen: BaseException | None = err
    while isinstance(seen, InterpolationResolutionError):
        seen = seen.__cause__ or seen.__context__
    return seen if seen is not err and isinstance(seen, ConfigError) else None


def config_error(err: ConfigError) -> NoReturn:
    print(f"config error: {err}", file=sys.stderr)
    sys.exit(EXIT_CONFIG)


def make_run_dir(target: str) -> bool:
    """Make hydra.run.dir before Hydra does: one it cannot make (a file in the way, no
    parent, no permission) is a config error naming it, not Hydra's error and hint with
    exit 1. False for a full or read-only disk, which Hydra's own write then reports in
    the one line every such failure gets (exit 1)."""
    try:
        Path(target).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        if err.errno in WRITE_ERRNOS:
            return False
        config_error(ConfigError("hydra.run.dir", target, f"cannot be made ({err.strerror})"))
    return True
