"""The fused launcher keeps a single run's promises about its run dir: one run per dir,
never mixing two runs, and last.pt on disk before the first batch."""

from __future__ import annotations

import json

import pytest
import torch

from runner.io import checkpoint, files
from runner.run.rundir import same_run_on_disk
from runner.run.train import train
from runner.sweep import fused
from runner.sweep.fused import Member, train_group
from tests.helpers import FULL_DISK_DRIVER, make_cfg, read_metrics, run_cli, run_python, sweep_job

COMMON = ["epochs=2", "logger=none", "scheduler=step"]


def members(tmp_path, seeds=(0, 1)) -> list[Member]:
    jobs = [[*COMMON, f"seed={s}"] for s in seeds]
    return [Member(make_cfg(*o), tmp_path / "sweep" / str(i), o, None) for i, o in enumerate(jobs)]


def test_a_member_whose_run_dir_another_run_holds_is_left_out_untouched(tmp_path):
    group = members(tmp_path)
    busy_dir = group[1].run_dir
    busy_dir.mkdir(parents=True)
    with files.hold_run_dir(busy_dir):  # another run writing there (flock: per open file)
        train_group(group)
    assert group[0].result is not None and group[0].result.status == "completed"
    assert group[1].result is None and "is writing into it" in group[1].error
    assert sorted(p.name for p in busy_dir.iterdir()) == [".lock"]  # nothing written


@pytest.mark.slow
def test_fused_members_have_last_pt_before_the_first_batch_and_resume_from_it(
    tmp_path, monkeypatch
):
    def crash(*args, **kwargs):  # the group dies in its first epoch, before any epoch ends
        raise RuntimeError("killed in epoch 0")

    monkeypatch.setattr(fused.StackedModels, "validate", crash)
    group = members(tmp_path)
    train_group(group)
    for m in group:
        assert "killed in epoch 0" in m.error
        state = torch.load(m.run_dir / checkpoint.LAST, weights_only=False)
        assert state["progress"]["epoch"] == 0 and state["progress"]["step"] == 0
        assert same_run_on_disk(m.cfg, m.run_dir)  # a rerun of the sweep resumes this job
    monkeypatch.undo()
    # resumed on its own from that checkpoint, the job trains exactly as a fresh single run
    m = group[1]
    resumed = train(make_cfg(f"resume={m.run_dir}"), m.run_dir, [f"resume={m.run_dir}"])
    assert resumed.status == "completed"
    fresh = tmp_path / "fresh"
    assert train(make_cfg(*m.overrides), fresh).status == "completed"
    got, want = read_metrics(m.run_dir), read_metrics(fresh)
    assert [r["epoch"] for r in got] == [0, 1]
    for a, b in zip(got, want, strict=True):
        for key in ("lr/group0", "train/loss", "val/loss", "val/acc"):
            assert a[key] == pytest.approx(b[key], rel=1e-9, abs=1e-12), key


@pytest.mark.slow
def test_a_fused_sweep_refuses_a_job_dir_holding_another_run_and_fuses_the_rest(tmp_path):
    sweep = tmp_path / "sweep"
    other = sweep_job(sweep, *COMMON, "seed=0")
    other.mkdir(parents=True)
    (other / "config.yaml").write_text("seed: 99\nepochs: 7\n")
    (other / "metrics.jsonl").write_text('{"epoch": 0, "val/acc": 0.5}\n')
    before = {p.name: p.read_bytes() for p in other.iterdir()}
    proc = run_cli(
        "-m",
        "hydra/launcher=fused",
        *COMMON,
        "seed=0,1,2",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    out = proc.stdout + proc.stderr
    assert "#0 runs on its own: its run dir holds another run" in out
    assert "Training 2 jobs as one fused model: #1, #2" in out
    for name, data in before.items():  # the other run's files, byte for byte
        assert (other / name).read_bytes() == data, name
    assert not (other / "last.pt").exists()
    for seed in (1, 2):
        status = json.loads((sweep_job(sweep, *COMMON, f"seed={seed}") / "status.json").read_text())
        assert status["status"] == "completed" and status["fused_jobs"] == 2


@pytest.mark.slow
def test_a_full_disk_in_a_fused_group_fails_its_jobs_cleanly_and_a_rerun_resumes_them(tmp_path):
    """metrics.jsonl torn by a full disk in epoch 1: every member fails with the one-line
    error, nothing later is lost, and the same sweep run again resumes each job."""

    sweep = tmp_path / "sweep"
    argv = ["-m", "hydra/launcher=fused", "epochs=3", "logger=none", "seed=0,1",
            "trainer.checkpoint_interval_s=0", "trainer.progress=line",
            f"hydra.sweep.dir={sweep}"]  # fmt: skip
    case = {"name": "metrics.jsonl", "after": 2, "argv": argv,  # both epoch-0 rows, then torn
            "stdout": str(tmp_path / "out"), "stderr": str(tmp_path / "err")}  # fmt: skip
    driver = run_python("-c", FULL_DISK_DRIVER, json.dumps([case]), cwd=tmp_path, timeout=600)
    assert driver.returncode == 0, driver.stderr[-3000:]
    logged = (tmp_path / "out").read_text() + (tmp_path / "err").read_text()
    assert "the fused group stopped: cannot write" in logged and "Traceback" not in logged
    common = [a for a in argv[2:] if not a.startswith(("seed=", "hydra."))]
    jobs = [sweep_job(sweep, *common, f"seed={seed}") for seed in (0, 1)]
    for job in jobs:
        status = json.loads((job / "status.json").read_text())
        assert status["status"] == "failed" and "No space left on device" in status["error"]
        assert (job / "last.pt").exists()
    again = run_cli(*argv, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    for job in jobs:
        assert [r["epoch"] for r in read_metrics(job)] == [0, 1, 2]  # no torn line
        assert json.loads((job / "status.json").read_text())["status"] == "completed"
