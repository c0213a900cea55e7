"""Hydra's own writes (.hydra/*.yaml, train.log) failing on a full disk end the CLI with one
line, as the runner's own files do, and nothing else about Hydra's error output changes."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import cli_in_process, run_cli

# `python -m runner` with one of Hydra's files failing for lack of space: `.hydra/config.yaml`
# (written with open()) or `train.log` (opened by logging's FileHandler, which logging's
# dictConfig reports as a ValueError wrapping the OSError)
DRIVER = r"""
import builtins, errno, logging, os, runpy, sys
failing = os.environ["SCHEDLAB_FAIL_HYDRA"]
real_open, real_handler_open = builtins.open, logging.FileHandler._open

def no_space(path):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

def open_(file, mode="r", *args, **kwargs):
    if "w" in mode and str(file).endswith(failing):
        no_space(file)
    return real_open(file, mode, *args, **kwargs)

def handler_open(self):
    if self.baseFilename.endswith(failing):
        no_space(self.baseFilename)
    return real_handler_open(self)

builtins.open, logging.FileHandler._open = open_, handler_open
sys.argv = ["runner", *sys.argv[1:]]
runpy.run_module("runner", run_name="__main__", alter_sys=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("failing", [os.path.join(".hydra", "config.yaml"), "train.log"])
def test_a_full_disk_under_hydras_own_files_is_one_line(tmp_path, failing):
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "HYDRA_"))}
    env["SCHEDLAB_FAIL_HYDRA"] = failing
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, "epochs=1", "logger=none", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    want = f"error: cannot write {run_dir / failing}: {os.strerror(errno.ENOSPC)}"
    assert proc.stderr.strip() == want
    assert not (run_dir / "last.pt").exists()


@pytest.mark.slow
def test_hydras_own_errors_still_read_as_before(tmp_path):
    """An error Hydra raises while sweeping: its message and hint, no stack trace."""
    args = ["-m", "+experiment=init_lr", "hydra.sweeper.params.seed=0,1", "logger=none"]
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 1
    assert "Sweeping over Hydra's configuration is not supported" in proc.stderr
    assert "HYDRA_FULL_ERROR=1" in proc.stderr and "Traceback" not in proc.stderr


def test_a_key_under_a_null_node_is_a_config_error(tmp_path):
    # a config error before Hydra starts: the CLI's own checks, in this process
    proc = cli_in_process("-m", "hydra.sweeper.params.seed=0,1", "logger=none", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "hydra.sweeper.params.<key>" in proc.stderr


@pytest.mark.slow
def test_a_sweep_refused_a_used_job_dir_leaves_that_runs_hydra_files(tmp_path):
    """A second sweep with other values into the same sweep dir, its jobs' dirs named by
    number (hydra.sweep.subdir: by default they are named by their overrides, and these
    two would not meet): its job 0 is refused (the dir holds the first sweep's run), and
    Hydra no longer writes that job's .hydra/ first, which relabelled the first run as
    lr=0.2 in every later report."""
    sweep = tmp_path / "sweep"
    by_number = "hydra.sweep.subdir=${hydra.job.num}"
    first = run_cli(
        "-m",
        "optimizer.lr=0.1",
        "epochs=1",
        "logger=none",
        by_number,
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert first.returncode == 0, first.stderr[-2000:]
    hydra_files = {p.name: p.read_bytes() for p in (sweep / "0" / ".hydra").iterdir()}
    second = run_cli(
        "-m",
        "optimizer.lr=0.2",
        "epochs=1",
        "logger=none",
        by_number,
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    said = second.stderr + second.stdout
    assert (
        f"config error: hydra.sweep.dir='{sweep / '0'}': its config.yaml is another run's "
        "(differs in optimizer.lr)"
        in said
        and "for a new run: another hydra.sweep.dir" in said
    )
    assert {p.name: p.read_bytes() for p in (sweep / "0" / ".hydra").iterdir()} == hydra_files
    assert "Overrides shared by every run: `optimizer.lr=0.1 " in (sweep / "report.md").read_text()


@pytest.fixture(scope="module")
def run_in_a_stale_dir(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """One run whose results the two tests below read (one interpreter start-up, not two):
    `optimizer.lr=0.1 epochs=1 hydra/job_logging=disabled` in a run dir that a run stopped
    before it wrote config.yaml left behind (its .hydra/ overrides: lr=0.3)."""
    tmp_path = tmp_path_factory.mktemp("stale")
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text("- optimizer.lr=0.3\n- epochs=1\n")
    (run_dir / "status.json").write_text('{"status": "interrupted"}')
    proc = run_cli(
        "optimizer.lr=0.1",
        "epochs=1",
        "logger=none",
        "hydra/job_logging=disabled",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    return proc, run_dir


@pytest.mark.slow
def test_a_new_run_replaces_the_stale_hydra_files_of_a_run_stopped_in_its_start_up(
    run_in_a_stale_dir,
):
    """A run stopped before it wrote config.yaml leaves .hydra/ (its overrides) behind; the
    dir holds no run, so the next run takes it, and must write its own .hydra/ (a QA pass
    found the stale overrides kept: lr=0.3 labelled a run of lr=0.1)."""
    proc, run_dir = run_in_a_stale_dir
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "optimizer.lr=0.1" in (run_dir / ".hydra" / "overrides.yaml").read_text()


def test_no_rank_but_rank_0_writes_hydra_files(monkeypatch):
    """Under torchrun rank 0 alone holds the run dir (and may be refused it); Hydra on the
    other ranks would write .hydra/ into it all the same."""
    from runner.config.resolvers import hydra_subdir

    assert hydra_subdir(False) == ".hydra" and hydra_subdir(True) == ".hydra/resumed"
    monkeypatch.setenv("RANK", "1")
    assert hydra_subdir(False) is None


@pytest.mark.slow
def test_train_log_is_rank_0s_and_a_users_job_logging_replaces_it(run_in_a_stale_dir, monkeypatch):
    """Hydra's job log is our hydra/job_logging=schedlab (Hydra's default, the file on
    torchrun's rank 0 only: the other ranks' Hydra would open the run dir's train.log before
    rank 0 could refuse that dir); choosing another option replaces it whole."""
    from runner.config.resolvers import job_log

    assert job_log("run/train.log") == "run/train.log"
    monkeypatch.setenv("RANK", "1")
    assert job_log("run/train.log") == os.devnull
    monkeypatch.delenv("RANK")
    proc, run_dir = run_in_a_stale_dir  # hydra/job_logging=disabled
    assert proc.returncode == 0, proc.stderr[-2000:]
    # status.json: this run's (the stale dir's said interrupted); no train.log written
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    assert not (run_dir / "train.log").exists()
