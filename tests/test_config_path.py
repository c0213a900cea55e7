"""The config's path from `train()` (issue #36): validated in one pass, each group's node
handed once to the checker runner/run/check.py's table names for it; then typed once
(runner/config/schema.py `RunSpec`), and the typed spec, not the DictConfig, is what the
builders, the range test and the loop read."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import itertools
import pickle
import sys
import typing
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from runner.config.schema import GROUPS, LrFind, RunSpec, Trainer, run_spec
from runner.data.sets import load_data, still_held
from runner.run import check
from runner.run import train as run_train
from runner.run.train import train
from schedulers.binder import plain
from tests.helpers import make_cfg, make_values

RUNNER = Path(__file__).resolve().parents[1] / "runner"
LOWER = ("train", "data", "io")  # below runner/run: they should get plain, typed values


def test_validation_is_one_pass_over_the_nodes(monkeypatch):
    """Each group's node reaches its checker once, in the table's order, and nothing else
    of the config does (the checkers share only what earlier ones found)."""
    seen = []

    def recording(group, checker):
        def wrapped(node, found):
            seen.append(group)
            if group:  # the top-level keys come as their own small node
                assert type(node) is dict and node == plain(cfg[group])  # resolved once
            return checker(node, found)

        return wrapped

    table = [(group, recording(group, checker)) for group, checker in check.CHECKS]
    monkeypatch.setattr(check, "CHECKS", tuple(table))
    cfg = make_cfg("epochs=2", "data=fake", "data.train_size=64", "data.val_size=32")
    checked = check.validate(cfg)
    assert sorted(seen) == sorted(["", *GROUPS])  # every node once
    assert seen[:4] == ["", "trainer", "data", "model"]  # the model is checked on the data
    assert checked.n_train == 64 and checked.steps_per_epoch == 2


def test_run_spec_is_the_typed_config():
    cfg = make_cfg("trainer.amp=false", "lr_find.num_iters=20", "seed=3")
    check.validate(cfg)
    spec = run_spec(cfg)
    assert isinstance(spec.trainer, Trainer) and spec.trainer.amp is False
    assert isinstance(spec.lr_find, LrFind) and spec.lr_find.num_iters == 20
    assert spec.seed == 3 and spec.data["batch_size"] == cfg.data.batch_size
    assert type(spec.optimizer) is dict  # plain values, `${...}` resolved
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.seed = 4  # type: ignore[misc]


@pytest.mark.parametrize(
    ("module", "function"),
    [
        ("runner.train.builders", "build_run"),
        ("runner.train.builders", "build_member"),
        ("runner.train.builders", "build_model"),
        ("runner.train.builders", "build_training_parts"),
        ("runner.train.range_test", "find_lr"),
        ("runner.run.train", "fit"),
        ("runner.run.train", "SingleModel"),
    ],
)
def test_builders_and_the_loop_read_the_typed_spec(module, function):
    target = getattr(importlib.import_module(module), function)
    hints = typing.get_type_hints(target.__init__ if isinstance(target, type) else target)
    first = next(iter(k for k in hints if k not in ("self", "return")))
    assert hints[first] is RunSpec, f"{function}({first}: {hints[first]})"


def test_lower_folders_take_no_dictconfig():
    """runner/train, runner/data and runner/io are handed a typed spec or plain values: no
    parameter annotated DictConfig."""
    found = []
    for folder in LOWER:
        for path in sorted((RUNNER / folder).glob("*.py")):
            tree = ast.parse(path.read_text())
            found += [
                f"{path.name}: {node.arg}"
                for node in ast.walk(tree)
                if isinstance(node, ast.arg)
                and node.annotation is not None
                and "DictConfig" in ast.unparse(node.annotation)
            ]
    assert not found


def test_checkpointer_and_track_take_plain_values():
    """The checkpointer gets its interval and whether to write (a run dir or None), the
    engine's track the typed trainer node: neither indexes a config by key."""
    from runner.io import checkpoint
    from runner.train import engine

    for module in (checkpoint, engine):
        tree = ast.parse(Path(module.__file__).read_text())
        indexed = [
            ast.unparse(n)
            for n in ast.walk(tree)
            if isinstance(n, ast.Subscript)
            and isinstance(n.value, ast.Name)
            and n.value.id in ("cfg", "trainer")
        ]
        assert not indexed, (module.__name__, indexed)


