"""Schedule-free optimizers (issue #34, Defazio et al. 2024, the `schedulefree` package):
optimizer=schedulefree_sgd / schedulefree_adamw and any `_target_` class with train()/eval()
train in train mode and are validated, range-tested and checkpointed at their eval weights;
BatchNorm statistics are recomputed for those weights; a run resumes exactly; a schedule or
scheduler warmup on top of one warns naming both keys; fused sweeps train them separately."""

from __future__ import annotations

import logging
from itertools import islice

import pytest
import schedulefree
import torch
from torch.optim.swa_utils import update_bn

import runner.io.checkpoint
import runner.run.train
from runner.data.sets import batches
from runner.run.check import validate
from runner.run.train import train
from runner.sweep.fused import why_not_fusable
from runner.train import range_test as rt
from runner.train.builders import build_training_parts
from runner.train.steps import eval_weights
from schedulers import ConfigError
from tests.helpers import (
    comparable,
    make_cfg,
    read_metrics,
    resumed_and_straight,
    train_stopped_at_step,
)

BN = ("model=target", "model._target_=tests.user_models.BnNet")
SGD_SF = ("optimizer=schedulefree_sgd", "scheduler=none", "logger=none")
TARGET_SF = ("optimizer=target", "optimizer._target_=schedulefree.SGDScheduleFree",
             "scheduler=none", "logger=none")  # fmt: skip


def modes(optimizer) -> set[bool]:
    return {g["train_mode"] for g in optimizer.param_groups}


@pytest.mark.parametrize("optimizer", [SGD_SF, TARGET_SF], ids=["built_in", "target"])
def test_eval_weights_in_every_validation_and_snapshot_train_weights_in_every_step(
    tmp_path, monkeypatch, optimizer
):
    """Known by its train()/eval() methods, not by name: a `_target_` class too."""
    seen: dict[str, set[bool]] = {"step": set(), "validate": set(), "snapshot": set()}
    held = {}
    real_build, real_step = runner.run.train.build_run, runner.run.train.train_step
    real_eval, real_snap = runner.run.train.evaluate, runner.io.checkpoint.snapshot

    def build(*a, **kw):
        run = held["run"] = real_build(*a, **kw)
        real_switch = run.optimizer.eval

        def switch():  # counted when it moves the weights
            seen.setdefault("switches", []).append(modes(run.optimizer))
            real_switch()

        run.optimizer.eval = switch
        return run

    def step(model, opt, *a, **kw):
        seen["step"] |= modes(opt)
        return real_step(model, opt, *a, **kw)

    def evaluate(*a, **kw):
        seen["validate"] |= modes(held["run"].optimizer)
        return real_eval(*a, **kw)

    def snapshot(run, *a, **kw):
        seen["snapshot"] |= modes(run.optimizer)
        return real_snap(run, *a, **kw)

    monkeypatch.setattr(runner.run.train, "build_run", build)
    monkeypatch.setattr(runner.run.train, "train_step", step)
    monkeypatch.setattr(runner.run.train, "evaluate", evaluate)
    monkeypatch.setattr(runner.io.checkpoint, "snapshot", snapshot)
    assert train(make_cfg(*optimizer, "epochs=2"), tmp_path).status == "completed"
    switches = seen.pop("switches")
    assert seen == {"step": {True}, "validate": {False}, "snapshot": {False}}
    # one window an epoch, around validation and the snapshot: every DDP rank alike
    assert switches.count({True}) == 2
    saved = torch.load(tmp_path / "last.pt", weights_only=True)["optimizer"]
    assert {g["train_mode"] for g in saved["param_groups"]} == {False}


def test_eval_weights_switches_only_a_training_schedule_free_optimizer_and_restores_it():
    w = torch.nn.Parameter(torch.ones(3))
    opt = schedulefree.SGDScheduleFree([w], lr=0.1)
    with eval_weights(opt):  # fresh: eval mode until its first train(); left so
        assert modes(opt) == {False}
    assert modes(opt) == {False}
    opt.train()
    for g in (1.0, -3.0):  # after one step x = y = z: two
        w.grad = torch.full((3,), g)
        opt.step()
    y = w.detach().clone()
    with eval_weights(opt):
        x = w.detach().clone()
        with eval_weights(opt):  # nested (a snapshot inside the epoch end's window)
            assert modes(opt) == {False}
        assert modes(opt) == {False} and torch.equal(w, x)
    assert modes(opt) == {True} and not torch.equal(x, y)
    assert torch.allclose(w, y)
    plain = torch.optim.SGD([w], lr=0.1)
    with eval_weights(plain):  # an ordinary optimizer: nothing happens
        pass


