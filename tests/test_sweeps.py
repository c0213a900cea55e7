"""Multiruns end to end: basic and joblib launchers, failures that do not stop a sweep, the
report's numbers against the runs' own metrics, presets, and the Optuna sweeper."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
import yaml

from runner.run.train import train
from tests.helpers import (
    CONF,
    comparable,
    job_dirs,
    make_cfg,
    read_metrics,
    reference,
    report_rows,
    run_cli,
    sweep_job,
    wait_for_rows,
    wandb_records,
)


@pytest.mark.slow
def test_two_schedules_two_seeds_report_matches_the_runs(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        "-m",
        "scheduler=step,cosine",
        "seed=0,1",
        "epochs=3",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    rows = report_rows(sweep)
    assert set(rows) == {"scheduler=step", "scheduler=cosine"}
    jobs = job_dirs(sweep)
    for label, row in rows.items():
        assert (int(row["n"]), int(row["completed"]), int(row["diverged"])) == (2, 2, 0)
        runs = [read_metrics(d) for o, d in jobs.items() if o.startswith(label + " ")]
        best = [max(r["val/acc"] for r in rs) for rs in runs]
        final_loss = [rs[-1]["val/loss"] for rs in runs]
        assert float(row["best_val_acc_mean"]) == pytest.approx(statistics.fmean(best))
        assert float(row["best_val_acc_std"]) == pytest.approx(statistics.stdev(best))
        assert float(row["final_val_loss_mean"]) == pytest.approx(statistics.fmean(final_loss))
        assert float(row["final_val_loss_std"]) == pytest.approx(statistics.stdev(final_loss))
    ranked = [r["config"] for r in csv.DictReader((sweep / "report.csv").open())]
    means = [float(rows[c]["best_val_acc_mean"]) for c in ranked]
    assert means == sorted(means, reverse=True)  # best first
    report = (sweep / "report.md").read_text()
    assert "| 1 |" in report and "| 2 |" in report
    for png in ("lr.png", "val_loss.png", "val_acc.png"):
        assert (sweep / png).stat().st_size > 1000
    assert "report written to" in proc.stdout

    # one W&B run per job (not job 0's run reused), grouped under the sweep, tagged
    run_ids, groups = set(), set()
    for overrides, job in jobs.items():
        (run,) = [r["run"] for r in wandb_records(job) if r["type"] == "run"]
        run_ids.add(run["run_id"])
        groups.add(run.get("run_group"))
        assert set(overrides.split()) <= set(run.get("tags", []))
        assert run["config"]["update"]["overrides"] == overrides.split()
    assert len(run_ids) == 4
    assert groups == {"_".join(sweep.parts[-2:])}


@pytest.mark.slow
def test_diverged_and_failed_jobs_do_not_stop_the_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        "-m",
        "optimizer.lr=0.05,100000000.0,-1",
        "scheduler=none",
        "epochs=3",
        "logger=none",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    status = {o: json.loads((d / "status.json").read_text()) for o, d in job_dirs(sweep).items()}
    by_lr = {o.split()[0]: s["status"] for o, s in status.items()}
    assert by_lr == {
        "optimizer.lr=0.05": "completed",
        "optimizer.lr=100000000.0": "diverged",
        "optimizer.lr=-1": "failed",
    }
    rows = report_rows(sweep)
    assert rows["optimizer.lr=100000000.0"]["diverged"] == "1"
    assert rows["optimizer.lr=-1"]["failed"] == "1"
    assert rows["optimizer.lr=0.05"]["completed"] == "1"
    ranked = list(csv.DictReader((sweep / "report.csv").open()))
    assert ranked[0]["config"] == "optimizer.lr=0.05"  # runs with results rank above the rest
    assert (
        "optimizer.lr=-1" in status["optimizer.lr=-1 scheduler=none epochs=3 logger=none"]["error"]
    )


@pytest.mark.slow
def test_joblib_launcher_runs_jobs_in_parallel_processes_with_the_basic_launchers_metrics(
    tmp_path,
):
    """Each job in its own worker process with its own W&B run, and the same metrics as the
    basic launcher's jobs for the same seeds: with no thread variable set by the user,
    joblib's workers would get OMP_NUM_THREADS = cpu_count // n_jobs while the basic
    launcher's jobs use torch's default: other float sums, other metrics.
    trainer.num_threads=auto gives the workers the user's thread count. (The basic
    launcher's job is train() on its composed config in the process the user started:
    here train() in this process on torch's default thread count, read from a fresh
    interpreter without the variables, not from the code under test; a second sweep cost
    an interpreter, its jobs and its report. W&B, which only the joblib sweep logs to, does
    not change metrics.jsonl.)"""
    import os
    import subprocess
    import sys

    drop = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "SCHEDLAB_USER_THREADS")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k not in drop}
    args = ["scheduler=step,cosine", "epochs=2"]
    sweep = tmp_path / "joblib"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "runner",
            "-m",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            *args,
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {"joblib": {o: comparable(read_metrics(d)) for o, d in job_dirs(sweep).items()}}

    # the basic launcher's jobs: what torch gives a process started without the variables
    default = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    threads = int(default.stdout.split()[-1])
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rows["basic"] = {}
        for scheduler in ("step", "cosine"):
            overrides = [f"scheduler={scheduler}", "epochs=2"]
            run_dir = tmp_path / "basic" / scheduler
            result = train(make_cfg(*overrides, "logger=none"), run_dir, overrides=overrides)
            assert result.status == "completed"
            rows["basic"][" ".join(overrides)] = comparable(read_metrics(run_dir))
    finally:
        torch.set_num_threads(before)

    assert "Joblib.Parallel" in proc.stdout + proc.stderr
    jobs = job_dirs(sweep)
    assert len(jobs) == 2
    run_ids = set()
    for job in jobs.values():
        assert json.loads((job / "status.json").read_text())["status"] == "completed"
        assert len(read_metrics(job)) == 2
        (run,) = [r["run"] for r in wandb_records(job) if r["type"] == "run"]
        run_ids.add(run["run_id"])
    assert len(run_ids) == 2
    assert len(report_rows(sweep)) == 2

    assert len(rows["basic"]) == 2
    assert rows["joblib"] == rows["basic"]  # every value equal, not just close


def test_lecture_schedulers_preset_scales_the_lectures_parameters():
    """The lecture's 200-epoch parameters, scaled to 10 epochs (the sweep itself, all six
    ranked and the lambda groups' lrs: tests/test_lecture.py, on the lecture page's run)."""
    configs = {
        name: make_cfg("+experiment=lecture_schedulers", f"+lecture_schedule={name}", "epochs=10")
        for name in ("step", "multistep", "exponential", "cosine", "plateau", "lambda")
    }
    assert configs["step"].scheduler.step_size == round(50 / 20)
    assert list(configs["multistep"].scheduler.milestones) == [2, 6, 8]
    assert configs["exponential"].scheduler.gamma == pytest.approx(0.95**20)
    assert configs["cosine"].scheduler.T_max == 2
    assert configs["plateau"].scheduler.patience == 1
    assert all(c.model.name == "lenet" for c in configs.values())


@pytest.mark.slow
def test_lecture_lenet_preset_is_the_lecture_script(tmp_path):
    cfg = make_cfg("+experiment=lecture_lenet", "logger=none", "trainer.progress=line")
    assert (cfg.seed, cfg.epochs, cfg.data.batch_size) == (1, 10, 16)
    assert (cfg.model.name, cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.momentum) == (
        "lenet",
        "sgd",
        0.01,
        0.9,
    )
    assert (cfg.scheduler.name, cfg.scheduler.step_size, cfg.scheduler.gamma) == ("step", 10, 0.1)
    result = train(cfg, tmp_path)
    assert result.best_val_acc > 0.9
    assert [r["lr/group0"] for r in read_metrics(tmp_path)] == [0.01] * 10


def test_init_lr_preset_sweeps_the_lectures_small_values():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["+experiment=init_lr"], return_hydra_config=True)
    assert cfg.hydra.sweeper.params["optimizer.lr"] == "0.01,0.001,0.0001"


@pytest.mark.slow
def test_optuna_searches_and_maximises_best_val_acc(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        "+hparams_search=optuna",
        "hydra.sweeper.n_trials=3",
        "epochs=3",
        "logger=none",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    best = max(max(r["val/acc"] for r in read_metrics(d)) for d in job_dirs(sweep).values())
    assert result["best_value"] == pytest.approx(best)
    assert set(result["best_params"]) == {
        "optimizer.lr",
        "scheduler.step_size",
        "scheduler.gamma",
        "scheduler.warmup_epochs",
    }
    assert len(report_rows(sweep)) == 3


@pytest.mark.slow
def test_an_optuna_study_survives_a_failed_and_a_diverged_trial(tmp_path):
    """warmup_epochs=2 of 2 epochs is a config error, lr 1000 diverges: with the sampler's
    seed 0 the 4 trials are diverged, failed, completed, failed. Each is recorded (its
    status.json; told to the study as a COMPLETE trial of value 0.0, not a FAIL the sweeper
    would count against max_failure_rate), the study runs all its trials, and the best is
    the completed one."""
    sweep = tmp_path / "sweep"
    proc = run_cli(
        "+hparams_search=optuna",
        "hydra.sweeper.n_trials=4",
        "optimizer.lr=choice(0.05,1000.0)",
        "scheduler.warmup_epochs=choice(0,2)",
        "scheduler.step_size=1",
        "scheduler.gamma=0.5",
        "epochs=2",
        "logger=none",
        "trainer.diverge_loss=100",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out and "Failed experiment" not in out
    status = {  # by job number: a sampled combination may come twice
        d: json.loads((d / "status.json").read_text())["status"]
        for d in sweep.iterdir()
        if (d / ".hydra").is_dir()
    }
    assert sorted(status.values()) == ["completed", "diverged", "failed", "failed"]
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert result["best_params"] == {"optimizer.lr": 0.05, "scheduler.warmup_epochs": 0}
    (done,) = [d for d, s in status.items() if s == "completed"]
    assert result["best_value"] == pytest.approx(max(r["val/acc"] for r in read_metrics(done)))


@pytest.mark.slow
def test_submitit_local_launcher_runs_a_sweep_and_the_report_covers_it(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        "-m",
        "hydra/launcher=local",
        "scheduler=step,cosine",
        "epochs=2",
        "logger=none",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert (sweep / ".submitit").is_dir()  # really went through submitit
    rows = report_rows(sweep)
    assert set(rows) == {"scheduler=step", "scheduler=cosine"}
    assert all(r["completed"] == "1" for r in rows.values())


# a LeNet job long enough to signal mid-run, checkpointed every epoch
SUBMITIT_ARGS = [
    "model=lenet", "data.batch_size=16", "optimizer.lr=0.02", "epochs=5",
    "logger=none", "trainer.checkpoint_interval_s=0", "trainer.progress=line",
]  # fmt: skip
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # the submitit job and its reference run alike


def submitit_job(sweep: Path) -> Path:
    """The one job's dir, named by its overrides."""
    return sweep_job(sweep, *SUBMITIT_ARGS)