# -- the config's path from train(), measured as the code runs -------------------------------
ROOT = RUNNER.parent
# each folder's floor in the import layers (pyproject.toml): a higher floor imports lower ones
FLOORS = {"schedulers": 0, "runner/dist": 1, "runner/io": 2, "runner/config": 3,
          "runner/data": 4, "runner/train": 5, "runner/run": 6}  # fmt: skip
SMALL = ("logger=none", "trainer.progress=line", "model.hidden=[16]", "data=fake",
         "data.train_size=64", "data.val_size=32", "scheduler=step")  # fmt: skip


def _project_file(filename: str) -> str | None:
    """A code object's file as a path under the repository, if it is in a folder of FLOORS."""
    if not filename.startswith(str(ROOT)):
        return None
    rel = Path(filename).relative_to(ROOT).as_posix()
    return rel if rel.startswith(tuple(f + "/" for f in FLOORS)) else None


def config_path(
    cfg: Any,
    run_dir: Path,
    overrides: tuple[str, ...] = (),
    conversions: list[tuple[str, bool]] | None = None,
) -> list[str]:
    """The project file of each call, in the order made, that `train` hands the run's
    config: an OmegaConf node of it, the typed RunSpec or one of its groups, or plain
    values `plain` made of one of these (by identity, nested dicts and lists included).
    `conversions`, when given, gets each call of `plain` on the config: (the caller's
    name, whether it was handed an OmegaConf node, not values already plain)."""
    carried: set[int] = set()
    held: list[Any] = []  # what `carried` names, kept alive: no id is reused meanwhile
    carrying: set[int] = set()  # the frames of the calls that were handed the config
    suspended: list[FrameType] = []  # generator frames that yielded: a later "call" resumes
    files: dict[str, str | None] = {}
    path: list[str] = []

    def carry(value: Any) -> None:
        if isinstance(value, (dict, list)) or dataclasses.is_dataclass(value):
            carried.add(id(value))
            held.append(value)
            for v in (
                value.values()
                if isinstance(value, dict)
                else value
                if isinstance(value, list)
                else ()
            ):
                carry(v)

    def carries(value: Any) -> bool:
        if isinstance(value, RunSpec):
            for f in dataclasses.fields(value):
                carry(getattr(value, f.name))
            return True
        return OmegaConf.is_config(value) or id(value) in carried

    def hook(frame: FrameType, event: str, arg: Any) -> None:
        code = frame.f_code
        if code.co_filename not in files:
            files[code.co_filename] = _project_file(code.co_filename)
        file = files[code.co_filename]
        if file is None:
            return
        if event == "call":
            if frame in suspended:  # a generator resumed (a context manager's exit): it was
                return  # handed the config once, when it started, not again now
            names = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
            if any(carries(frame.f_locals.get(n)) for n in names):
                path.append(file)
                carrying.add(id(frame))
            if code is plain.__code__ and conversions is not None:
                node = frame.f_locals["node"]
                conversions.append((frame.f_back.f_code.co_name, OmegaConf.is_config(node)))
        elif event == "return" and code.co_flags & inspect.CO_GENERATOR:
            suspended.append(frame)  # at a yield, or done: either way not a new call later
        if event == "return" and id(frame) in carrying:
            carrying.discard(id(frame))
            if code.co_name == "plain":
                carry(arg)

    sys.setprofile(hook)
    try:
        train(cfg, run_dir, overrides)
    finally:
        sys.setprofile(None)
    return path


def stops_files_climbs(path: list[str]) -> tuple[int, int, int]:
    """Stops: the stretches of consecutive calls in one file; files: how many files;
    climbs: the moves from a file to one on a higher floor (back up the layers)."""
    stops = [f for i, f in enumerate(path) if i == 0 or path[i - 1] != f]
    floor = [next(n for d, n in FLOORS.items() if f.startswith(d + "/")) for f in stops]
    return len(stops), len(set(path)), sum(b > a for a, b in itertools.pairwise(floor))


