"""#36's twins merged: one `_target_` binder (schedulers/binder.py) for every component,
one DictConfig -> dict conversion, and numpy's RNG state read in place only where numpy's
layout is the one checked."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from runner.io.rngs import NumpyGlobalState, numpy_state
from runner.run.check import validate
from schedulers import ConfigError
from schedulers.binder import key_named_in, plain
from tests.helpers import make_cfg

ROOT = Path(__file__).resolve().parents[1]
BLOBS = "tests.user_datasets.Blobs"
# `_args_` on every kind of `_target_` node: one rule, the scheduler's (arguments by name).
# Before, a model or optimizer's `_args_` was left out of the binding (a required argument
# given by it was "missing") and then passed to Hydra before the runner's own arguments.
ARGS = [
    ["model=target", "model._target_=tests.user_models.SmallCNN", "+model._args_=[10]"],
    ["optimizer=target", "optimizer._target_=torch.optim.SGD", "+optimizer._args_=[]"],
    ["scheduler=target", "scheduler._target_=torch.optim.lr_scheduler.StepLR",
     "+scheduler.step_size=3", "+scheduler._args_=[]"],
    ["data=dataset", f"data.train={{_target_:{BLOBS},_args_:[90]}}",
     f"data.val={{_target_:{BLOBS},size:30}}"],
]  # fmt: skip


@pytest.mark.parametrize("overrides", ARGS, ids=["model", "optimizer", "scheduler", "dataset"])
def test_args_is_refused_on_every_target_node_naming_it(overrides):
    with pytest.raises(ConfigError) as err:
        validate(make_cfg(*overrides))
    assert err.value.key.endswith("._args_") and "by name" in err.value.rule, str(err.value)


def test_a_scheduler_class_that_cannot_be_imported_says_why():
    """The runner's message wins: hydra's cause ('No module named ...'), not its first line
    ("Error loading '...':"), which the scheduler's copy of locate gave."""
    with pytest.raises(ConfigError) as err:
        validate(make_cfg("scheduler=target", "scheduler._target_=nopkg.sched.Cosine"))
    assert err.value.key == "scheduler._target_"
    assert "No module named 'nopkg'" in err.value.rule, err.value.rule


def test_a_constructors_message_names_its_key_in_any_case():
    """The scheduler copy's matching wins (any case), with the runner's fallback unless the
    caller gives one: 'Width must be > 0' names model.width, not model._target_."""
    assert key_named_in("model", "Width must be > 0", ["width", "depth"]) == "model.width"
    assert key_named_in("model", "bad shape", ["width"]) == "model._target_"
    assert key_named_in("scheduler", "bad", ["T_max"], fallback="scheduler") == "scheduler"
    assert key_named_in("optimizer", "Invalid max_lr", ["lr", "max_lr"]) == "optimizer.max_lr"


def test_target_and_hydra_keys_are_defined_once():
    """The twins: `_target_` was defined three times, Hydra's keys twice (and differently)."""
    sources = [p.read_text() for d in ("runner", "schedulers") for p in (ROOT / d).rglob("*.py")]
    assert sum(len(re.findall(r'^TARGET = "_target_"', s, re.M)) for s in sources) == 1
    assert sum(len(re.findall(r"^HYDRA_KEYS = ", s, re.M)) for s in sources) == 1
    assert not (ROOT / "runner" / "core" / "targets.py").exists()


def test_plain_resolves_omegaconf_nodes_and_passes_the_rest():
    cfg = OmegaConf.create({"a": 2, "b": "${a}", "c": [{"d": "${a}"}]})
    assert plain(cfg) == {"a": 2, "b": 2, "c": [{"d": 2}]}
    assert plain(cfg.c) == [{"d": 2}] and type(plain(cfg)) is dict
    given = {"x": 1}
    assert plain(given) is given and plain(None) is None


def test_numpy_state_is_read_in_place_on_this_numpy():
    """Fails when numpy lays its global generator's state out otherwise (or drops
    np.random.get_bit_generator): the runner then calls get_state() at every read, still
    right but ~0.2 ms a streamed batch slower. Update runner/io/rngs.py for that numpy."""
    assert numpy_state.reads_in_place, f"numpy {np.__version__}: see runner/io/rngs.py"


def test_another_numpy_layout_falls_back_to_get_state(monkeypatch):
    """The layout is checked against get_state() once: when the words read in place are not
    the generator's, every read is numpy's own get_state()."""
    real = np.random.get_state
    monkeypatch.setattr(np.random, "get_state", lambda: ("MT19937", real()[1] + 1, *real()[2:]))
    other = NumpyGlobalState()
    monkeypatch.setattr(np.random, "get_state", real)
    assert not other.reads_in_place
    np.random.seed(5)
    first = other()
    np.random.rand()
    assert not np.array_equal(other()[1], first[1])
    assert np.array_equal(other()[1], np.random.get_state()[1])
