"""True end-to-end runs of `python -m runner`: what a user types, what lands on disk."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from tests.helpers import CONF, cli_in_process, read_metrics, run_cli, wandb_records

EPOCHS = 5
LR = 0.05


@pytest.fixture(scope="module")
def cosine_run(tmp_path_factory) -> tuple[object, Path]:
    cwd = tmp_path_factory.mktemp("cli")
    run_dir = cwd / "run"
    proc = run_cli(
        "scheduler=cosine",
        f"epochs={EPOCHS}",
        f"optimizer.lr={LR}",
        "trainer.log_every_n_steps=10",
        f"hydra.run.dir={run_dir}",
        cwd=cwd,
    )
    return proc, run_dir


@pytest.mark.slow
def test_cosine_run_writes_closed_form_lrs_and_learns(cosine_run):
    proc, run_dir = cosine_run
    assert proc.returncode == 0, proc.stderr
    rows = read_metrics(run_dir)
    assert [r["epoch"] for r in rows] == list(range(EPOCHS))
    for r in rows:
        # CosineAnnealingLR, T_max = epochs, eta_min = 0: the lr the epoch's batches used.
        expected = 0.5 * LR * (1 + math.cos(math.pi * r["epoch"] / EPOCHS))
        assert r["lr/group0"] == pytest.approx(expected, rel=1e-12, abs=1e-15)
        assert set(r) >= {"train/loss", "train/acc", "val/loss", "val/acc", "time/epoch_s"}
    assert rows[-1]["val/loss"] < rows[0]["val/loss"]
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["scheduler"]["name"] == "cosine" and saved["epochs"] == EPOCHS
    assert "best val/acc" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_wandb_offline_run_holds_every_epoch(cosine_run):
    proc, run_dir = cosine_run
    assert proc.returncode == 0, proc.stderr
    records = wandb_records(run_dir)
    history = [r["history"]["item"] for r in records if r["type"] == "history"]
    epoch_rows = {h["epoch"]: h for h in history if "epoch" in h}
    for row in read_metrics(run_dir):
        logged = epoch_rows[row["epoch"]]
        assert logged["lr/group0"] == pytest.approx(row["lr/group0"])
        assert logged["train/loss"] == pytest.approx(row["train/loss"])
        assert logged["val/acc"] == pytest.approx(row["val/acc"])
    # 1437 training digits / 64 per batch = 23 steps per epoch -> a step row every 10 steps
    steps = [h["trainer/global_step"] for h in history if "train/step_loss" in h]
    assert steps == list(range(10, 23 * EPOCHS + 1, 10))
    (run_rec,) = [r["run"] for r in records if r["type"] == "run"]
    config = run_rec["config"]["update"]
    assert config["scheduler"]["name"] == "cosine" and config["epochs"] == EPOCHS
    assert "scheduler=cosine" in run_rec.get("tags", [])
    (exit_rec,) = [r["exit"] for r in records if r["type"] == "exit"]
    assert exit_rec.get("exit_code", 0) == 0


@pytest.mark.slow
def test_help_lists_groups_and_options(tmp_path):
    proc = run_cli("--help", cwd=tmp_path)
    assert proc.returncode == 0
    for group in ("model", "optimizer", "scheduler", "data", "logger", "trainer"):
        options = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
        assert f"{group}: {', '.join(options)}" in proc.stdout
    assert "scheduler: cosine, cosine_restarts, cyclic, exponential, lambda, linear" in proc.stdout


def test_unknown_group_option_lists_the_available_ones(tmp_path):
    proc = run_cli("scheduler=nope", cwd=tmp_path)
    assert proc.returncode != 0
    assert "scheduler/nope" in proc.stderr
    assert "Available options in 'scheduler'" in proc.stderr
    for option in ("cosine", "none", "step"):
        assert f" {option}," in proc.stderr  # on one line: "...: cosine, cosine_restarts, ..."


def test_an_unknown_group_option_in_a_sweep_stops_it_before_any_job(tmp_path):
    """As the README says: a bad value fails only its own job (test_sweeps), but no job can
    be composed from an unknown option, so the sweep stops at once, naming it."""
    proc = cli_in_process("-m", "scheduler=step,bogus", "epochs=1", "logger=none", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("config error: ") and "scheduler/bogus" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.iterdir())  # no sweep dir, no job


@pytest.mark.parametrize(("override", "says"), [
    ("hydra.callbacks.sweep_report.metric=bogus", "metric='bogus': must be one of best_val_acc"),
    ("hydra.callbacks.sweep_report.target_acc=abc", "target_acc='abc': must be a number in"),
    ("hydra.callbacks.sweep_report.target_acc=1.5", "target_acc=1.5: must be a number in"),
    ("+hydra.callbacks.sweep_report.foo=1", "foo=1: unknown key; the sweep report has"),
    ("hydra.callbacks.sweep_report._target_=nope.Nope", "_target_='nope.Nope': cannot be "),
])  # fmt: skip
def test_the_sweep_reports_keys_are_checked_before_any_job(tmp_path, override, says):
    """Found before: only after every job had trained (a warning, no report.md)."""
    proc = cli_in_process("-m", "seed=0,1", "epochs=1", "logger=none", override, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"config error: hydra.callbacks.sweep_report.{says}")
    assert proc.stderr.count("\n") == 1 and not list(tmp_path.iterdir())


@pytest.mark.slow
def test_missing_dataset_root_exits_2_naming_key_and_path(tmp_path):
    root = tmp_path / "no-such-root"
    run_dir = tmp_path / "run"
    proc = run_cli("data=mnist", f"data.root={root}", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == 2
    assert "data.root" in proc.stderr
    assert str(root / "MNIST" / "raw") in proc.stderr
    assert "download=True" in proc.stderr  # says how to fetch the files
    assert "Traceback" not in proc.stderr
    assert not run_dir.exists()  # found before Hydra made the run dir: nothing written
