"""Branches fused (issue #34): branches of a trunk in one fused group each start from their
own trunk's checkpoint (weights, optimizer state, data order), copy their trunk's rows and
train together; they equal the same branches run one by one, and stop and resume like
any fused member."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch
import yaml

from runner.io import checkpoint
from runner.run.rundir import same_run_on_disk
from runner.run.train import config_yaml, train
from runner.sweep.fused import group_key, why_not_fusable
from tests.helpers import (
    REL,
    WSD,
    WSD_BUDGET,
    WSD_TRUNK,
    StopAfter,
    assert_same_rows,
    job_dirs,
    make_cfg,
    read_metrics,
    run_cli,
    train_members,
    train_separate,
)


@pytest.fixture(scope="module")
def separate(tmp_path_factory):
    """The branch's run dir as train() (the basic launcher's job) leaves it, trained once
    per module for each branch config."""
    done: dict[tuple[str, ...], Path] = {}

    def run(overrides: list[str]) -> Path:
        if tuple(overrides) not in done:
            done[tuple(overrides)] = train_separate(tmp_path_factory.mktemp("one"), overrides)
        return done[tuple(overrides)]

    return run


def branches(trunk: Path) -> list[list[str]]:
    """Two branches of `trunk` at epoch 3, each with its own cooldown."""
    at = [f"branch={trunk}", "branch_epoch=3"]
    return [[*WSD_BUDGET, *at], [*WSD_BUDGET, *at, "scheduler.decay_fraction=0.75"]]


def fake_trunk(run_dir: Path, *overrides: str) -> Path:
    """A trunk on disk as start-up validation reads it: its config and the epochs it kept."""
    run_dir.mkdir()
    config_yaml(make_cfg(*WSD_TRUNK, *overrides), run_dir)
    for k in (3, 5):
        (run_dir / checkpoint.KEPT.format(k)).touch()
    return run_dir


@pytest.mark.slow
def test_branches_fuse_by_start_epoch_and_length(tmp_path):
    trunk = fake_trunk(tmp_path / "trunk")
    a, b = (make_cfg(*o) for o in branches(trunk))
    assert why_not_fusable(a) is None and why_not_fusable(b) is None
    assert group_key(a) == group_key(b)
    later = make_cfg(*WSD_BUDGET, f"branch={trunk}", "branch_epoch=5")
    shorter = make_cfg(*WSD, "epochs=5", "scheduler.decay_fraction=0.5", f"branch={trunk}")
    for other in (later, shorter, make_cfg(*WSD_BUDGET)):
        assert why_not_fusable(other) is None and group_key(other) != group_key(a)
    # branch_epoch null is resolved before the key is made (the launcher validates first)
    null = make_cfg(*WSD_BUDGET, f"branch={trunk}")
    assert why_not_fusable(null) is None and group_key(null) == group_key(later)


@pytest.mark.slow
def test_a_fused_sweep_of_branches_equals_the_branches_run_one_by_one(trunk, separate, tmp_path):
    """The acceptance test: two branches of one trunk, fused by the launcher, each equal
    (to the fused tests' tolerance) to the same branch as the basic launcher runs it."""
    sweep = tmp_path / "sweep"
    proc = run_cli(
        "-m",
        "hydra/launcher=fused",
        *WSD_BUDGET,
        f"branch={trunk}",
        "branch_epoch=3",
        "scheduler.decay_fraction=0.5,0.75",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Training 2 jobs as one fused model" in proc.stdout + proc.stderr
    jobs = job_dirs(sweep)
    assert len(jobs) == 2
    for overrides, job in zip(branches(trunk), sorted(jobs.values()), strict=True):
        assert_same_rows(job, separate(overrides))
        rows = read_metrics(job)
        assert [r.get("from_trunk", False) for r in rows] == [True] * 3 + [False] * 3
        assert rows[:3] == [{**r, "from_trunk": True} for r in read_metrics(trunk)[:3]]
        status = json.loads((job / "status.json").read_text())
        assert status["status"] == "completed" and status["fused_jobs"] == 2
        assert status["epochs_done"] == 6
        assert "branch_epoch: 3" in (job / "config.yaml").read_text()
    assert checkpoint.kept_epochs(trunk) == [3, 5]  # the trunk is left as it was


@pytest.mark.slow
def test_fused_branches_of_two_trunks_with_adamw_and_ema_equal_separate_runs(tmp_path):
    """What a budget sweep's second batch fuses: one budget's branches of its seeds'
    trunks (each member its own trunk, seed and data order), here with Adam's moments and
    step count and the EMA weights carried over, branch_epoch null picked per member."""
    knobs = ("optimizer=adamw", "optimizer.lr=0.003", "trainer.average=ema")
    trunks = train_members(tmp_path / "trunks", [[*WSD_TRUNK, *knobs, f"seed={s}"] for s in (0, 1)])
    jobs = [[*WSD_BUDGET, *knobs, f"seed={s}", f"branch={t.run_dir}"] for s, t in enumerate(trunks)]
    first, second = (make_cfg(*o) for o in jobs)
    assert why_not_fusable(first) is None and why_not_fusable(second) is None
    assert group_key(first) == group_key(second)  # trunk and seed are each member's own
    members = train_members(tmp_path, jobs)
    for member, overrides in zip(members, jobs, strict=True):
        assert member.error is None and member.cfg.branch_epoch == 5
        assert sum(r.get("from_trunk", False) for r in read_metrics(member.run_dir)) == 5
        # its wall time counts its trunk's 5 epochs, as a single branch's does
        kept = torch.load(Path(member.cfg.branch) / "epoch_5.pt", weights_only=False)
        status = json.loads((member.run_dir / "status.json").read_text())
        assert status["wall_time_s"] > kept["progress"]["elapsed_s"]
        one = train_separate(tmp_path, overrides)
        assert_same_rows(member.run_dir, one)
        avg = [[r["val_avg/loss"] for r in read_metrics(d)] for d in (member.run_dir, one)]
        assert avg[0] == pytest.approx(avg[1], rel=REL)  # the EMA went on from the trunk's


@pytest.mark.slow
def test_a_stopped_fused_branch_resumes_with_the_ordinary_runner(
    trunk, separate, tmp_path, monkeypatch
):
    """Stopped in its second epoch of its own: each member's status says interrupted, its
    last.pt holds its first epoch after the branch point, and the same job run again on
    its own resumes there and ends as the branch run straight through."""
    import runner.sweep.fused

    steps_per_epoch = 23  # digits: 1437 training images, batch 64
    stop = StopAfter(steps_per_epoch + 5)
    monkeypatch.setattr(runner.sweep.fused, "stop_on_signals", lambda: contextlib.nullcontext(stop))
    jobs = branches(trunk)
    with pytest.raises(SystemExit):
        train_members(tmp_path, [[*o, "trainer.checkpoint_interval_s=0"] for o in jobs])
    for i, overrides in enumerate(jobs):
        run_dir = tmp_path / "fused" / str(i)
        status = json.loads((run_dir / "status.json").read_text())
        assert status["status"] == "interrupted" and status["fused_jobs"] == 2
        assert status["epochs_done"] == 4 and status["rows_sent"] is False
        state = torch.load(run_dir / checkpoint.LAST, weights_only=False)
        assert state["progress"]["epoch"] == 4 and state["progress"]["step"] == 4 * 23
        again = [*overrides, "trainer.checkpoint_interval_s=0"]
        assert same_run_on_disk(make_cfg(*again), run_dir)  # a rerun resumes it
        assert len(read_metrics(run_dir)) == 4
        assert train(make_cfg(*again), run_dir, again).status == "completed"
        rows = read_metrics(run_dir)
        assert [r.get("from_trunk", False) for r in rows] == [True] * 3 + [False] * 3
        assert_same_rows(run_dir, separate(overrides))
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert saved["branch"] == str(trunk) and saved["branch_epoch"] == 3
