"""The config's path from `train()` (issue #36): validated in one pass, each group's node
handed once to the checker runner/run/check.py's table names for it; then typed once
(runner/config/schema.py `RunSpec`), and the typed spec, not the DictConfig, is what the
builders, the range test and the loop read."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import typing
from pathlib import Path

import pytest

from runner.config.schema import GROUPS, LrFind, RunSpec, Trainer, run_spec
from runner.run import check
from tests.helpers import make_cfg

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
                assert node is cfg[group]
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
