"""Nothing lost when a run's start fails: a single branch whose trunk checkpoint cannot be
loaded (damaged, or removed after the start-up check) leaves its run dir as every failed
start does, `failed` with the error in status.json and no config.yaml, so that resume=,
the same command and the sweep report read it, and the same command trains it once the
trunk is fixed. A fused member whose run dir another process holds writes nothing there
and is reported pending. Fused GPTs with SWA end as their single runs do."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import runner.run.train
from runner.__main__ import _mark_failed
from runner.io import checkpoint, files
from runner.run.train import train
from runner.sweep import sweepdir
from runner.sweep.fused import Member, replay, train_group, why_not_fusable
from runner.sweep.report import write_report
from schedulers import ConfigError
from tests.helpers import (
    GPT_ON_TOKENS,
    WSD,
    assert_same_rows,
    cli_in_process,
    job_dirs,
    make_cfg,
    read_metrics,
    run_cli,
    train_members,
)

BRANCH = (*WSD, "epochs=6", "branch_epoch=3", "scheduler.decay_fraction=0.5")


def status(run_dir: Path) -> dict:
    return json.loads((run_dir / "status.json").read_text())


def damage(kept: Path) -> bytes:
    """Truncate a checkpoint; returns its bytes, to put it back."""
    whole = kept.read_bytes()
    kept.write_bytes(whole[:100])
    return whole


@pytest.mark.parametrize("fault", ["damaged", "gone after the check"])
def test_a_branch_whose_trunk_checkpoint_fails_to_load_leaves_only_its_failure(
    trunk, tmp_path, monkeypatch, fault
):
    """The start-up check passes (the kept epoch is there); loading it fails. The run dir
    then holds no config.yaml (it would read as a run that started), so the CLI records
    the error in status.json (`_mark_failed`); the same command, the trunk fixed, trains."""
    copy = shutil.copytree(trunk, tmp_path / "trunk")
    kept = copy / checkpoint.KEPT.format(3)
    job = [*BRANCH, f"branch={copy}"]
    whole = kept.read_bytes()
    if fault == "damaged":
        damage(kept)
    else:
        real = runner.run.train.build_run

        def build_then_remove(*args, **kwargs):  # after validate() found the file
            kept.unlink()
            return real(*args, **kwargs)

        monkeypatch.setattr(runner.run.train, "build_run", build_then_remove)
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError) as err:
        train(make_cfg(*job), run_dir)
    monkeypatch.undo()
    assert ("is damaged" if fault == "damaged" else "is gone") in str(err.value)
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]  # no config.yaml, no rows
    _mark_failed(run_dir, f"config error: {err.value}", config_error=True)
    assert status(run_dir) == {"status": "failed", "error": f"config error: {err.value}"}
    refused = cli_in_process(f"resume={run_dir}", cwd=tmp_path)  # nothing trained to resume
    assert refused.returncode == 2
    assert f"its start failed (config error: {err.value})" in refused.stderr
    assert "the command that started it starts it again" in refused.stderr
    kept.write_bytes(whole)
    assert train(make_cfg(*job), run_dir).status == "completed"
    rows = read_metrics(run_dir)
    assert [r["epoch"] for r in rows] == list(range(6))
    assert [r.get("from_trunk", False) for r in rows] == [True] * 3 + [False] * 3


def test_a_failed_start_s_status_is_replaced_by_the_next_failed_start_s_error(tmp_path):
    """A status.json that records only a failed (or stopped) start says the newest error;
    a dir that holds a run (its config.yaml, or a completed status) keeps its record."""
    fresh, started, done = tmp_path / "fresh", tmp_path / "started", tmp_path / "done"
    for d in (fresh, started, done):
        d.mkdir()
        _mark_failed(d, "config error: first", config_error=True)
    (started / "config.yaml").write_text("epochs: 2\n")
    (done / "status.json").write_text(json.dumps({"status": "diverged", "epochs_done": 1}))
    for d in (fresh, started, done):
        _mark_failed(d, "config error: second", config_error=True)
    assert status(fresh)["error"] == "config error: second"
    assert status(started)["error"] == "config error: first"
    assert status(done)["status"] == "diverged"


def test_resume_of_a_dir_whose_start_never_trained_says_what_its_status_records(tmp_path):
    """resume= of a dir without config.yaml: `config.yaml missing`, and what its status.json
    says of a start that failed or was stopped (the command that started it starts it
    again); a status of another kind, or none, adds nothing."""
    say = files.no_run_to_resume
    missing = f"no run to resume: {tmp_path / 'config.yaml'} missing"
    assert say(tmp_path) == missing
    (tmp_path / "status.json").write_text(json.dumps({"status": "interrupted"}))
    assert say(tmp_path).startswith(f"{missing}: it was stopped during its start-up")
    (tmp_path / "status.json").write_text(json.dumps({"status": "failed", "error": "boom"}))
    assert say(tmp_path) == (
        f"{missing}: its start failed (boom), before it trained; the command that started it "
        "starts it again"
    )
    (tmp_path / "status.json").write_text(json.dumps({"status": "completed"}))
    assert say(tmp_path) == missing


@pytest.mark.slow
def test_a_sweep_job_whose_trunk_checkpoint_is_damaged_is_reported_failed_and_reruns(
    trunk, tmp_path
):
    """Through the CLI (basic launcher): the job is `failed` with its config error, the
    sweep exits 2 saying so and its report counts it failed; resume= of its dir finds no
    run (the same command starts it); the same sweep, the trunk fixed, trains it."""
    copy = shutil.copytree(trunk, tmp_path / "trunk")
    whole = damage(copy / checkpoint.KEPT.format(3))
    sweep = tmp_path / "sweep"
    command = ("-m", *BRANCH, f"branch={copy}", "seed=0", f"hydra.sweep.dir={sweep}")
    proc = run_cli(*command, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "1 job(s) failed their config check" in proc.stderr
    (job,) = job_dirs(sweep).values()
    assert status(job)["status"] == "failed" and "is damaged" in status(job)["error"]
    assert not (job / "config.yaml").exists()
    report = (sweep / "report.md").read_text()
    # the report's row: # | config | runs | done | diverged | failed | ...
    (row,) = [line for line in report.splitlines() if line.startswith("| 1 ")]
    assert [c.strip() for c in row.strip("|").split("|")][2:6] == ["1", "0", "0", "1"]
    before = {p.name: p.read_bytes() for p in job.iterdir() if p.is_file()}
    refused = cli_in_process(f"resume={job}", cwd=tmp_path)
    assert refused.returncode == 2 and "its start failed (config error: " in refused.stderr
    assert {p.name: p.read_bytes() for p in job.iterdir() if p.is_file()} == before
    (copy / checkpoint.KEPT.format(3)).write_bytes(whole)
    again = run_cli(*command, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert status(job)["status"] == "completed"


def test_a_fused_member_whose_run_dir_another_process_holds_writes_nothing_there(tmp_path, caplog):
    """Its dir's lock is held (here by this test: flock refuses a second open file as it
    refuses another process): writing its status.json would mix the holder's run with this
    job, so nothing is written; the member is named pending, which the sweep's report and
    exit status (2, run the same command again) say; the other member trains alone."""
    sweep = tmp_path / "sweep"
    jobs = [[*GPT_ON_TOKENS, "epochs=1", f"seed={s}"] for s in (0, 1)]
    group = [
        Member(make_cfg(*o), sweep / str(i), o, None, sweep_dir=sweep) for i, o in enumerate(jobs)
    ]
    held = sweep / "1"
    held.mkdir(parents=True)
    with files.hold_run_dir(held) as lock:
        lock.claim()
        train_group(group)
        assert sorted(p.name for p in held.iterdir()) == [".lock"]
        assert "is writing into it" in group[1].error and not group[1].failed_start
    assert replay(group[1]) == 0.0
    assert "job refused, pending (not a loss): error: hydra.sweep.dir=" in caplog.text
    hydra = group[0].run_dir / ".hydra"  # what Hydra's run_job writes for the job it replays
    hydra.mkdir()
    (hydra / "overrides.yaml").write_text("".join(f"- {o}\n" for o in jobs[0]))
    assert json.loads((group[0].run_dir / "status.json").read_text())["fused_jobs"] == 1
    (row,) = sweepdir.refused(sweep)
    assert row["dir"] == "1"
    code, line = sweepdir.exit_status(sweep)
    assert code == 2 and "1 job(s) refused" in line and "pending, not a loss" in line
    assert "1 job(s) refused because another process was writing" in write_report(sweep)


def test_fused_gpts_with_swa_end_as_their_single_runs(tmp_path):
    """trainer.average=swa (from epoch 1, its own constant lr after a cosine schedule) on
    two tiny GPTs fused: each member's rows (val_avg/* included) and last.pt (the averaged
    model and its count) equal its single run's, within tests/test_fused_gpt.py's
    tolerance."""
    common = [
        *GPT_ON_TOKENS, "epochs=3", "scheduler=cosine", "optimizer.weight_decay=0.1",
        "trainer.average=swa", "trainer.swa_start=1", "trainer.swa_lr=0.002",
    ]  # fmt: skip
    jobs = [[*common, "seed=0"], [*common, "seed=1", "optimizer.lr=0.003"]]
    assert why_not_fusable(make_cfg(*jobs[0])) is None
    members = train_members(tmp_path, jobs)
    for i, (member, overrides) in enumerate(zip(members, jobs, strict=True)):
        single = tmp_path / "single" / str(i)
        assert train(make_cfg(*overrides), single).status == "completed"
        assert_same_rows(member.run_dir, single)
        assert json.loads((member.run_dir / "status.json").read_text())["fused_jobs"] == 2
        assert "val_avg/loss" in read_metrics(member.run_dir)[-1]
        fused, ref = (
            torch.load(d / "last.pt", weights_only=False) for d in (member.run_dir, single)
        )
        assert fused["average"].keys() == ref["average"].keys()
        for key, value in ref["average"].items():
            torch.testing.assert_close(fused["average"][key], value, rtol=1e-4, atol=1e-6, msg=key)
