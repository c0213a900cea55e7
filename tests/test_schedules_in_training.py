"""Schedules inside the real loop: every option, per-batch stepping, Plateau, param groups."""

from __future__ import annotations

import csv
import math
import subprocess
import sys

import pytest
import torch

from runner.preview import main as preview_main
from runner.preview import simulate
from runner.run.check import validate
from runner.run.train import train
from schedulers import ConfigError
from schedulers.lecture import main as lecture_main
from schedulers.lecture import run_toy
from tests.helpers import CONF, make_cfg, read_metrics

FAST = ("logger=none", "trainer.progress=line")
# every option that is a schedule by itself (`target` names no class until it is given one)
SCHEDULERS = sorted(p.stem for p in (CONF / "scheduler").glob("*.yaml") if p.stem != "target")


# wsd's default 0.2 of the 4 epochs after its warmup rounds to no decay (a config error)
DECAYS_IN_6_EPOCHS = {"wsd": ["scheduler.decay_fraction=0.5"]}


@pytest.mark.parametrize("name", [s for s in SCHEDULERS if s != "plateau"])
def test_loop_lrs_equal_the_preview_for_every_schedule(tmp_path, name):
    extra = DECAYS_IN_6_EPOCHS.get(name, [])
    cfg = make_cfg(*FAST, f"scheduler={name}", "epochs=6", "optimizer.lr=0.05", *extra)
    train(cfg, tmp_path)
    logged = [r["lr/group0"] for r in read_metrics(tmp_path)]
    assert logged == [row[0] for row in simulate(cfg)["per_epoch"]]
    assert all(r["val/acc"] > 0 for r in read_metrics(tmp_path))


def test_per_batch_schedule_logs_the_lr_of_every_step(tmp_path):
    cfg = make_cfg(*FAST, "scheduler=onecycle", "epochs=3", "trainer.log_every_n_steps=0")
    train(cfg, tmp_path)
    steps = read_metrics(tmp_path, kind="step")
    spe = 23  # 1437 digits / 64 per batch
    assert [s["trainer/global_step"] for s in steps] == list(range(1, 3 * spe + 1))
    # torch's OneCycleLR over the whole run, stepped once per batch
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.optimizer.lr, momentum=0.9)
    ref = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.optimizer.lr, total_steps=3 * spe)
    expected = []
    for _ in range(3 * spe):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    assert [s["lr_step/group0"] for s in steps] == expected
    assert len({s["lr_step/group0"] for s in steps[:spe]}) == spe  # it moves inside an epoch
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [0, 1, 2]  # epoch rows as before


def test_plateau_is_fed_the_monitored_val_metric(tmp_path):
    cfg = make_cfg(
        *FAST,
        "scheduler=plateau",
        "scheduler.monitor=val/acc",
        "scheduler.mode=max",
        "scheduler.patience=0",
        "scheduler.factor=0.5",
        "epochs=12",
    )
    train(cfg, tmp_path)
    rows = read_metrics(tmp_path)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.optimizer.lr)
    ref = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=0)
    for row in rows:
        assert row["lr/group0"] == opt.param_groups[0]["lr"]
        ref.step(row["val/acc"])
    assert rows[-1]["lr/group0"] < cfg.optimizer.lr  # val/acc did plateau at some point


def test_monitor_must_be_a_metric_the_loop_produces():
    with pytest.raises(ConfigError) as err:
        validate(make_cfg("scheduler=plateau", "scheduler.monitor=val/accuracy"))
    assert err.value.key == "scheduler.monitor"
    assert "val/acc" in str(err.value)


def test_param_groups_give_named_parts_their_own_lr(tmp_path):
    cfg = make_cfg(
        *FAST,
        "model=lenet",
        "scheduler=step",
        "optimizer.param_groups={features: 1.0, classifier: 0.1}",
        "epochs=2",
        "optimizer.lr=0.02",
    )
    train(cfg, tmp_path)
    for row in read_metrics(tmp_path):
        assert row["lr/features"] == pytest.approx(0.02)
        assert row["lr/classifier"] == pytest.approx(0.002)


@pytest.mark.slow
def test_lecture_two_group_lambda_on_a_real_lenet(tmp_path):
    cfg = make_cfg(
        *FAST,
        "model=lenet",
        "scheduler=lambda",
        "scheduler.lr_lambda=['0.1 ** (epoch // 2)', '0.95 ** epoch']",
        "optimizer.param_groups={features: 1.0, classifier: 1.0}",
        "epochs=5",
        "optimizer.lr=0.01",
    )
    train(cfg, tmp_path)
    for row in read_metrics(tmp_path):
        e = row["epoch"]
        assert row["lr/features"] == pytest.approx(0.01 * 0.1 ** (e // 2), rel=1e-12)
        assert row["lr/classifier"] == pytest.approx(0.01 * 0.95**e, rel=1e-12)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["optimizer.param_groups={head: 0.1, tail: 1.0}"], "optimizer.param_groups.tail"),
        (["optimizer.param_groups={head: 0}"], "optimizer.param_groups.head"),
        (["model=lenet", "optimizer.param_groups={head: 1.0}"], "optimizer.param_groups.head"),
        (["scheduler=lambda", "scheduler.lr_lambda=['1', '1']"], "scheduler.lr_lambda"),
        (["scheduler=cosine", "optimizer.lr=0.001", "scheduler.eta_min=0.01"], "scheduler.eta_min"),
    ],
)
def test_group_and_schedule_mismatches_fail_at_startup(overrides, key):
    with pytest.raises(ConfigError) as err:
        validate(make_cfg(*overrides))
    assert err.value.key == key