@pytest.mark.slow
def test_bn_statistics_are_those_of_the_eval_weights_and_training_is_undisturbed(tmp_path):
    args = (*SGD_SF, *BN, "epochs=2", "optimizer.lr=0.2")
    on = train(make_cfg(*args, "trainer.bn_recalibrate_batches=3"), tmp_path / "on")
    off = train(make_cfg(*args, "trainer.bn_recalibrate_batches=0"), tmp_path / "off")
    assert on.status == off.status == "completed"
    # the training batches, dropout and data order are those of the run without it
    rows_on, rows_off = read_metrics(tmp_path / "on"), read_metrics(tmp_path / "off")
    assert [r["train/loss"] for r in rows_on] == [r["train/loss"] for r in rows_off]
    assert [r["val/loss"] for r in rows_on] != [r["val/loss"] for r in rows_off]

    # by hand, as the schedulefree README says: the eval weights (last.pt holds them), the
    # first 3 batches of the seed's order, the mean of their statistics
    state = torch.load(tmp_path / "on" / "last.pt", weights_only=True)["model"]
    _, data, model, _ = build_training_parts(make_cfg(*args))
    model.load_state_dict(state)
    order = torch.Generator().manual_seed(0)
    update_bn(islice(batches(data.x_train, data.y_train, 64, order), 3), model)
    norm = model.body[2]
    assert torch.allclose(norm.running_mean, state["body.2.running_mean"], atol=1e-6)
    assert torch.allclose(norm.running_var, state["body.2.running_var"], atol=1e-6)
    trained = torch.load(tmp_path / "off" / "last.pt", weights_only=True)["model"]
    assert not torch.allclose(trained["body.2.running_mean"], state["body.2.running_mean"])


@pytest.mark.slow
def test_streamed_data_recalibrates_from_its_loader_without_moving_training(tmp_path):
    """data=dataset not in memory: the batches come through the run's DataLoader, in an
    order of their own (the loader's epoch order is set again for training)."""
    args = (*SGD_SF, *BN, "epochs=1", "data=dataset", "data.in_memory=false")
    for n in (0, 3):
        cfg = make_cfg(*args, f"trainer.bn_recalibrate_batches={n}")
        assert train(cfg, tmp_path / str(n)).status == "completed"
    (off,), (on,) = read_metrics(tmp_path / "0"), read_metrics(tmp_path / "3")
    assert on["train/loss"] == off["train/loss"] and on["val/loss"] != off["val/loss"]


@pytest.mark.slow
def test_a_schedule_free_run_killed_mid_epoch_resumes_exactly(tmp_path, monkeypatch):
    """The checkpoint holds the eval weights and eval mode (its z and the averaging's
    counters in the optimizer state); the resumed run switches to train mode as the
    uninterrupted one did after the same snapshot, bit for bit."""
    args = ("optimizer=schedulefree_adamw", "scheduler=none", "logger=none", *BN, "epochs=3",
            "optimizer.warmup_steps=10", "trainer.bn_recalibrate_batches=2")  # fmt: skip
    run_dir = tmp_path / "run"
    train_stopped_at_step(monkeypatch, args, run_dir, 30)  # in the middle of epoch 1
    assert len(read_metrics(run_dir)) == 1
    saved = torch.load(run_dir / "last.pt", weights_only=True)["optimizer"]
    assert [(g["train_mode"], g["k"]) for g in saved["param_groups"]] == [(False, 23)]
    assert all("z" in s for s in saved["state"].values())
    rows, straight = resumed_and_straight(args, run_dir, tmp_path / "ref")
    assert rows == straight


