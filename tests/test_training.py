"""The loop in-process (Hydra compose API + train()): learning, seeding, schedules, divergence."""

from __future__ import annotations

import json
import math

import pytest

from runner.config.schema import run_spec
from runner.run.train import train
from tests.helpers import make_cfg, read_metrics

FAST = ("logger=none", "trainer.progress=line")


def _without_times(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def test_default_job_beats_90_percent_on_digits(tmp_path):
    cfg = make_cfg(*FAST)  # exactly `make train`, minus W&B
    result = train(cfg, tmp_path)
    assert result.status == "completed"
    assert result.best_val_acc > 0.90
    rows = read_metrics(tmp_path)
    assert len(rows) == cfg.epochs
    assert rows[-1]["val/acc"] > 0.90


def test_same_seed_same_metrics_other_seed_differs(tmp_path):
    def run(seed: int, name: str) -> list[dict]:
        train(make_cfg(*FAST, "epochs=3", f"seed={seed}"), tmp_path / name)
        return _without_times(read_metrics(tmp_path / name))

    first, again, other = run(0, "a"), run(0, "b"), run(1, "c")
    assert first == again
    assert [r["train/loss"] for r in first] != [r["train/loss"] for r in other]


def test_step_schedule_follows_its_closed_form(tmp_path):
    cfg = make_cfg(
        *FAST, "scheduler=step", "scheduler.step_size=2", "scheduler.gamma=0.5", "epochs=7"
    )
    train(cfg, tmp_path)
    lr0 = cfg.optimizer.lr
    for row in read_metrics(tmp_path):
        assert row["lr/group0"] == pytest.approx(lr0 * 0.5 ** (row["epoch"] // 2), rel=1e-12)


def test_constant_schedule_keeps_the_lr(tmp_path):
    train(make_cfg(*FAST, "scheduler=none", "epochs=3", "optimizer.lr=0.02"), tmp_path)
    assert [r["lr/group0"] for r in read_metrics(tmp_path)] == [0.02] * 3


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_adaptive_optimizers_learn_digits(tmp_path, optimizer):
    result = train(make_cfg(*FAST, f"optimizer={optimizer}", "epochs=5"), tmp_path)
    assert result.best_val_acc > 0.85


def test_lenet_learns_upsampled_digits(tmp_path):
    cfg = make_cfg(*FAST, "model=lenet", "epochs=4", "optimizer.lr=0.02")
    assert train(cfg, tmp_path).best_val_acc > 0.85


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mlp", "lenet", "resnet18"])
def test_every_model_trains_on_fake_images(tmp_path, model):
    cfg = make_cfg(
        *FAST, f"model={model}", "data=fake", "data.train_size=64", "data.val_size=16", "epochs=2"
    )
    result = train(cfg, tmp_path)
    rows = read_metrics(tmp_path)
    assert result.status == "completed" and len(rows) == 2
    assert all(math.isfinite(r["train/loss"]) and math.isfinite(r["val/loss"]) for r in rows)


def test_diverging_run_stops_and_is_marked(tmp_path):
    cfg = make_cfg(*FAST, "optimizer.lr=1e8", "scheduler=none", "epochs=10")
    result = train(cfg, tmp_path)
    assert result.status == "diverged"
    rows = read_metrics(tmp_path)
    assert len(rows) < 10
    assert not math.isfinite(rows[-1]["train/loss"])
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "diverged"


def test_amp_on_cpu_runs_in_bfloat16_and_learns(tmp_path):
    result = train(make_cfg(*FAST, "trainer.amp=true", "epochs=5"), tmp_path)
    assert result.status == "completed" and result.best_val_acc > 0.85


def test_channels_last_auto_means_conv_nets_on_cpu():
    from runner.train.builders import build_run

    assert build_run(run_spec(make_cfg("model=lenet", "trainer.device=cpu"))).channels_last
    assert not build_run(run_spec(make_cfg("model=mlp", "trainer.device=cpu"))).channels_last
    assert not build_run(
        run_spec(make_cfg("model=lenet", "trainer.channels_last=false"))
    ).channels_last


@pytest.mark.slow
def test_channels_last_conv_net_trains_like_the_default_layout(tmp_path):
    base = ("model=lenet", "epochs=2", "optimizer.lr=0.02", *FAST)
    train(make_cfg(*base, "trainer.channels_last=false"), tmp_path / "a")
    train(make_cfg(*base, "trainer.channels_last=true"), tmp_path / "b")
    a, b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    for ra, rb in zip(a, b, strict=True):  # same math, another memory layout
        assert rb["train/loss"] == pytest.approx(ra["train/loss"], rel=1e-4)
        assert rb["val/acc"] == pytest.approx(ra["val/acc"], abs=0.01)
