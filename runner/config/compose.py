"""Composing the config outside `@hydra.main`: for checks before Hydra starts, the preview,
and tests. Same config dir and same composition as `python -m runner`."""

from __future__ import annotations

import contextlib
import difflib
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf._utils import get_yaml_loader  # what OmegaConf.load reads with (2.3)

from schedulers import ConfigError, binder

CONF = Path(__file__).resolve().parents[2] / "conf"

# The user's `--config-dir`s of the command being composed, for the search path plugin
# (hydra_plugins/schedlab_config_dirs), which puts them in front of schedlab's conf/
USER_DIRS: list[str] = []


@contextlib.contextmanager
def searched_first(config_dirs: Sequence[str]) -> Iterator[None]:
    """While composing: the user's config dirs come before schedlab's conf/ in Hydra's search
    path (first match wins), so their `model/mlp.yaml` or `config.yaml` is the one used.
    Hydra itself puts a `--config-dir` after conf/, where a file of the same name as a
    built-in is never read."""
    before = USER_DIRS[:]
    USER_DIRS[:] = [os.path.abspath(d) for d in config_dirs]
    try:
        yield
    finally:
        USER_DIRS[:] = before


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
    parsed = OverridesParser.create().parse_overrides(overrides)
    (batch,) = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    return [list(combo) for combo in batch]


def compose_config(
    overrides: list[str], with_hydra: bool = False, config_dirs: Sequence[str] = ()
) -> Any:
    """The job's config; `with_hydra` keeps Hydra's own node (launcher, sweep dir, ...).
    `config_dirs` are a user's own config dirs (`--config-dir`), searched before conf/.
    A key its node does not have is a ConfigError (unknown_key)."""
    try:
        with searched_first(config_dirs), initialize_config_dir(str(CONF), version_base="1.3"):
            return compose("config", overrides=overrides, return_hydra_config=with_hydra)
    except ConfigCompositionException as err:
        typo = (
            own_component_error(one_line(err), overrides)
            or kept_on_resume(overrides, err)  # not Hydra's "+key", which resume= refuses too
            or unknown_key(err, overrides, config_dirs)
        )
        if typo is None:
            raise
        raise typo from None


def given(argv: list[str]) -> dict[str, str]:
    """The command's `key=value` overrides by key (`+` dropped, quotes around values too)."""
    return {
        k.lstrip("+"): v.strip("'\"")
        for k, v in (a.split("=", 1) for a in argv if not a.startswith("-") and "=" in a)
    }


# the groups whose `target` option takes a class of the user's by its import path
TARGET_GROUPS = ("model", "optimizer", "scheduler")


def own_component_error(message: str, overrides: list[str]) -> ConfigError | None:
    """A user's own class set on a built-in option: model._target_=mypkg.Net under the
    default model=mlp, or data.train's keys under data=digits. Hydra answers "use
    +model._target_=...", which hands the built-in's keys (name, hidden) to the user's class,
    a second error. What they need is the option that takes a `_target_`."""
    preset = re.search(r"In '([\w-]+)/([\w-]+)': Could not override '[\w-]+@\1\.", message)
    if preset is not None:  # its defaults' `override /model: x` read as experiment.model
        group, name = preset.groups()
        return ConfigError(
            f"+{group}",
            name,
            f"{group}/{name}.yaml overrides other groups, so it sets the config's own keys: "
            "start it with the line `# @package _global_` (as conf/experiment/*.yaml do)",
        )
    found = re.search(r"Could not override '([\w.]+)'", message)
    if found is None:
        return None
    key = found.group(1)
    value = given(overrides).get(key)
    group, _, rest = key.partition(".")
    if group in TARGET_GROUPS and rest == "_target_":
        return ConfigError(
            key,
            value,
            f"a class of your own takes {group}=target: {group}=target {key}={value} "
            f"(its other arguments: +{group}.<arg>=...; docs/project.md)",
        )
    split = rest.split(".")[0]
    no_split = f"Key '{split}' is not in struct" in message  # a built-in data set's node
    if group == "data" and split in ("train", "val") and (no_split or rest.endswith("_target_")):
        return ConfigError(
            key,
            value,
            "a Dataset of your own takes data=dataset, each split given as one node: "
            "data=dataset 'data.train={_target_: mypkg.MyData, root: data/train}' "
            "'data.val={_target_: mypkg.MyData, root: data/val}' (or a data/<name>.yaml of "
            "your own under --config-dir: docs/project.md, Your data)",
        )
    return None