@pytest.mark.slow
def test_a_target_schedule_free_optimizer_trains_like_the_built_in(tmp_path):
    common = ("epochs=2", "optimizer.lr=0.3", "scheduler=none", "logger=none")
    built_in = train(make_cfg("optimizer=schedulefree_sgd", *common), tmp_path / "a")
    target = train(make_cfg(*TARGET_SF, *common, "+optimizer.warmup_steps=0"), tmp_path / "b")
    assert built_in.status == target.status == "completed"
    assert comparable(read_metrics(tmp_path / "a")) == comparable(read_metrics(tmp_path / "b"))


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        (("optimizer=schedulefree_adamw", "scheduler=cosine"),
         ("optimizer=schedulefree_adamw with scheduler=cosine", "scheduler=none")),
        (("optimizer=schedulefree_sgd", "scheduler=step"),
         ("optimizer=schedulefree_sgd with scheduler=step",)),
        (TARGET_SF[:2] + ("scheduler=cosine",),
         ("optimizer._target_=schedulefree.SGDScheduleFree with scheduler=cosine",)),
        (("optimizer=schedulefree_sgd", "scheduler=cosine", "scheduler.warmup_epochs=2"),
         ("optimizer=schedulefree_sgd with scheduler.warmup_epochs=2",
          "optimizer.warmup_steps")),
    ],
)  # fmt: skip
def test_a_schedule_on_a_schedule_free_optimizer_warns_naming_both_keys(caplog, overrides, names):
    with caplog.at_level(logging.WARNING, logger="schedlab"):
        validate(make_cfg(*overrides))
    text = caplog.text
    assert all(name in text for name in names), text


def test_a_schedule_free_optimizer_without_a_schedule_does_not_warn(caplog):
    with caplog.at_level(logging.WARNING, logger="schedlab"):
        validate(make_cfg(*SGD_SF))
        validate(make_cfg("optimizer=sgd", "scheduler=cosine"))  # an ordinary one is not told
    assert "schedule-free" not in caplog.text


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (("optimizer=schedulefree_sgd", "optimizer.momentum=1.0"), "optimizer.momentum"),
        (("optimizer=schedulefree_sgd", "optimizer.momentum=0"), "optimizer.momentum"),
        (("optimizer=schedulefree_sgd", "+optimizer.nesterov=true"), "optimizer.nesterov"),
        (("optimizer=schedulefree_sgd", "optimizer.warmup_steps=-1"), "optimizer.warmup_steps"),
        (("optimizer=schedulefree_sgd", "optimizer.warmup_steps=1.5"), "optimizer.warmup_steps"),
        (("optimizer=schedulefree_adamw", "optimizer.r=-1"), "optimizer.r"),
        (("optimizer=schedulefree_adamw", "optimizer.betas=[0.0,0.999]"), "optimizer.betas"),
        (("optimizer=schedulefree_adamw", "optimizer.weight_lr_power=x"),
         "optimizer.weight_lr_power"),
        (("trainer.bn_recalibrate_batches=-1",), "trainer.bn_recalibrate_batches"),
        (("trainer.bn_recalibrate_batches=true",), "trainer.bn_recalibrate_batches"),
    ],
)  # fmt: skip
def test_bad_keys_are_config_errors_naming_the_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        validate(make_cfg(*overrides))
    assert err.value.key == key


def test_a_fused_sweep_trains_schedule_free_jobs_as_separate_runs():
    """The stacked FusedOptimizer keeps no second point: such jobs run on their own, as
    every `_target_` optimizer's already do."""
    reason = why_not_fusable(make_cfg("optimizer=schedulefree_sgd", "scheduler=none"))
    # the optimizers that fuse, not every built-in
    assert reason == "optimizer=schedulefree_sgd (fused: sgd, adam, adamw)"


def test_the_range_test_steps_a_schedule_free_optimizer_at_the_lrs_it_tries(monkeypatch):
    """It steps in train mode, evaluates (val_every) at the eval weights, and its own warmup
    is off during the test (the lr tried is the lr stepped), everything restored after."""
    cfg = make_cfg("optimizer=schedulefree_adamw", "optimizer.warmup_steps=50")
    _, data, model, optimizer = build_training_parts(cfg)
    seen: dict[str, set] = {"step": set(), "val": set(), "lr": set()}
    real_step, real_eval = rt.train_step, rt.evaluate

    def step(m, opt, *a, **kw):
        out = real_step(m, opt, *a, **kw)
        seen["step"] |= modes(opt)
        seen["lr"] |= {g["scheduled_lr"] == g["lr"] for g in opt.param_groups}
        return out

    def evaluate(*a, **kw):
        seen["val"] |= modes(optimizer)
        return real_eval(*a, **kw)

    monkeypatch.setattr(rt, "train_step", step)
    monkeypatch.setattr(rt, "evaluate", evaluate)
    test_cfg = {**cfg.lr_find, "num_iters": 20, "val_every": 5, "end_lr": 0.1}
    result = rt.range_test(test_cfg, model, optimizer, data, seed=0, batch_size=64, progress="line")
    assert seen == {"step": {True}, "val": {False}, "lr": {True}}
    assert len(result.lrs) == 4
    assert modes(optimizer) == {False} and optimizer.param_groups[0]["warmup_steps"] == 50
    assert optimizer.state_dict()["state"] == {}