# a small new run's config path as `config_path` measures it (92, 22, 29 at commit 4aaf540):
# (stops, files, climbs). Lower these when a change shortens the path. 71/20/26 before the
# language-model task: the model's no_decay default (optimizers -> models) and the FLOPs
# per token of its rows (train/lm.py) read the model's config: 5 stops, 1 file. 76/21/26
# -> 67/21/24: the build trains on the data validation loaded (Checked.data), reads the
# model's node once (its parts and no_decay default handed to the optimizer's split) and
# the trainer's averaging without a stop in builders.py of its own. -> 55/20/20: validation
# hands lower layers scalars or what it found (trainer.average/swa_start, lr_find's range,
# the model built on meta once, its part names and no_decay default for the optimizer's
# plan, the schedule-free warning's names), and runner/data reads plain values only.
# -> 50/20/19: the data's, optimizer's and scheduler's checkers sit beside what they call
# (runner/data/sets.py, runner/train/optimizers.py), so validation calls down once for
# them, and the scheduler library converts only a DictConfig (a run hands plain values).
# -> 48/20/19: rank 0's look at the run dir (`decide`) sits in runner/run/rundir.py beside
# what it calls, and the final config's text is made beside its typed spec (schema.py).
# -> 47/19/19: the build hands trainer.average's values to averaging.py (`averager`,
# `swa_schedule`), not the trainer node. -> 45/19/18: the start-up line's names are read
# off the final config's values where they are made (train.py `start_line`). -> 44/18/18:
# start-up's forward pass (model_check.py) gets the model validate_model built, a way to
# build it again on the CPU, and the keys its errors name (models.py `model_named`,
# `width_keys`), not the model's node. -> 43/17/18: a language model's FLOPs per token read
# gpt's depth and width off the GPT built (lm.py `token_stats`), not off the model's node.
# -> 42/16/18: a streamed run's loaders are told whether its data is data=dataset (whose
# in_memory decision they log again), not handed the data's node (stream.py `loaders_for`).
# -> 41/16/18: the measure no longer counts a generator resumed (the W&B logger's context
# manager closing) as a call handed the config: it was handed it once, when it opened.
# -> 42/16/18: width_keys reads the model's kwargs through binder.kwargs_of again, not a
# copy of its filter written to keep the library off the path.
# Where the goal (<= 40 stops, <= 8 files, <= 5 climbs) stops being a narrowing:
# the 16 files are the run (train, check, rundir), the one schema (schema.py and the
# library's declare, checks, binder), a registry per kind of component (sets, models,
# optimizers, the scheduler registry, loggers), the build (builders), the loop's Track
# (engine) and the data's paths and fingerprint; each reads only its own part. Fewer files
# means merging concerns or handing out loose scalars. Most climbs are validation's: each
# group's checker calls the schema (floor 0) and the next checker sits higher, a climb per
# group; each phase of `_run` (run dir, final config, build, record, fit) returns to
# runner/run once more.
NEW_RUN_PATH = (42, 16, 18)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> tuple[list[str], list[tuple[str, bool]]]:
    """A small new run's config path and its conversions (`config_path`), measured once."""
    conversions: list[tuple[str, bool]] = []
    run_dir = tmp_path_factory.mktemp("path") / "run"
    return config_path(make_cfg(*SMALL, "epochs=1"), run_dir, conversions=conversions), conversions


def test_the_config_path_of_a_new_run_stays_short(small_run):
    """Issue #36's measure of the config's path from train() (its goal: <= 40 stops, <= 8
    files, <= 5 climbs), held at today's numbers so that a path added back fails here."""
    path, _ = small_run
    assert path[:2] == ["runner/run/train.py"] * 2  # train -> _train: the measure sees it
    stops, files, climbs = stops_files_climbs(path)
    assert stops <= NEW_RUN_PATH[0] and files <= NEW_RUN_PATH[1] and climbs <= NEW_RUN_PATH[2]


# the readers that still convert values already plain: none now. The scheduler library's
# entries convert only a DictConfig (tests, fused members and tools hand those), and
# runner/data reads plain values only.
STILL_CONVERTING: set[str] = set()


