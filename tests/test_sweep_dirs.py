"""Sweep dirs (issue #32, "Never a wrong number"): one sweep or race at a time per
hydra.sweep.dir, a job refused because another process writes its dir is pending (never a
loss), a sweep whose every job failed exits non-zero, a race of config errors stops after
round 1, and the report says "running" for a running job and "failed" for an unreadable one."""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from runner.io import files
from runner.sweep import sweepdir
from runner.sweep.fused import Member, train_group
from runner.sweep.race import Race, RaceSettings, job_subdir
from runner.sweep.report import SweepReport, write_report
from tests.helpers import (
    cli_in_process,
    fake_run,
    make_cfg,
    quiet_env,
    race_json,
    release_kept_locks,
    run_cli,
    sweep_job,
)

PID = 4242  # the pid a held lock names: "another sweep (pid 4242)"
QUICK = ("epochs=1", "logger=none", "hydra/job_logging=disabled")


@contextlib.contextmanager
def held(run_dir: Path) -> Iterator[None]:
    """Another process's lock on run_dir (a sweep's or a run's), as files.hold_run_dir takes
    it: flock is per open file, so a second open in this process is refused too."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / files.LOCK, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.pwrite(fd, f"{PID}\n".encode(), 0)
    try:
        yield
    finally:
        os.close(fd)


def digest(root: Path) -> dict[str, str]:
    """Every file under root by its hash: a refused command must change none, add none."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def finished_sweep(sweep: Path) -> None:
    """A sweep dir as a finished race leaves it: multirun.yaml, report.md, race.json, jobs."""
    for config, acc in enumerate((0.9, 0.8)):
        overrides = [f"optimizer.lr=0.0{config + 1}", "seed=0",
                     f"hydra.sweep.subdir={job_subdir(config, 0)}"]  # fmt: skip
        fake_run(sweep, overrides, "completed", acc)
    for name in ("multirun.yaml", "report.md", "race.json"):
        (sweep / name).write_text(f"the first sweep's {name}\n")


# ---- 1. one sweep at a time per sweep dir


@pytest.mark.parametrize("sweeper", ["hydra/sweeper=race", "hydra/sweeper=basic"])
def test_a_second_sweep_into_a_held_sweep_dir_is_refused_and_leaves_it_untouched(tmp_path, sweeper):
    sweep = tmp_path / "sweep"
    finished_sweep(sweep)
    with held(sweep):  # the first sweep, still running
        before = digest(sweep)
        second = cli_in_process(
            "-m",
            sweeper,
            "optimizer.lr=0.01,0.02",
            *QUICK,
            f"hydra.sweep.dir={sweep}",
            cwd=tmp_path,
        )
        assert second.returncode == 2, second.stderr
        assert second.stderr.splitlines() == [
            f"config error: hydra.sweep.dir='{sweep}': another sweep (pid {PID}) is writing "
            "into it; wait for it to end (the same command then continues this sweep there), "
            "or give another hydra.sweep.dir"
        ]
        assert digest(sweep) == before


def test_a_sweep_dir_made_from_the_config_is_held_from_the_sweeps_start(tmp_path, capsys):
    """hydra.sweep.dir from a preset or ${...}: the sweep report's on_multirun_start takes
    it before the sweeper writes multirun.yaml, and refuses it if another sweep holds it."""
    sweep = tmp_path / "from_config"
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}})
    finished_sweep(sweep)
    with held(sweep):
        before = digest(sweep)
        with pytest.raises(SystemExit) as refused:
            SweepReport().on_multirun_start(config)
        assert refused.value.code == 2
        assert f"hydra.sweep.dir='{sweep}': another sweep (pid {PID})" in capsys.readouterr().err
        assert digest(sweep) == before
    SweepReport().on_multirun_start(config)  # free: taken, and held by this process now
    assert files.run_dir_holder(sweep) is None
    holder = subprocess.run(
        [
            sys.executable,
            "-c",
            "from runner.io import files; import sys; "
            f"sys.exit(files.run_dir_holder({str(sweep)!r}) is None)",
        ],
        check=False,
    )
    assert holder.returncode == 0  # another process sees it held
    release_kept_locks()


@pytest.mark.slow
def test_two_identical_races_started_together_the_second_is_refused(tmp_path):
    """The issue's reproduction: the second race into the dir counted the job the first was
    training as a loss, and its race.json called the winner "not significantly better"."""
    race = ("-m", "hydra/sweeper=race", "optimizer.lr=0.05", "hydra.sweeper.min_seeds=2",
            "hydra.sweeper.max_seeds=2", *QUICK, "hydra.sweep.dir=race")  # fmt: skip
    env = quiet_env()
    first = subprocess.Popen(
        [sys.executable, "-m", "runner", *race],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while files.run_dir_holder(tmp_path / "race") is None:  # the first holds it
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.05)
        second = cli_in_process(*race, cwd=tmp_path)
    finally:
        out, err = first.communicate(timeout=300)
    assert second.returncode == 2 and "another sweep (pid" in second.stderr, second.stderr
    assert first.returncode == 0, err
    jobs = [j for c in race_json(tmp_path / "race")["configurations"] for j in c["jobs"].values()]
    assert len(jobs) == 2 and not any(j["counted_as_loss"] for j in jobs)