def submitit_command(sweep: Path) -> list[str]:
    import sys

    return [
        sys.executable,
        "-m",
        "runner",
        "-m",
        "hydra/launcher=local",
        *SUBMITIT_ARGS,
        f"hydra.sweep.dir={sweep}",
    ]


def signal_submitit_task(sweep: Path, signum: int) -> None:
    """Send signum to the job's own process (submitit's task), as Slurm would."""
    import os
    import subprocess

    task = subprocess.run(
        ["pgrep", "-f", f"submitit.core._submit {sweep}"], capture_output=True, text=True
    ).stdout.split()
    assert task, "the submitit task process was not found"
    os.kill(int(task[-1]), signum)


def assert_same_as_uninterrupted(run_dir: Path, tmp_path: Path) -> None:
    """The job's rows equal those of the same run never interrupted: its job's train() on
    the same overrides, in this process on one thread (ONE_THREAD); shared by the tests."""

    assert comparable(read_metrics(run_dir)) == reference(tmp_path, SUBMITIT_ARGS)


@pytest.mark.slow
def test_submitit_job_signalled_mid_run_is_requeued_and_resumes_exactly(tmp_path):
    """SIGUSR2 is Slurm's time-out/preemption warning: the run checkpoints, hands the signal
    to submitit, submitit requeues the job, and the job resumes from its last.pt."""
    import os
    import signal
    import subprocess

    sweep = tmp_path / "sweep"
    proc = subprocess.Popen(
        submitit_command(sweep),
        cwd=tmp_path,
        env={**os.environ, **ONE_THREAD},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    job = submitit_job(sweep)
    wait_for_rows(job, 2, proc)
    signal_submitit_task(sweep, signal.SIGUSR2)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    logs = "".join(p.read_text() for p in sweep.glob(".submitit/*/*.out"))
    assert "SIGUSR2: stopping after this batch" in logs
    assert "holds a checkpoint of this same config" in logs  # the requeued job resumed
    assert_same_as_uninterrupted(job, tmp_path)


@pytest.mark.slow
def test_submitit_job_killed_with_sigterm_resumes_when_the_sweep_is_run_again(tmp_path):
    """SIGTERM (a scancel, or the node going away) is not a requeue under submitit: the
    job checkpoints and stops as interrupted. Running the same sweep again into the same
    dir resumes it from last.pt, and it ends as if it had never stopped."""
    import os
    import signal
    import subprocess

    sweep = tmp_path / "sweep"
    env = {**os.environ, **ONE_THREAD}
    proc = subprocess.Popen(
        submitit_command(sweep),
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    job = submitit_job(sweep)
    wait_for_rows(job, 2, proc)
    signal_submitit_task(sweep, signal.SIGTERM)
    proc.communicate(timeout=300)
    status = json.loads((job / "status.json").read_text())
    assert status["status"] == "interrupted"
    assert (job / "last.pt").exists()
    done = len(read_metrics(job))
    assert 2 <= done < 5

    again = subprocess.run(
        submitit_command(sweep), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr[-2000:]
    logs = "".join(p.read_text() for p in sweep.glob(".submitit/*/*.out"))
    assert "holds a checkpoint of this same config" in logs
    assert json.loads((job / "status.json").read_text())["status"] == "completed"
    assert_same_as_uninterrupted(job, tmp_path)
