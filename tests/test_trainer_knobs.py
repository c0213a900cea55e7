"""Knobs every trainer has (#33): gradient clipping by norm or value (train/grad_norm),
gradient accumulation, label smoothing; with exact resume and fused groups."""

from __future__ import annotations

import contextlib
import math
import signal
from contextlib import nullcontext

import pytest
import torch
from torch.nn import functional as F

import runner.run.train
from runner.config.schema import run_spec
from runner.run.check import validate
from runner.run.train import train
from runner.sweep.fused import group_key
from runner.sweep.stacked import clip_members
from runner.train import optimizers, steps
from runner.train.builders import build_run
from runner.train.steps import train_step
from runner.train.stopping import StopFlag
from schedulers import ConfigError
from tests.helpers import (
    assert_same_rows,
    comparable,
    make_cfg,
    one_torch_thread,
    read_metrics,
    torchrun,
    train_members,
    train_separate,
)

FAST = ("logger=none", "trainer.progress=line")


def _weights(run_dir) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "last.pt", weights_only=True)["model"]


# -- config errors


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("trainer.grad_clip_norm=0", "trainer.grad_clip_norm"),
        ("trainer.grad_clip_norm=-1.0", "trainer.grad_clip_norm"),
        ("trainer.grad_clip_norm=big", "trainer.grad_clip_norm"),
        ("trainer.grad_clip_value=0", "trainer.grad_clip_value"),
        ("trainer.accumulate=0", "trainer.accumulate"),
        ("trainer.accumulate=1.5", "trainer.accumulate"),
        ("trainer.label_smoothing=1.0", "trainer.label_smoothing"),
        ("trainer.label_smoothing=-0.1", "trainer.label_smoothing"),
    ],
)
def test_bad_knob_values_are_config_errors_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=rf"^{key}="):
        validate(make_cfg(override))


def test_clipping_by_norm_and_by_value_at_once_is_a_config_error():
    with pytest.raises(ConfigError, match=r"^trainer\.grad_clip_value=0\.5: set one of"):
        validate(make_cfg("trainer.grad_clip_norm=1.0", "trainer.grad_clip_value=0.5"))


# -- clipping


def _one_sgd_step(
    scaler: torch.amp.GradScaler | None = None, **knobs
) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor | None]:
    """The default model's gradients of one batch, and its weights' change in one plain SGD
    step (lr 0.5, no momentum) taken with `knobs`; returns (grads, deltas, norm)."""
    cfg = make_cfg(*FAST, "optimizer.momentum=0", "optimizer.lr=0.5")
    run = build_run(run_spec(cfg))
    x, y = run.data.x_train[:64], run.data.y_train[:64]
    params = [p for g in run.optimizer.param_groups for p in g["params"]]
    before = [p.detach().clone() for p in params]
    run.model.zero_grad()
    F.cross_entropy(run.model(x), y).backward()
    grads = [p.grad.clone() for p in params]
    _, norm = train_step(
        run.model, run.optimizer, [(x, y, 1.0)], nullcontext(), scaler, params=params, **knobs
    )
    return grads, [p.detach() - b for p, b in zip(params, before, strict=True)], norm


def test_clip_norm_bounds_the_step_and_returns_the_norm_before_clipping():
    grads, deltas, norm = _one_sgd_step(clip_norm=0.01)
    true_norm = torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads]))
    assert true_norm > 0.1  # so clipping to 0.01 acts
    assert norm == pytest.approx(true_norm.item(), rel=1e-5)
    moved = torch.linalg.vector_norm(torch.cat([d.flatten() for d in deltas]))
    assert moved.item() == pytest.approx(0.5 * 0.01, rel=1e-3)  # lr x the clipped norm
    for g, d in zip(grads, deltas, strict=True):  # the direction kept
        torch.testing.assert_close(d, -0.5 * g * (0.01 / true_norm), rtol=1e-3, atol=1e-7)


def test_clip_value_clamps_each_gradient_element():
    grads, deltas, norm = _one_sgd_step(clip_value=1e-3)
    assert max(g.abs().max().item() for g in grads) > 1e-2
    true_norm = torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads]))
    assert norm == pytest.approx(true_norm.item(), rel=1e-5)
    for g, d in zip(grads, deltas, strict=True):
        torch.testing.assert_close(d, -0.5 * g.clamp(-1e-3, 1e-3), rtol=1e-5, atol=1e-8)


