"""The LR range test: lr grid, smoothing, early stop, restoration, feed-forward into training."""

from __future__ import annotations

import csv
import math
import subprocess
import sys

import pytest
import torch

from runner.config.schema import run_spec
from runner.lr_find import cli as lr_find_cli
from runner.run.check import validate
from runner.run.train import train
from runner.train.builders import build_training_parts
from runner.train.range_test import lr_at, range_test, smoothed, suggest
from schedulers import ConfigError
from tests.helpers import make_cfg, read_metrics

FAST = ("logger=none", "trainer.progress=line")


def test_exp_mode_is_geometric_and_linear_mode_arithmetic():
    cfg = {"start_lr": 1e-5, "end_lr": 1.0, "num_iters": 11, "mode": "exp"}
    exp = [lr_at(i, cfg) for i in range(11)]
    assert exp[0] == pytest.approx(1e-5) and exp[-1] == pytest.approx(1.0)
    ratios = [b / a for a, b in zip(exp, exp[1:], strict=False)]
    assert ratios == pytest.approx([10**0.5] * 10)
    lin = [lr_at(i, {**cfg, "mode": "linear"}) for i in range(11)]
    steps = [b - a for a, b in zip(lin, lin[1:], strict=False)]
    assert steps == pytest.approx([(1.0 - 1e-5) / 10] * 10)


def test_smoothing_is_a_bias_corrected_ema():
    losses = [2.0, 1.0, 3.0, 0.5]
    beta = 0.9
    avg, expected = 0.0, []
    for i, x in enumerate(losses):
        avg = beta * avg + (1 - beta) * x
        expected.append(avg / (1 - beta ** (i + 1)))
    assert smoothed(losses, beta) == pytest.approx(expected)
    assert smoothed(losses, beta)[0] == pytest.approx(2.0)  # no pull towards 0 at the start
    assert smoothed(losses, 0.0) == losses


def test_suggestions_find_the_steepest_fall_and_the_minimum():
    lrs = [10 ** (-6 + i * 0.1) for i in range(61)]
    # a loss that falls fastest at lr = 1e-3 (logistic in log10 lr) and is lowest at 1e-1
    loss = [
        1 / (1 + math.exp(4 * (math.log10(lr) + 3))) + (max(0, math.log10(lr) + 1)) ** 2
        for lr in lrs
    ]
    s = suggest(lrs, loss)
    assert s["steepest"] == pytest.approx(1e-3)
    assert s["min_loss_div_10"] == pytest.approx(1e-2)


def test_range_test_on_digits_stops_on_divergence_and_restores_everything():
    cfg = make_cfg(*FAST, "optimizer.lr=1.0", "lr_find.num_iters=200", "lr_find.end_lr=100.0")
    _, data, model, optimizer = build_training_parts(run_spec(cfg))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt_before = optimizer.state_dict()
    rng_before = torch.get_rng_state()

    result = range_test(cfg.lr_find, model, optimizer, data, seed=0, batch_size=64)

    assert result.stopped_early and len(result.lrs) < 200  # lr 100 blows the loss up long before
    for lr in result.suggestions.values():
        assert cfg.lr_find.start_lr <= lr <= cfg.lr_find.end_lr
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert optimizer.state_dict()["state"] == opt_before["state"] == {}
    assert optimizer.param_groups[0]["lr"] == 1.0
    assert torch.equal(torch.get_rng_state(), rng_before)


def test_training_with_the_found_lr_beats_90_percent(tmp_path):
    cfg = make_cfg(*FAST, "optimizer.lr=find", "epochs=4")
    result = train(cfg, tmp_path)
    assert result.best_val_acc > 0.9
    with (tmp_path / "lr_find" / "lr_find.csv").open() as f:
        points = list(csv.DictReader(f))
    assert len(points) >= 10
    assert (tmp_path / "lr_find" / "lr_find.png").stat().st_size > 1000
    found = cfg.optimizer.lr  # replaced by the suggestion
    assert isinstance(found, float) and 1e-6 <= found <= 10
    assert read_metrics(tmp_path)[0]["lr/group0"] == pytest.approx(found)
    assert f"lr: {found}" in (tmp_path / "config.yaml").read_text()


