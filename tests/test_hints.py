"""Hints that finish the command (issue #33): the range test's lr in the user's own training
command, the resume of an interrupted run, the same sweep continued in its dir; and the range
test's suggestions: steepest before the minimum, fastai's valley, which one
optimizer.lr=find uses and why."""

from __future__ import annotations

import io
import json
import math
import shlex
import signal
import sys
import time
from contextlib import redirect_stderr
from dataclasses import asdict
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import runner.__main__ as entry
from runner.config.compose import compose_config
from runner.config.schema import LrFind
from runner.lr_find import next_step
from runner.sweep import sweepdir
from runner.train.range_test import (
    RangeTest,
    describe,
    legend_labels,
    suggest,
    validate_lr_find,
    valley_index,
    write_outputs,
)
from tests.helpers import read_metrics, run_cli, start, wait_for_rows


def user_conf(tmp_path: Path) -> Path:
    """A user's config dir (a space in its name: the printed command must quote it) with a
    model of their own, model=tiny: an MLP no default run would build."""
    conf = tmp_path / "my conf"
    (conf / "model").mkdir(parents=True)
    (conf / "model" / "tiny.yaml").write_text("name: mlp\nhidden: [12]\ndropout: 0.0\n")
    return conf


# the user's model, small batches and epochs enough: a signal after the first epoch's row
# always lands in the middle of the run, which then takes most of a second more (9 epochs of
# ~0.08 s; the test looks for the row every 0.02 s)
EPOCHS = 10
QUICK = ("model=tiny", "data.batch_size=16", f"epochs={EPOCHS}", "logger=none",
         "trainer.progress=line")  # fmt: skip


def printed_args(text: str, after: str) -> list[str]:
    """The arguments of the `python -m runner ...` command printed after `after`, as a
    shell would split them (the interpreter and `-m runner` checked and dropped)."""
    line = next(ln for ln in text.splitlines() if after in ln).split(after, 1)[1].strip()
    if not line:  # the command is on the next line
        lines = text.splitlines()
        line = lines[next(i for i, ln in enumerate(lines) if after in ln) + 1].strip()
    python, m, module, *args = shlex.split(line)
    assert Path(python).name.startswith("python") and (m, module) == ("-m", "runner"), line
    return args


# -- the range test's lr in the user's own command


def test_the_printed_training_command_keeps_the_users_config_dir_and_overrides(tmp_path):
    """Before: `python -m runner optimizer.lr=0.0534`, which trains the default MLP on
    digits, not the model the range test ran on."""
    conf = user_conf(tmp_path)
    argv = ["--config-dir", str(conf), "model=tiny", "optimizer.lr=0.5", "epochs=2",
            f"hydra.run.dir={tmp_path / 'lr_find'}", "lr_find.num_iters=30"]  # fmt: skip
    text = next_step(argv, 0.053412)
    args = printed_args(text, "train with it:")
    assert args[:2] == ["--config-dir", str(conf)]
    overrides = args[2:]
    assert overrides == ["model=tiny", "optimizer.lr=0.05341", "epochs=2", "lr_find.num_iters=30"]
    assert "optimizer.lr=find" in text
    cfg = compose_config(overrides, config_dirs=[str(conf)])
    assert list(cfg.model.hidden) == [12] and cfg.optimizer.lr == 0.05341 and cfg.epochs == 2


def test_the_lr_is_added_when_the_command_gave_none_and_replaced_as_it_was_given():
    args = printed_args(next_step(["-cd", "conf", "model=tiny"], 1e-5), "train with it:")
    assert args == ["-cd", "conf", "model=tiny", "optimizer.lr=1e-05"]
    given = ["-cn", "mine", "++optimizer.lr=0.1", "seed=1", "optimizer.lr=0.2"]
    args = printed_args(next_step(given, 0.25), "train with it:")
    assert args == ["-cn", "mine", "++optimizer.lr=0.25", "seed=1"]


@pytest.mark.slow
def test_the_printed_training_command_trains_the_users_model_at_the_found_lr(tmp_path):
    """runner.lr_find with a user's --config-dir, then its printed command run as printed:
    the run's config.yaml has the user's model and the printed lr."""
    conf = user_conf(tmp_path)
    found = run_lr_find(
        tmp_path,
        "--config-dir",
        str(conf),
        "model=tiny",
        "epochs=1",
        "lr_find.num_iters=30",
        "logger=none",
        f"hydra.run.dir={tmp_path / 'range'}",
    )
    assert found.returncode == 0, found.stderr
    args = printed_args(found.stdout, "train with it:")
    (lr,) = [a.split("=", 1)[1] for a in args if a.startswith("optimizer.lr=")]
    work = tmp_path / "work"
    work.mkdir()
    trained = run_cli(*args, cwd=work)
    assert trained.returncode == 0, trained.stderr
    (saved,) = [p for p in work.rglob("config.yaml") if ".hydra" not in p.parts]
    cfg = OmegaConf.load(saved)
    assert list(cfg.model.hidden) == [12] and cfg.optimizer.lr == float(lr) and cfg.epochs == 1