def test_clipping_under_a_grad_scaler_clips_the_unscaled_gradients():
    """fp16 AMP's GradScaler multiplies the loss: the gradients are unscaled before they are
    clipped (and measured), so the step equals the one without a scaler."""
    _, plain, plain_norm = _one_sgd_step(clip_norm=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    _, scaled, scaled_norm = _one_sgd_step(clip_norm=0.01, scaler=scaler)
    assert scaled_norm.item() == pytest.approx(plain_norm.item(), rel=1e-5)
    for a, b in zip(scaled, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-8)


def test_a_run_logs_train_grad_norm_as_the_epoch_mean_only_when_clipping(tmp_path, monkeypatch):
    """train/grad_norm is the mean over the epoch's optimizer steps of the norm before
    clipping; a clip that never acts leaves the run as it was; without clipping no norm is
    computed (it costs ~15 % of an MLP step) and the row has no such key."""
    norms, real = [], steps.clip_and_step

    def recording(*a, **kw):
        norm = real(*a, **kw)
        norms.append(None if norm is None else norm.item())
        return norm

    monkeypatch.setattr(steps, "clip_and_step", recording)
    args = (*FAST, "epochs=2")
    train(make_cfg(*args, "trainer.grad_clip_norm=1e9"), tmp_path / "clip")
    clipped = read_metrics(tmp_path / "clip")
    per_epoch = math.ceil(1437 / 64)
    assert len(norms) == 2 * per_epoch and None not in norms
    for epoch, row in enumerate(clipped):
        mean = sum(norms[epoch * per_epoch : (epoch + 1) * per_epoch]) / per_epoch
        assert row["train/grad_norm"] == pytest.approx(mean, rel=1e-6)
    norms.clear()
    train(make_cfg(*args), tmp_path / "plain")
    plain = read_metrics(tmp_path / "plain")
    assert set(norms) == {None} and all("train/grad_norm" not in r for r in plain)
    without = [{k: v for k, v in r.items() if k != "train/grad_norm"} for r in clipped]
    assert comparable(without) == comparable(plain)
    train(make_cfg(*args, "epochs=1", "trainer.grad_clip_value=1e-3"), tmp_path / "value")
    assert read_metrics(tmp_path / "value")[0]["train/grad_norm"] > 0


# -- accumulation


def test_accumulate_k_trains_like_one_batch_k_times_as_large(tmp_path, monkeypatch):
    """4 micro-batches of 16 per optimizer step = batches of 64 in the same order, the
    epoch's last step included (1437 samples: 90 micro-batches, the last group has 2 of
    them, 29 samples, as the last batch of 64 has); a per-step schedule counts optimizer
    steps, in training and at start-up validation."""
    args = [*FAST, "model=mlp", "epochs=2", "scheduler=onecycle", "scheduler.interval=step",
            "trainer.log_every_n_steps=5"]  # fmt: skip
    train(make_cfg(*args, "data.batch_size=16", "trainer.accumulate=4"), tmp_path / "acc")
    train(make_cfg(*args, "data.batch_size=64"), tmp_path / "big")
    for kind in ("epoch", "step"):
        a, b = read_metrics(tmp_path / "acc", kind), read_metrics(tmp_path / "big", kind)
        assert len(a) == len(b) > 0
        for ra, rb in zip(a, b, strict=True):
            assert ra.keys() == rb.keys()
            for key, value in ra.items():
                if isinstance(value, float) and not key.startswith("time/"):
                    assert value == pytest.approx(rb[key], rel=1e-5, abs=1e-7), key
    acc, big = _weights(tmp_path / "acc"), _weights(tmp_path / "big")
    for name in big:
        torch.testing.assert_close(acc[name], big[name], rtol=1e-4, atol=1e-6)
    last = torch.load(tmp_path / "acc" / "last.pt", weights_only=True)
    assert last["progress"]["step"] == 2 * math.ceil(1437 / 64)
    # start-up validation checks the schedule against the same count of optimizer steps
    seen = []
    monkeypatch.setattr(
        optimizers, "validate_scheduler", lambda *a, **kw: seen.append(kw["steps_per_epoch"])
    )
    validate(make_cfg(*args, "data.batch_size=16", "trainer.accumulate=4"))
    assert seen == [math.ceil(1437 / 64)]


# -- label smoothing


def test_label_smoothing_is_in_the_train_loss_and_not_in_val_loss(tmp_path):
    """With an lr too small to move the weights, train/loss is F.cross_entropy with
    label_smoothing over the train set at the initial weights; val/loss stays plain."""
    args = [*FAST, "epochs=1", "optimizer.lr=1e-12", "trainer.label_smoothing=0.2"]
    train(make_cfg(*args), tmp_path)
    row = read_metrics(tmp_path)[0]
    run = build_run(run_spec(make_cfg(*args)))  # the same seed: the same initial weights
    with torch.no_grad():
        data, model = run.data, run.model
        smoothed = F.cross_entropy(model(data.x_train), data.y_train, label_smoothing=0.2)
        plain_train = F.cross_entropy(model(data.x_train), data.y_train)
        plain_val = F.cross_entropy(model(data.x_val), data.y_val)
    assert smoothed.item() != pytest.approx(plain_train.item(), rel=1e-3)
    assert row["train/loss"] == pytest.approx(smoothed.item(), rel=1e-5)
    assert row["val/loss"] == pytest.approx(plain_val.item(), rel=1e-5)


# -- exact resume


def test_a_run_with_accumulate_and_clipping_stopped_mid_epoch_resumes_exactly(
    tmp_path, monkeypatch
):
    """Stopped in epoch 1 after 3 optimizer steps, resumed: the rows equal the uninterrupted
    run's. Checkpoints are taken at epochs' ends, where no gradients are half accumulated
    (an epoch's last group is stepped), so the checkpoint needs no accumulation state."""
    args = [*FAST, "epochs=3", "trainer.checkpoint_interval_s=0", "trainer.accumulate=3",
            "trainer.grad_clip_norm=0.5", "trainer.label_smoothing=0.1",
            "scheduler=onecycle", "scheduler.interval=step"]  # fmt: skip
    run_dir, stop, seen = tmp_path / "run", StopFlag(), []
    real = runner.run.train.train_step
    per_epoch = math.ceil(math.ceil(1437 / 64) / 3)

    def step_then_stop(*a, **kw):
        seen.append(len(a[2]))  # micro-batches in this step
        if len(seen) == per_epoch + 3:
            stop.signum = signal.SIGINT
        return real(*a, **kw)

    monkeypatch.setattr(runner.run.train, "train_step", step_then_stop)
    assert train(make_cfg(*args), run_dir, stop=stop).status == "interrupted"
    monkeypatch.undo()
    assert seen[:per_epoch] == [3] * (per_epoch - 1) + [23 - 3 * (per_epoch - 1)]
    given = [f"resume={run_dir}"]
    assert train(make_cfg(*given), run_dir, overrides=given).status == "completed"
    train(make_cfg(*args), tmp_path / "ref")
    assert comparable(read_metrics(run_dir)) == comparable(read_metrics(tmp_path / "ref"))
    assert "train/grad_norm" in read_metrics(run_dir)[-1]


# -- fused groups


def test_clip_members_clips_each_members_slice_as_torch_clips_a_model():
    torch.manual_seed(0)
    k = 3
    params = [torch.zeros(k, 5, 4, requires_grad=True), torch.zeros(k, 4, requires_grad=True)]
    for p in params:
        p.grad = torch.randn_like(p) * torch.tensor([0.1, 10.0, 10.0]).view(
            -1, *[1] * (p.dim() - 1)
        )
    members = [[p.grad[i].clone().requires_grad_() for p in params] for i in range(k)]
    wanted = [(1.0, None), (None, 0.3), (None, None)]  # by norm, by value, no clipping
    norms = clip_members(params, [w[0] for w in wanted], [w[1] for w in wanted])
    for i, (max_norm, max_value) in enumerate(wanted):
        own = [torch.zeros_like(g, requires_grad=True) for g in members[i]]
        for o, g in zip(own, members[i], strict=True):
            o.grad = g.detach().clone()
        expected = torch.nn.utils.get_total_norm([o.grad for o in own])
        if max_norm is not None:
            torch.nn.utils.clip_grad_norm_(own, max_norm)
        if max_value is not None:
            torch.nn.utils.clip_grad_value_(own, max_value)
        assert norms[i].item() == pytest.approx(expected.item(), rel=1e-6)
        for p, o in zip(params, own, strict=True):
            torch.testing.assert_close(p.grad[i], o.grad)


@pytest.mark.slow
def test_fused_members_clip_their_own_gradients_like_separate_runs(tmp_path):
    """Members clip by their own norm or value (or not at all), accumulate and smooth
    labels as the group does: each equals its separate run, train/grad_norm included."""
    common = ["epochs=2", "logger=none", "trainer.accumulate=3", "trainer.label_smoothing=0.1",
              "trainer.log_every_n_steps=5"]  # fmt: skip
    jobs = [
        [*common, "trainer.grad_clip_norm=0.3", "seed=1"],
        [*common, "trainer.grad_clip_value=0.005", "seed=2", "scheduler=onecycle",
         "scheduler.interval=step"],
        [*common, "seed=3"],
    ]  # fmt: skip
    members = train_members(tmp_path, jobs)
    assert [m.result.status for m in members] == ["completed"] * 3
    for member, overrides in zip(members, jobs, strict=True):
        assert_same_rows(member.run_dir, train_separate(tmp_path, overrides))
    rows = [read_metrics(m.run_dir)[-1] for m in members]
    assert ["train/grad_norm" in r for r in rows] == [True, True, False]


# -- DDP


def test_a_step_holds_the_all_reduce_back_on_every_micro_batch_but_the_last():
    """`no_sync` (DDP's) is entered around the backward of each micro-batch that does not
    step, so gradients cross ranks once per optimizer step."""
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    entered = []

    @contextlib.contextmanager
    def no_sync():
        entered.append(sum(p.grad is not None for p in model.parameters()))
        yield

    micro = [(torch.randn(5, 4), torch.randint(0, 3, (5,)), 1 / 3) for _ in range(3)]
    out, _ = train_step(model, optimizer, micro, nullcontext(), None, no_sync=no_sync)
    assert len(out) == 3 and entered == [0, 2]  # before the 1st and 2nd backward, not the 3rd


@pytest.mark.slow
def test_two_ddp_ranks_accumulating_and_clipping_match_one_process(tmp_path):
    """Under torchrun (CPU, gloo) micro-batches that do not step keep their gradients on
    each rank (DDP's no_sync), the step's all-reduce sums them, then each rank clips the
    same averaged gradients: two ranks train like one process with the same knobs."""
    args = ["epochs=2", "data.batch_size=32", "trainer.accumulate=3",
            "trainer.grad_clip_norm=0.5", "trainer.label_smoothing=0.1",
            "trainer.progress=line"]  # fmt: skip
    ddp = torchrun(
        ["logger=none", "trainer.strategy=ddp", *args, f"hydra.run.dir={tmp_path / 'ddp'}"],
        cwd=tmp_path,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    with one_torch_thread():
        assert train(make_cfg(*args, "logger=none"), tmp_path / "one").status == "completed"
    a, b = read_metrics(tmp_path / "ddp"), read_metrics(tmp_path / "one")
    assert len(a) == len(b) == 2
    for ra, rb in zip(a, b, strict=True):
        assert ra["lr/group0"] == rb["lr/group0"]
        for key in ("train/loss", "train/acc", "val/loss", "val/acc", "train/grad_norm"):
            assert ra[key] == pytest.approx(rb[key], abs=1e-4), key


def test_jobs_differing_in_clipping_fuse_and_in_accumulation_or_smoothing_do_not():
    """Clipping is each member's own; accumulation and label smoothing shape every member's
    step and loss alike, so they split a sweep into fused groups."""
    base = group_key(make_cfg())
    assert group_key(make_cfg("trainer.grad_clip_norm=1.0")) == base
    assert group_key(make_cfg("trainer.grad_clip_value=0.1")) == base
    assert group_key(make_cfg("trainer.accumulate=2")) != base
    assert group_key(make_cfg("trainer.label_smoothing=0.1")) != base