def test_the_config_is_resolved_once_where_it_is_read_first(small_run):
    """`plain` turns the config's OmegaConf nodes into plain values where the run first
    reads them: its data paths made absolute, validate (once for every checker), the final
    config (config.yaml, the typed spec, W&B). The group checkers, the schedule's phases
    and the typed spec read those values as they are: a reader that converts again, or a
    DictConfig node handed further down, fails here."""
    _, conversions = small_run
    assert [c for c, node in conversions if node] == ["absolute_roots", "_validate", "_run"]
    assert {c for c, node in conversions if not node} <= STILL_CONVERTING


def test_branch_epoch_without_a_branch_is_refused_before_any_trunk_is_read():
    """A run that is no branch never enters runner/run/branch.py (validate's `use_branch`
    decides), but branch_epoch alone still names its key."""
    with pytest.raises(check.ConfigError) as err:
        check.validate(make_cfg(*SMALL, "branch_epoch=2"))
    assert err.value.key == "branch_epoch" and "needs branch=" in str(err.value)


def test_the_build_trains_on_the_data_validation_loaded(tmp_path, monkeypatch):
    """A new run loads its data once, to validate it: the build takes it from the check
    (`Checked.data`) instead of loading it again."""

    def loaded_again(cfg: Any) -> None:
        raise AssertionError("the run loaded its data a second time")

    monkeypatch.setattr(run_train, "load_data", loaded_again)
    assert train(make_cfg(*SMALL, "epochs=1"), tmp_path / "run").status == "completed"


def test_data_a_run_wrote_into_is_loaded_afresh():
    """`still_held`: the data validation loaded is trained on only while no run has written
    into its tensors (as load_data's cache decides); else the build loads it again."""
    data = load_data(make_values(*SMALL)["data"])
    assert still_held(data) and not still_held(None)
    data.x_train.add_(0.0)  # an in-place write bumps the tensor's version
    assert not still_held(data)
    assert still_held(load_data(make_values(*SMALL)["data"]))  # loaded afresh


def test_the_check_sends_its_data_to_no_other_rank():
    """Under DDP rank 0's check of a resumed run reaches the other ranks pickled: without
    the data set it loaded (each rank holds its own), equal otherwise."""
    checked = check.validate(make_cfg(*SMALL))
    assert checked.data is not None
    sent = pickle.loads(pickle.dumps(checked))
    assert sent.data is None and sent == checked


def test_validation_builds_the_model_once(monkeypatch):
    """The model its keys' check built on the meta device (validate_model) is the one the
    forward pass on the data runs (check_model_on_data): not built a second time."""

    def built_again(*args: Any) -> None:
        raise AssertionError("the model was built again to probe it")

    monkeypatch.setattr(check, "build_model", built_again)  # `rebuild`, on the CPU
    check.validate(make_cfg(*SMALL))
    check.validate(make_cfg("model=lenet", "data=fake", "data.train_size=8", "data.val_size=8"))


def test_the_optimizer_is_planned_on_the_model_facts_not_its_node():
    """optimizer.param_groups and no_decay are planned at start-up on what the model's
    check found (its part names, no_decay default, a probe on meta): the optimizer's
    functions are handed no model node."""
    from runner.train import optimizers

    for name in ("plan_groups", "split_params", "exempts_decay"):
        params = typing.get_type_hints(getattr(optimizers, name))
        assert not [p for p in params if "model_cfg" in p], name
    cfg = make_cfg(*SMALL, "optimizer.no_decay=true", "optimizer.param_groups={net.*:0.5}")
    assert check.validate(cfg).groups == (("net", 0.5), ("net/no_decay", 0.5))


def test_the_startup_line_names_what_trains(tmp_path, caplog):
    """A single run's first line names its model, data, device, optimizer and lr, schedule
    and length, as a fused member's does (`startup_line`), though the run reads the names
    off its final config's values once (`start_line`)."""
    caplog.set_level("INFO", logger="schedlab")
    overrides = (*SMALL, "epochs=1", "optimizer.lr=0.2")
    train(make_cfg(*overrides), tmp_path / "run")
    spec = run_spec(make_cfg(*overrides))
    line = run_train.startup_line(spec, torch.device("cpu"))
    assert line == "mlp on fake (cpu), sgd lr=0.2, scheduler=step, 1 epochs"
    assert line in caplog.messages