# ---- 2. a job refused because another process writes its dir is pending


def test_a_race_job_whose_dir_another_process_writes_is_pending_not_a_loss(tmp_path):
    acc = {"lr=1": [0.90, 0.91, 0.92], "lr=2": [0.60, 0.65, 0.58]}
    recorded, running = job_subdir(0, 1), job_subdir(1, 0)

    def launch(batch: list[list[str]], initial_job_idx: int) -> None:
        for overrides in batch:
            subdir = overrides[-1].split("=")[1]
            if files.run_dir_holder(tmp_path / subdir) is not None:  # the job refuses it
                if subdir == recorded:  # as runner/__main__.py does (nothing written there)
                    sweepdir.record_refused(tmp_path, tmp_path / subdir, PID)
                continue
            fake_run(tmp_path, overrides, "completed", acc[overrides[0]][int(overrides[1][5:])])

    configs, settings = [["lr=1"], ["lr=2"]], RaceSettings(min_seeds=3, max_seeds=3)
    with held(tmp_path / recorded), held(tmp_path / running):
        # `running`: another run of that job (e.g. resume=<it>), its .hydra/ written
        (tmp_path / running / ".hydra").mkdir()
        (tmp_path / running / ".hydra" / "overrides.yaml").write_text("- lr=2\n- seed=0\n")
        Race(settings, configs, tmp_path, launch).run()
        race = race_json(tmp_path)
        jobs = {(c["label"], s): j for c in race["configurations"] for s, j in c["jobs"].items()}
        for label, seed in (("lr=1", "1"), ("lr=2", "0")):
            assert jobs[label, seed] == {
                "dir": job_subdir(int(label[-1]) - 1, int(seed)),
                "status": "pending",
                "value": None,
                "counted_as_loss": False,
            }
        assert sorted(race["pending"]) == sorted([recorded, running])
        assert not race["done"] and race["rounds"][0]["comparisons"] == []  # nothing decided
        assert all(c["fate"] == "racing" for c in race["configurations"])
        text = write_report(tmp_path)
        assert (
            f"1 job(s) refused because another process was writing into their dir: "
            f"`{recorded}` (pid {PID}); pending, not a loss" in text
        )
        assert "The race stopped after round 1 without deciding it: 2 job(s) pending" in text
        assert "counted as a loss" not in text
    shutil.rmtree(tmp_path / running / ".hydra")  # that run ended, say, and left nothing
    Race(settings, configs, tmp_path, launch).run()  # run again: the race is decided
    race = race_json(tmp_path)
    assert race["done"] and race["pending"] == [] and race["configurations"][1]["fate"] == "dropped"


@pytest.mark.slow
def test_a_sweep_job_whose_dir_another_process_writes_is_pending_and_untouched(tmp_path):
    sweep = tmp_path / "sweep"
    first, second = (sweep_job(sweep, f"optimizer.lr={lr}", *QUICK[:2]) for lr in (0.05, 0.01))
    with held(second):
        proc = run_cli(
            "-m", "optimizer.lr=0.05,0.01", *QUICK, f"hydra.sweep.dir={sweep}", cwd=tmp_path
        )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines()[-1] == (
        f"config error: hydra.sweep.dir='{sweep}': 1 job(s) refused because another process "
        f"was writing into their dir: `{second.name}` (pid {PID}); pending, not a loss: run "
        "the same command again once it ends"
    )
    assert sorted(p.name for p in second.iterdir()) == [".lock"]  # nothing written
    assert json.loads((first / "status.json").read_text())["status"] == "completed"
    assert f"`{second.name}` (pid 4242); pending, not a loss" in (sweep / "report.md").read_text()


def test_a_fused_member_whose_dir_another_process_writes_is_named_pending(tmp_path):
    sweep = tmp_path / "sweep"
    overrides = [["epochs=1", "logger=none", f"seed={s}"] for s in (0, 1)]
    group = [
        Member(make_cfg(*o), sweep / str(i), o, None, sweep_dir=sweep)
        for i, o in enumerate(overrides)
    ]
    with held(sweep / "1"):
        train_group(group)
    assert group[0].result is not None and group[1].result is None
    assert sweepdir.refused(sweep) == [{"dir": "1", "pid": PID}]
    assert sorted(p.name for p in (sweep / "1").iterdir()) == [".lock"]


# ---- 3. a sweep whose every job failed or diverged exits non-zero


