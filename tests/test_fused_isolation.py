"""Nothing lost in a fused group: a member whose own start fails (its trunk's kept
checkpoint gone or damaged since the launcher checked it) fails alone, with the error a
single run of it records, and the others train as a group without it, as they would
have had it never been in the group."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest

from runner.io import checkpoint, files
from runner.run.train import train
from runner.sweep import fused
from runner.sweep.fused import Member, replay, train_group, why_not_fusable
from schedulers import ConfigError
from tests.helpers import (
    WSD,
    assert_same_rows,
    job_dirs,
    make_cfg,
    run_cli,
    train_members,
    train_separate,
)

BUDGET = (*WSD, "epochs=6", "branch_epoch=3")  # branching at the kept epoch 3


def branch_of(trunk: Path, fraction: float) -> list[str]:
    return [*BUDGET, f"branch={trunk}", f"scheduler.decay_fraction={fraction}"]


def broken_trunk(trunk: Path, where: Path, damage: str) -> list[str]:
    """A branch of a copy of `trunk` that passes the launcher's check (why_not_fusable),
    whose kept epoch_3.pt is then removed or damaged (`damage`: gone, damaged)."""
    copy = shutil.copytree(trunk, where)
    job = branch_of(copy, 0.5)
    assert why_not_fusable(make_cfg(*job)) is None
    kept = copy / checkpoint.KEPT.format(3)
    if damage == "gone":
        kept.unlink()
    else:
        kept.write_bytes(kept.read_bytes()[:100])
    return job


def single_error(job: list[str], run_dir: Path) -> str:
    """The error a single run of `job` records in its status.json (runner/__main__.py: a
    config error)."""
    with pytest.raises(ConfigError) as err:
        train(make_cfg(*job), run_dir)
    return f"config error: {err.value}"


def status(run_dir: Path) -> dict:
    return json.loads((run_dir / "status.json").read_text())


def test_a_member_whose_trunk_checkpoint_is_gone_fails_alone(trunk, tmp_path):
    """Three branches fused, the third's trunk checkpoint removed after the launcher's
    check: it fails as its single run fails (validated again at its start), and the two
    others train with the rows of the two fused without it."""
    ok = [branch_of(trunk, 0.5), branch_of(trunk, 0.75)]
    bad = broken_trunk(trunk, tmp_path / "trunk2", "gone")
    members = train_members(tmp_path / "three", [*ok, bad])
    assert status(members[2].run_dir) == {
        "status": "failed",
        "error": single_error(bad, tmp_path / "single"),
    }
    assert not (members[2].run_dir / "config.yaml").exists()  # nothing but its status
    assert replay(members[2]) == 0.0  # the worst objective, as a failed single job returns
    pair = train_members(tmp_path / "two", ok)
    for member, alone in zip(members[:2], pair, strict=True):
        assert status(member.run_dir)["status"] == "completed"
        assert status(member.run_dir)["fused_jobs"] == 2
        assert_same_rows(member.run_dir, alone.run_dir)


def test_a_member_whose_trunk_checkpoint_is_damaged_leaves_the_other_training_alone(
    trunk, tmp_path
):
    """Its trunk's epoch_3.pt truncated: the single run's `damaged` config error; the one
    member left trains on its own (a group of one), equal to its single run."""
    ok = branch_of(trunk, 0.5)
    bad = broken_trunk(trunk, tmp_path / "trunk2", "damaged")
    members = train_members(tmp_path, [ok, bad])
    error = single_error(bad, tmp_path / "single")
    assert "damaged" in error
    # named by the key the user gave, with its own way out (not resume='s)
    assert error.startswith("config error: branch=") and "branch_epoch=" in error, error
    assert status(members[1].run_dir) == {"status": "failed", "error": error}
    assert status(members[0].run_dir)["status"] == "completed"
    assert status(members[0].run_dir)["fused_jobs"] == 1
    assert_same_rows(members[0].run_dir, train_separate(tmp_path, ok))


def test_members_whose_run_dir_cannot_be_written_at_start_fail_alone(tmp_path, monkeypatch):
    """One member's run dir refuses its lock, another's its config.yaml (a full or
    read-only disk there): each fails with its single run's `error: cannot write ...`
    (the second's status.json says so), and the third trains on its own."""
    jobs = [["epochs=2", "logger=none", "scheduler=step", f"seed={s}"] for s in (0, 1, 2)]
    group = [Member(make_cfg(*o), tmp_path / str(i), o, None) for i, o in enumerate(jobs)]
    full = OSError(errno.ENOSPC, "No space left on device")

    def hold(run_dir, *args):
        if run_dir == group[0].run_dir:
            raise files.WriteFailed(run_dir / ".lock", full)
        return real_hold(run_dir, *args)

    def config_yaml(cfg, run_dir=None):
        if run_dir == group[1].run_dir:
            raise files.WriteFailed(run_dir / "config.yaml", full)
        return real_config_yaml(cfg, run_dir)

    real_hold, real_config_yaml = fused.hold, fused.config_yaml
    monkeypatch.setattr(fused, "hold", hold)
    monkeypatch.setattr(fused, "config_yaml", config_yaml)
    train_group(group)
    assert group[0].error == f"error: cannot write {group[0].run_dir / '.lock'}: {full.strerror}"
    assert status(group[1].run_dir) == {
        "status": "failed",
        "error": f"error: cannot write {group[1].run_dir / 'config.yaml'}: {full.strerror}",
    }
    assert status(group[2].run_dir)["status"] == "completed"
    assert status(group[2].run_dir)["fused_jobs"] == 1


@pytest.mark.slow
def test_a_fused_sweep_counts_the_members_that_failed_to_start_and_trains_the_rest(trunk, tmp_path):
    """Through the launcher: a trunk whose kept checkpoint is damaged passes the launcher's
    check (the file is there), so its two branches join the group of four; they fail at
    their start, as their single runs would, and the sweep's report counts them failed,
    while the two branches of the sound trunk train fused as two."""
    broken = broken_trunk(trunk, tmp_path / "trunk2", "damaged")[-2].removeprefix("branch=")
    sweep = tmp_path / "sweep"
    proc = run_cli(
        "-m",
        "hydra/launcher=fused",
        *BUDGET,
        f"branch={trunk},{broken}",
        "scheduler.decay_fraction=0.5,0.75",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Training 4 jobs as one fused model" in proc.stdout + proc.stderr
    jobs = job_dirs(sweep)
    assert len(jobs) == 4
    for overrides, job in jobs.items():
        if broken in overrides:
            assert status(job)["error"].startswith("config error: ")
            assert "is damaged" in status(job)["error"]
            assert "job failed to start in its fused group" in (job / "train.log").read_text()
        else:
            assert status(job)["status"] == "completed" and status(job)["fused_jobs"] == 2
    # the report's rows: # | config | runs | done | diverged | failed | running | ...
    rows = [
        [c.strip() for c in line.strip("|").split("|")]
        for line in (sweep / "report.md").read_text().splitlines()
        if line.startswith("| ") and "`branch=" in line and " | `" in line[:8]
    ]
    assert sorted((broken in r[1], r[3], r[5]) for r in rows) == [
        (False, "1", "0"),
        (False, "1", "0"),
        (True, "0", "1"),
        (True, "0", "1"),
    ]
