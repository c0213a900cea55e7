"""The epoch engine's one feature written once: `momentum/<group>` beside `lr/<group>` when the
schedule cycles momentum, in single and fused runs, in metrics.jsonl, W&B and TensorBoard."""

from __future__ import annotations

import pytest
import torch

from runner.data.sets import steps_per_epoch, train_size
from runner.run.train import train
from schedulers import build_scheduler
from schedulers.binder import plain
from tests.helpers import (
    assert_same_rows,
    make_cfg,
    read_metrics,
    tensorboard_scalars,
    train_members,
    train_separate,
    wandb_records,
)


def replayed(cfg, key: str) -> tuple[list[float], list[float]]:
    """The momentum (SGD) or beta1 (Adam) torch's own scheduler sets, replayed on a one-weight
    optimizer: (at each epoch's start, at each step before it), as the rows should hold."""
    weight = torch.zeros(1, requires_grad=True)
    if cfg.optimizer.name == "adam":
        opt = torch.optim.Adam([weight], lr=cfg.optimizer.lr, betas=tuple(cfg.optimizer.betas))
    else:
        opt = torch.optim.SGD([weight], lr=cfg.optimizer.lr, momentum=cfg.optimizer.momentum)
    per_epoch = steps_per_epoch(train_size(plain(cfg.data)), cfg.data.batch_size)
    schedule = build_scheduler(cfg.scheduler, opt, epochs=cfg.epochs, steps_per_epoch=per_epoch)

    def now() -> float:
        group = opt.param_groups[0]
        return group["betas"][0] if key == "betas" else group["momentum"]

    at_epoch, at_step = [], []
    for _ in range(cfg.epochs):
        at_epoch.append(now())
        for _ in range(per_epoch):
            at_step.append(now())
            opt.step()
            schedule.step_batch()
        schedule.step_epoch({})
    return at_epoch, at_step


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_single_run_logs_the_momentum_onecycle_sets(tmp_path, optimizer):
    cfg = make_cfg(
        f"optimizer={optimizer}",
        "scheduler=onecycle",
        "epochs=3",
        "logger=[wandb,tensorboard]",
        "trainer.progress=line",
    )
    assert train(cfg, tmp_path).status == "completed"
    epochs, steps = read_metrics(tmp_path), read_metrics(tmp_path, "step")
    at_epoch, at_step = replayed(cfg, "betas" if optimizer == "adam" else "momentum")
    assert [r["momentum/group0"] for r in epochs] == at_epoch
    assert [s["momentum_step/group0"] for s in steps] == at_step
    assert len(set(at_step)) > 10  # it really cycles
    history = [r["history"]["item"] for r in wandb_records(tmp_path) if r["type"] == "history"]
    assert [h["momentum/group0"] for h in history if "val/acc" in h] == pytest.approx(at_epoch)
    scalars = tensorboard_scalars(tmp_path)
    assert [v for _, v in scalars["momentum/group0"]] == pytest.approx(at_epoch, rel=1e-6)


def test_no_momentum_key_where_the_schedule_leaves_it_alone(tmp_path):
    assert train(make_cfg("epochs=1", "logger=none", "scheduler=cyclic"), tmp_path)
    (row,) = read_metrics(tmp_path)
    assert "lr/group0" in row and not any(k.startswith("momentum") for k in row)


@pytest.mark.slow
def test_fused_group_with_cyclic_momentum_logs_it_as_separate_runs_do(tmp_path):
    cyclic = ["scheduler=cyclic", "scheduler.cycle_momentum=true", "scheduler.step_size_up=7"]
    jobs = [
        ["epochs=2", "logger=none", *cyclic],
        ["epochs=2", "logger=none", *cyclic, "seed=1", "optimizer.momentum=0.8"],
        ["epochs=2", "logger=none", "scheduler=onecycle"],
        ["epochs=2", "logger=none", "scheduler=step"],
    ]
    members = train_members(tmp_path, jobs)
    for member, overrides in zip(members, jobs, strict=True):
        separate = train_separate(tmp_path, overrides)
        assert_same_rows(member.run_dir, separate)
        rows, steps = read_metrics(member.run_dir), read_metrics(member.run_dir, "step")
        if "scheduler=step" in overrides:
            assert not any(k.startswith("momentum") for k in rows[0])
            continue
        at_epoch, at_step = replayed(member.cfg, "momentum")
        assert [r["momentum/group0"] for r in rows] == at_epoch
        assert [s["momentum_step/group0"] for s in steps] == at_step
        assert [r["momentum/group0"] for r in read_metrics(separate)] == at_epoch


def test_time_waiting_for_batches_is_its_own_column(tmp_path, monkeypatch):
    """time/data_s: the part of time/epoch_s spent waiting for the next batch, so a slow
    data source shows (here every batch takes 5 ms to arrive)."""
    import time

    import runner.run.train

    real = runner.run.train.batches

    def slow_batches(*args, **kwargs):
        for batch in real(*args, **kwargs):
            time.sleep(0.005)
            yield batch

    monkeypatch.setattr(runner.run.train, "batches", slow_batches)
    assert train(make_cfg("epochs=2", "logger=none"), tmp_path).status == "completed"
    rows = read_metrics(tmp_path)
    per_epoch = 23  # digits: 1437 training samples, batches of 64
    for row in rows:
        assert 0.005 * per_epoch <= row["time/data_s"] <= row["time/epoch_s"]
    monkeypatch.undo()
    assert train(make_cfg("epochs=1", "logger=none"), tmp_path / "fast").status == "completed"
    (fast,) = read_metrics(tmp_path / "fast")
    assert fast["time/data_s"] < 0.005 * per_epoch