@pytest.mark.slow
def test_preview_cli_prints_the_table_and_writes_pngs(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "runner.preview",
            "scheduler=step,cosine",
            "epochs=5",
            "optimizer.lr=0.1",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["epoch", "step", "cosine"]
    table = [[float(v) for v in line.split()] for line in lines[1:6]]
    assert [r[0] for r in table] == [0, 1, 2, 3, 4]
    assert [r[1] for r in table] == [0.1] * 5  # step_size 10 > 5 epochs: no decay yet
    for t, row in enumerate(table):
        assert row[2] == pytest.approx(0.05 * (1 + math.cos(math.pi * t / 5)), abs=1e-6)
    for png in ("step.png", "cosine.png", "compare.png"):
        assert (tmp_path / png).stat().st_size > 1000


def test_preview_rejects_a_bad_value_with_exit_2(tmp_path, capsys):
    """The command's main, in this process: `python -m runner.preview` exits with what
    it returns (test_preview_cli_prints_the_table_and_writes_pngs runs it as a process)."""
    code = preview_main(["scheduler=step", "scheduler.gamma=2", "--out", str(tmp_path)])
    assert code == 2
    stderr = capsys.readouterr().err
    assert "scheduler.gamma=2" in stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize(("override", "says"), [
    ("optimizer.lr=find", "optimizer.lr='find': the preview needs a number"),
    ("optimizer.lr=-1", "optimizer.lr=-1: must be a number > 0"),
    ("data.batch_size=0", "data.batch_size=0: must be an integer >= 1"),
    ("data.batch_size=abc", "data.batch_size='abc': must be an integer"),
    ("seed=abc", "seed='abc': must be an integer"),
    ("epochs=0", "epochs=0: must be an integer in [1,"),
    # Hydra's and OmegaConf's errors, in one line (were the option list, or a traceback)
    ("scheduler=nope", "In 'config': Could not find 'scheduler/nope' Available options"),
    ("scheduler=[", "no viable alternative at input '['"),
    ("epochs=${oops}", "Interpolation key 'oops' not found"),
])  # fmt: skip
def test_preview_checks_the_config_as_the_runner_does(tmp_path, capsys, override, says):
    """Found by a QA pass: tracebacks (lr=find, lr=-1, batch_size=0/abc), a wrong type
    accepted (seed=abc), and epochs=0 reported as scheduler.warmup_epochs."""
    assert preview_main([override, "--out", str(tmp_path)]) == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith(f"config error: {says}") and stderr.count("\n") == 1, stderr
    assert not list(tmp_path.iterdir())


def test_preview_refuses_a_config_dir_that_does_not_exist(tmp_path, capsys):
    """Before: Hydra's two warnings, then the preview without the dir, exit 0."""
    out = tmp_path / "out"
    assert preview_main(["--config-dir", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("config error: --config-dir=")
    assert not out.exists()


@pytest.mark.slow
def test_lecture_curves_command_writes_six_figures_and_tables(tmp_path):
    lecture_main(["--out", str(tmp_path)])
    names = ["step", "multistep", "exponential", "cosine", "plateau", "lambda"]
    for name in names:
        assert (tmp_path / f"lecture_{name}.png").stat().st_size > 1000
        with (tmp_path / f"lecture_{name}.csv").open() as f:
            rows = list(csv.reader(f))[1:]
        assert [[float(v) for v in r[1:]] for r in rows] == run_toy(name)


def test_preview_trace_writes_markdown_and_csv(tmp_path, capsys):
    """The command's main, in this process (as in test_preview_rejects_a_bad_value_with_exit_2)."""
    code = preview_main(
        [
            "scheduler=multistep",
            "scheduler.milestones=[3,6]",
            "epochs=8",
            "trace=true",
            "--quiet",
            "--out",
            str(tmp_path),
        ]
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "differs from the lr in use at epochs [3, 6]" in out.out
    with (tmp_path / "multistep,milestones=[3,6]_trace.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows if r["differs"] == "True"] == ["3", "6"]
    assert (tmp_path / "multistep,milestones=[3,6]_trace.md").exists()