def test_onecycle_gets_the_found_lr_as_max_lr(tmp_path):
    cfg = make_cfg(
        *FAST, "optimizer.lr=find", "scheduler=onecycle", "scheduler.max_lr=5.0", "epochs=2"
    )
    train(cfg, tmp_path)
    assert cfg.scheduler.max_lr is None  # so max_lr = the found optimizer.lr
    first = read_metrics(tmp_path)[0]["lr/group0"]
    assert first == pytest.approx(cfg.optimizer.lr / 25)  # OneCycle starts at max_lr / div_factor


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("lr_find.start_lr=0", "lr_find.start_lr"),
        ("lr_find.start_lr=-1e-3", "lr_find.start_lr"),
        ("lr_find.end_lr=1e-7", "lr_find.end_lr"),
        ("lr_find.num_iters=5", "lr_find.num_iters"),
        ("lr_find.mode=log", "lr_find.mode"),
        ("lr_find.smooth=1.0", "lr_find.smooth"),
        ("lr_find.diverge_threshold=0.5", "lr_find.diverge_threshold"),
        ("lr_find.suggestion=middle", "lr_find.suggestion"),
        ("optimizer.lr=search", "optimizer.lr"),
    ],
)
def test_bad_ranges_fail_before_training(override, key):
    with pytest.raises(ConfigError) as err:
        validate(make_cfg(override))
    assert err.value.key == key


@pytest.mark.slow
def test_cli_prints_both_suggestions_and_writes_plot_and_csv(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "runner.lr_find",
            "lr_find.num_iters=60",
            "logger=none",
            f"hydra.run.dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "steepest" in proc.stdout and "min_loss_div_10" in proc.stdout
    assert "optimizer.lr=" in proc.stdout
    assert (tmp_path / "lr_find.png").stat().st_size > 1000
    rows = list(csv.reader((tmp_path / "lr_find.csv").open()))
    assert rows[0] == ["lr", "loss", "smoothed_loss"] and len(rows) > 10


def test_a_test_that_diverges_at_once_is_a_config_error_naming_start_lr():
    cfg = make_cfg(*FAST, "lr_find.start_lr=100", "lr_find.end_lr=1000")
    _, data, model, optimizer = build_training_parts(run_spec(cfg))
    with pytest.raises(ConfigError) as err:
        range_test(cfg.lr_find, model, optimizer, data, seed=0, batch_size=64)
    assert err.value.key == "lr_find.start_lr" and "lower it" in str(err.value)


@pytest.mark.slow
@pytest.mark.parametrize("args", [
    ["optimizer.lrr=1"], ["scheduler=nope"], ["optimizer.lr=-1"],
    ["resume=somewhere"], ["-m", "optimizer.lr=0.1,0.2"], ["hydra.run.dir=afile/run"],
], ids=["typo", "option", "value", "resume", "sweep", "file in the way"])  # fmt: skip
def test_cli_config_errors_are_one_line_and_leave_nothing(tmp_path, args):
    """Before: Hydra made outputs/runs/<date>/ (or the resume= dir, or a multirun dir)
    first, and a typo'd key or unknown option was Hydra's own multi-line error with exit 1,
    a run dir that could not be made a traceback."""
    (tmp_path / "afile").write_text("")
    proc = subprocess.run(
        [sys.executable, "-m", "runner.lr_find", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("config error: ") and proc.stderr.count("\n") == 1
    assert [p.name for p in tmp_path.iterdir()] == ["afile"]


@pytest.mark.parametrize("args", [
    ["optimizer.lrr=1"], ["scheduler=nope"], ["resume=somewhere"],
    ["-m", "optimizer.lr=0.1,0.2"], ["hydra.run.dir=afile/run"],
], ids=["typo", "option", "resume", "sweep", "file in the way"])  # fmt: skip
def test_cli_config_errors_before_hydra_in_this_process(tmp_path, monkeypatch, capsys, args):
    """The refusals of test_cli_config_errors_are_one_line_and_leave_nothing that come
    before Hydra starts, from runner.lr_find.cli() in this process: the fast tier's run of
    runner/lr_find.py (that test's subprocesses are slow)."""
    (tmp_path / "afile").write_text("")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["runner.lr_find", *args])
    with pytest.raises(SystemExit) as exit_:
        lr_find_cli()
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("config error: ") and err.count("\n") == 1
    assert [p.name for p in tmp_path.iterdir()] == ["afile"]