def job(sweep: Path, name: str, status: dict, rows: list[dict] | None = None) -> Path:
    """A job's dir as the runner leaves it."""
    path = sweep / name
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"optimizer.lr={name}"]))
    (path / "config.yaml").write_text("seed: 0\n")
    (path / "status.json").write_text(json.dumps(status))
    if rows is not None:
        (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ROW = {"epoch": 0, "lr/group0": 0.1, "val/acc": 0.9, "val/loss": 0.3}
CONFIG_ERROR = {"status": "failed", "error": "config error: optimizer.lr=-1: must be > 0"}
CRASH = {"status": "failed", "error": "RuntimeError('boom')"}
DIVERGED = {"status": "diverged", "best_val_acc": 0.1}
DONE = {"status": "completed", "wall_time_s": 1.0}


@pytest.mark.parametrize(
    "statuses, code",
    [
        ([CONFIG_ERROR, CONFIG_ERROR], 2),
        ([DIVERGED, DIVERGED], 3),
        ([DIVERGED, CONFIG_ERROR], 1),
        ([CRASH, CONFIG_ERROR], 1),
        ([DONE, CRASH], None),
    ],
)
def test_a_sweep_with_no_completed_job_exits_as_a_single_run_would(tmp_path, statuses, code):
    for i, status in enumerate(statuses):
        job(tmp_path, f"0.{i}", status, [ROW] if status is DONE else None)
    result = sweepdir.exit_status(tmp_path)
    assert (result and result[0]) == code
    if code == 2:
        assert result[1] == (
            f"config error: hydra.sweep.dir='{tmp_path}': all 2 job(s) failed "
            "their config check (optimizer.lr=-1: must be > 0)"
        )


def test_a_completed_job_without_its_metrics_is_no_success(tmp_path):
    job(tmp_path, "0.1", DONE, [{"epoch": 0, "val/loss": 0.3}])
    job(tmp_path, "0.2", CRASH)
    assert sweepdir.exit_status(tmp_path)[0] == 1


@pytest.mark.slow
def test_a_race_whose_every_configuration_fails_its_config_check_stops_after_round_1(tmp_path):
    """The subprocess: the race stops after round 1 and the sweep exits 2 (before: every
    round to max_seeds, 8 jobs, exit 0)."""
    proc = run_cli(
        "-m",
        "hydra/sweeper=race",
        "optimizer.lr=-1,-2",
        "hydra.sweeper.min_seeds=2",
        "hydra.sweeper.max_seeds=4",
        *QUICK,
        "hydra.sweep.dir=race",
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    assert "all 4 job(s) failed their config check (optimizer.lr=-1: " in proc.stderr
    race = race_json(tmp_path / "race")
    assert (len(race["rounds"]), race["runs_used"]) == (1, 4)
    assert race["reason"] == "every configuration failed its config check"
    assert sorted(p.name for p in (tmp_path / "race").glob("c*_seed*")) == [
        "c0_seed0",
        "c0_seed1",
        "c1_seed0",
        "c1_seed1",
    ]


def test_a_race_stops_after_a_round_of_config_errors_in_process(tmp_path):
    launched = []

    def launch(batch: list[list[str]], initial_job_idx: int) -> None:
        for overrides in batch:
            launched.append(overrides)
            fake_run(tmp_path, overrides, "failed", 0.0)
            status = tmp_path / overrides[-1].split("=")[1] / "status.json"
            status.write_text(json.dumps(CONFIG_ERROR))

    Race(RaceSettings(min_seeds=2, max_seeds=5), [["lr=1"], ["lr=2"]], tmp_path, launch).run()
    assert len(launched) == 4 and race_json(tmp_path)["done"]


# ---- 5. the report on a sweep in progress, and a completed job it cannot read


def test_the_report_says_running_for_a_running_job_and_failed_for_an_unreadable_one(tmp_path):
    job(tmp_path, "0.1", DONE, [ROW])
    # completed by its status, but its last row lacks val/acc: no final val acc to report
    job(tmp_path, "0.2", DONE, [ROW, {"epoch": 1, "lr/group0": 0.1, "val/loss": 0.2}])
    running = job(tmp_path, "0.3", {"status": "running"}, [ROW])
    (running / "status.json").unlink()  # a run in its first epochs: no status yet
    with held(running):
        write_report(tmp_path)
        with (tmp_path / "report.csv").open() as f:
            rows = {r["config"]: r for r in csv.DictReader(f)}
    counts = {k: {c: rows[k][c] for c in ("completed", "failed", "running")} for k in rows}
    assert counts == {
        "optimizer.lr=0.1": {"completed": "1", "failed": "0", "running": "0"},
        "optimizer.lr=0.2": {"completed": "0", "failed": "1", "running": "0"},
        "optimizer.lr=0.3": {"completed": "0", "failed": "0", "running": "1"},
    }
    assert rows["optimizer.lr=0.2"]["final_val_acc_mean"] == "nan"
    text = (tmp_path / "report.md").read_text()
    assert "| `optimizer.lr=0.3` | 1 | 0 | 0 | 0 | 1 |" in text