def kept_on_resume(argv: list[str], err: Exception) -> ConfigError | None:
    """A resume= command that fails to compose because it sets a key of the saved run's own
    config groups (`resume=<dir> data.train_size=64`: the default data group has no such
    key, and Hydra advises `+data.train_size`, which resume= refuses too): that key, refused
    as resume= refuses a changed one, with the saved value. None for any other error."""
    keys = given(argv)
    value = keys.get("resume", "")
    failed = re.match(r"Could not override '([^']+)'", str(err))
    if failed is None or value.lower() in ("", "null", "none", "false"):
        return None
    key = failed.group(1)
    target = Path(keys.get("hydra.run.dir", "") if value.lower() == "true" else value)
    try:
        node: Any = yaml.safe_load((target / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None  # no run there, or a damaged one: resume's own checks say which
    for part in key.split("."):
        node = node.get(part, KeyError) if isinstance(node, dict) else KeyError
    if node is KeyError or key not in keys:
        return None  # a key the run has not either: Hydra's message stands
    try:
        new = yaml.safe_load(keys[key])
    except yaml.YAMLError:  # Hydra's grammar, not YAML's: the text as given
        new = keys[key]
    same = new == node  # Hydra cannot compose it either way
    return ConfigError(
        key,
        new,
        f"a resumed run keeps the config saved in {target}/config.yaml ({key}={node!r} there"
        + (" already): leave it out" if same else "): leave it out, or start a new run"),
    )


# Hydra's message for `optimizer.lrr=0.1`, a key its node does not have
_NOT_IN_NODE = re.compile(r"Could not override '([^']+)'\.\s+To append to your config use \+")


def unknown_key(
    err: ConfigCompositionException, overrides: Sequence[str], config_dirs: Sequence[str]
) -> ConfigError | None:
    """A typo'd key (`optimizer.lrr=0.1`) as start-up's check says `+optimizer.lrr=0.1`:
    unknown, the node's keys listed, the closest named. Hydra's own message tells the user
    to append it with `+`, which only moves the failure on (start-up refuses the key). In a
    node whose keys are a class's arguments (`_target_`) the class decides (target_key).
    None: not such an error (Hydra's stays)."""
    found = _NOT_IN_NODE.search(str(err))
    if found is None or found.group(1).startswith("hydra."):
        return None
    key = found.group(1)
    parent, _, name = key.rpartition(".")
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    given = [o for o in parsed if o.key_or_group == key]
    rest = [o.input_line or "" for o in parsed if o.key_or_group != key]
    try:
        cfg = compose_config(rest, config_dirs=config_dirs)
    except (HydraException, ConfigError):
        return None
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if not isinstance(node, DictConfig) or not given:
        return None
    values = OmegaConf.to_container(node, resolve=False)
    if "_target_" in values:
        return target_key(parent, values, given[0].input_line or key, given[0].value())
    keys = [k for k, v in values.items() if parent or not isinstance(v, dict)]  # root: no groups
    close = difflib.get_close_matches(name, keys, n=1)
    meant = f": did you mean {parent + '.' if parent else ''}{close[0]}?" if close else ""
    return ConfigError(
        key, given[0].value(), f"unknown key; {parent or 'the config'} has {keys}{meant}"
    )


def target_key(parent: str, node: dict[str, Any], line: str, value: Any) -> ConfigError:
    """`model.widht=8` where model is a class's arguments: a class that has no such argument
    is told as start-up's bind check tells `+model.widht=8` (docs/project.md); one that takes
    it needs only the `+` (a key the config file does not list yet)."""
    key = line.split("=", 1)[0]
    name = key.rpartition(".")[2]
    if node["_target_"] == "???":  # model=target with no class named yet: that first
        return ConfigError(f"{parent}._target_", "???", "must be set (it has no default)")
    try:
        target = binder.locate(parent, node)
    except ConfigError as err:  # not importable: that is the problem to fix first
        return err
    if binder.accepts(target, name) or binder.takes_any_keyword(target):
        why = f"{parent} does not list it; {binder.label(node)} takes it: give it as +{line}"
        return ConfigError(key, value, why)
    try:
        binder.need_call(parent, target, {name: value})
    except ConfigError as err:
        if err.key == key:  # "<class> has no argument '<name>'; it takes [...]"
            return err
    return ConfigError(key, value, f"{binder.label(node)} has no argument '{name}'")


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


# A config file is a few hundred values; an alias bomb ("billion laughs": each level an
# anchor repeated ten times) is a few lines that OmegaConf would expand into 10**9 nodes
YAML_MAX_VALUES = 100_000  # after aliases are expanded
YAML_MAX_DEPTH = 64


def check_yaml_files(config_dir: str | Path) -> None:
    """Every YAML file under a user's config dir reads as Hydra will need it, checked before
    Hydra reads any: otherwise a syntax error, a duplicate key, a !!python tag or bytes that
    are not UTF-8 end in PyYAML's or the codec's traceback, and an alias bomb in OmegaConf
    expanding it until memory runs out. Each problem is a ConfigError naming the file and
    line. Unused files are checked too: a sweep or a later override may select them."""
    for path in sorted(Path(config_dir).rglob("*.yaml")):
        hidden = any(p.startswith(".") for p in path.relative_to(config_dir).parts)
        if path.is_file() and not hidden:
            problem = yaml_problem(path)
            if problem is not None:
                raise ConfigError("--config-dir", str(path), problem)


def yaml_problem(path: Path) -> str | None:
    """Why Hydra cannot take this file as a config (None: it can)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        return f"not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start})"
    except OSError as err:
        return f"cannot be read ({err.strerror})"
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        if root is None:
            return None  # an empty file is an empty config
        problem = _node_problem(root)
        if problem is not None:
            return problem
        loaded = yaml.load(text, Loader=get_yaml_loader())  # duplicate keys, unknown tags
    except yaml.MarkedYAMLError as err:
        return _yaml_error(err)
    except yaml.YAMLError as err:
        return " ".join(str(err).split())
    except RecursionError:
        return f"nested deeper than {YAML_MAX_DEPTH} levels"
    if not isinstance(loaded, dict):
        return f"holds a {type(loaded).__name__}, where a config is a mapping (key: value lines)"
    return None


def _yaml_error(err: Any) -> str:
    """PyYAML's error on one line: where, what, and while doing what."""
    mark = err.problem_mark or err.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    while_ = f" ({err.context})" if err.context else ""
    return f"{where}{err.problem}{while_}"


def _node_problem(root: Any) -> str | None:
    """An alias bomb (too many values once aliases are expanded), an alias cycle, a
    nesting too deep, or a !!python tag (a config is data: Hydra's safe loader refuses
    them, with a traceback)."""
    sizes: dict[int, int] = {}  # id(node) -> its values counted with aliases expanded
    open_: set[int] = set()

    def size(node: Any, depth: int) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        where = f"line {node.start_mark.line + 1}"
        if depth > YAML_MAX_DEPTH:
            raise ValueError(f"{where}: nested deeper than {YAML_MAX_DEPTH} levels")
        if id(node) in open_:
            raise ValueError(f"{where}: an alias refers to a node that holds it (a cycle)")
        if node.tag.startswith("tag:yaml.org,2002:python/"):
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            raise ValueError(f"{where}: a {tag} tag; a config file holds data, not code")
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = node.value
        else:
            children = []
        open_.add(id(node))
        total = 1
        for child in children:
            total += size(child, depth + 1)
            if total > YAML_MAX_VALUES:
                raise ValueError(
                    f"{where}: expands to more than {YAML_MAX_VALUES} values through its "
                    "aliases (*name): an alias bomb?"
                )
        open_.discard(id(node))
        sizes[id(node)] = total
        return total

    try:
        size(root, 0)
    except ValueError as err:  # the first problem found
        return str(err)
    return None