def run_lr_find(cwd: Path, *args: str):
    import subprocess

    return subprocess.run(
        [sys.executable, "-m", "runner.lr_find", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


# -- an interrupted run: resume=<its dir>


def test_an_interrupted_run_names_the_resume_of_its_dir(tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "a run"
    run_dir.mkdir()
    monkeypatch.chdir(tmp_path)
    entry.say_how_to_resume(Path("a run"))  # no config.yaml: nothing trained yet
    assert "the same command starts it again" in capsys.readouterr().err
    (run_dir / "config.yaml").write_text("epochs: 1\n")
    entry.say_how_to_resume(Path("a run"))
    args = printed_args(capsys.readouterr().err, "continue it with:")
    assert args == [f"resume={run_dir.resolve()}"]  # absolute: from any dir
    monkeypatch.setattr(entry, "launched_by_torchrun", lambda: True)
    entry.say_how_to_resume(Path("a run"))  # a DDP run continues under torchrun
    line = capsys.readouterr().err.split("continue it with:")[1].strip()
    assert line == f"torchrun <its options> -m runner {shlex.quote(f'resume={run_dir.resolve()}')}"


@pytest.mark.slow
def test_the_printed_resume_of_an_interrupted_run_completes_it(tmp_path):
    conf = user_conf(tmp_path)
    run_dir = tmp_path / "run"
    proc = start(["--config-dir", str(conf), *QUICK, f"hydra.run.dir={run_dir}"], tmp_path)
    wait_for_rows(run_dir, 1, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert json.loads((run_dir / "status.json").read_text())["status"] == "interrupted"
    assert len(read_metrics(run_dir)) < EPOCHS
    args = printed_args(err, "continue it with:")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    resumed = run_cli(*args, cwd=elsewhere)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    assert [r["epoch"] for r in read_metrics(run_dir)] == list(range(EPOCHS))  # rows go on


# -- an interrupted sweep: the same command into its sweep dir


def interrupted_sweep(tmp_path: Path, monkeypatch, argv: list[str], how: BaseException) -> str:
    """runner.__main__.cli() for `argv`, its sweep interrupted (`how` raised where Hydra's
    run would be) while it held tmp_path/sweep: what it printed on stderr."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "")
    monkeypatch.setattr(sys, "argv", ["runner", *argv])
    monkeypatch.setattr(sweepdir, "held", lambda: (tmp_path / "sweep").resolve())

    def hydra_runs() -> None:
        raise how

    monkeypatch.setattr(entry, "main", hydra_runs)
    err = io.StringIO()
    with redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        entry.cli()
    assert exit_.value.code == 130
    return err.getvalue()


@pytest.mark.parametrize("how", [SystemExit(130), KeyboardInterrupt()], ids=["job", "between"])
def test_an_interrupted_sweep_prints_its_command_with_its_sweep_dir(tmp_path, monkeypatch, how):
    """Before: nothing (a job stopped by a signal), or "the same command continues it",
    which without hydra.sweep.dir starts a new sweep in a new dated dir."""
    argv = ["-m", "seed=0,1", "logger=none", "hydra.sweep.dir=sweeps/${now:%H}"]
    err = interrupted_sweep(tmp_path, monkeypatch, argv, how)
    args = printed_args(err, "continue the sweep with:")
    assert args == ["-m", "seed=0,1", "logger=none", f"hydra.sweep.dir={tmp_path / 'sweep'}"]


@pytest.mark.slow
def test_the_printed_command_of_an_interrupted_sweep_continues_it(tmp_path):
    conf = user_conf(tmp_path)
    proc = start(["--config-dir", str(conf), "-m", "seed=0,1", *QUICK], tmp_path)
    deadline = time.monotonic() + 120
    while not (second := [p.parent for p in tmp_path.rglob("*seed=1*/metrics.jsonl")]):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    wait_for_rows(second[0], 1, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    sweep = second[0].parent
    done = second[0].with_name(second[0].name.replace("seed=1", "seed=0"))  # named by overrides
    first = (done / "metrics.jsonl").read_bytes()
    args = printed_args(err, "continue the sweep with:")
    assert f"hydra.sweep.dir={sweep.resolve()}" in args
    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert (done / "metrics.jsonl").read_bytes() == first  # done: not trained again
    assert json.loads((second[0] / "status.json").read_text())["status"] == "completed"
    assert [r["epoch"] for r in read_metrics(second[0])] == list(range(EPOCHS))


# -- the range test's suggestions


def log_lrs(n: int) -> list[float]:
    return [10 ** (-6 + i * 0.1) for i in range(n)]


def test_steepest_is_searched_before_the_minimum():
    """A loss that falls (steepest at point 20), is lowest at point 35, then diverges with a
    spike that comes back down steeply at point 50. Before: steepest was that late fall,
    in the diverging part, 10^1.5 times the lr at the minimum."""
    lrs = log_lrs(61)
    fall = [2 - 1 / (1 + math.exp(-(i - 20) / 3)) for i in range(61)]  # 2 -> 1, steepest at 20
    rise = [0.0 if i <= 35 else 0.05 * (i - 35) for i in range(61)]  # up after the minimum
    spike = [0.0 if i < 45 else 1.5 if i < 50 else 0.0 for i in range(61)]  # falls 1.5 at 50
    smooth = [f + r + s for f, r, s in zip(fall, rise, spike, strict=True)]
    lowest = min(range(61), key=smooth.__getitem__)
    assert lowest == 35
    s = suggest(lrs, smooth)
    assert s["steepest"] == pytest.approx(lrs[20])
    assert s["min_loss_div_10"] == pytest.approx(lrs[35] / 10)


def test_valley_is_fastais_point_on_the_longest_falling_stretch():
    """By hand: the longest strictly decreasing run is 2.0 ... 1.35 (points 4 to 11, 8
    long; nothing before point 4 is above 2.0). fastai counts its start as 11 - 8 = 3;
    s = 8 / 3; the point is 3 + int(s) + int(s / 2) = 3 + 2 + 1 = 6."""
    losses = [1.0, 1.2, 1.1, 1.3, 2.0, 1.9, 1.8, 1.7, 1.6, 1.5, 1.4, 1.35, 2.5]
    assert valley_index(losses) == 6
    lrs = log_lrs(len(losses))
    assert suggest(lrs, losses)["valley"] == pytest.approx(lrs[6])
    assert valley_index([5.0, 4.0]) == 0  # fastai's index would be -1: the last point


def test_valley_leaves_out_the_noisy_ends_as_steepest_does():
    """With 20+ points the first 10 % and last 5 % are not searched: a long fall inside
    the first 10 % (points 0-9 of 100) is not the valley; the 30-point one (40-69) is."""
    smooth = [3.0 - 0.1 * i for i in range(10)] + [2.5] * 30 + [2.4 - 0.01 * i for i in range(30)]
    smooth += [3.0] * (100 - len(smooth))
    lrs = log_lrs(100)
    # inside [10, 95): the run 2.5 (one of the flat ones), then 40..69: 31 long, start 38
    assert suggest(lrs, smooth)["valley"] == pytest.approx(lrs[38 + 10 + 5])


def test_the_description_and_plot_say_which_suggestion_find_uses_and_why(tmp_path):
    validate_lr_find(asdict(LrFind(suggestion="valley")))  # a choice like the other two
    lrs = log_lrs(40)
    smooth = [2 - 1 / (1 + math.exp(-(i - 20) / 3)) + max(0, i - 30) * 0.2 for i in range(40)]
    result = RangeTest(lrs=lrs, losses=smooth, smooth=smooth, suggestions=suggest(lrs, smooth))
    text = describe(result, "valley")
    assert set(result.suggestions) == {"steepest", "valley", "min_loss_div_10"}
    assert (
        "optimizer.lr=find uses valley (lr_find.suggestion=valley, the default is "
        "min_loss_div_10)" in text
    )
    assert (
        "optimizer.lr=find uses min_loss_div_10 (lr_find.suggestion=min_loss_div_10, "
        "the default)" in describe(result, "min_loss_div_10")
    )
    labels = legend_labels(result.suggestions, "valley")
    marked = [name for name, label in labels.items() if "optimizer.lr=find" in label]
    assert marked == ["valley"] and "lr_find.suggestion" in labels["valley"]
    _, png = write_outputs(result, tmp_path, "valley")
    assert png.stat().st_size > 1000
