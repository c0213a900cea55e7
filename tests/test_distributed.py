"""DDP on CPU (gloo): two ranks on global batch B train like one process on B, started by
torchrun or as the two tasks of one submitit job (a sweep job with tasks_per_node=2)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from runner.core.config import validate
from runner.run.train import train
from schedulers import ConfigError
from tests.conftest import cli_in_process, make_cfg, one_torch_thread, read_metrics

TORCHRUN = Path(sys.executable).parent / "torchrun"


@pytest.mark.parametrize(
    "data",
    [
        [],  # the bundled digits, in memory
        # a Dataset streamed through a DataLoader (torchvision's FakeData, data=dataset's
        # default), its samples seeded by (seed, epoch, index) on every rank alike
        ["data=dataset", "data.in_memory=false", "data.num_workers=0"],
    ],
    ids=["in_memory", "streamed"],
)
def test_two_ranks_match_one_process_and_write_one_run(tmp_path, data):
    args = ["epochs=3", "scheduler=step", "scheduler.step_size=1", "scheduler.gamma=0.5",
            "data.batch_size=64", "trainer.progress=line", *data]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env["OMP_NUM_THREADS"] = "1"
    ddp = subprocess.run(
        [str(TORCHRUN), "--standalone", "--nproc_per_node=2", "-m", "runner",
         "trainer.strategy=ddp", *args, f"hydra.run.dir={tmp_path / 'ddp'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    # one process on the whole batch: the job `python -m runner <args>` runs, in this process
    with one_torch_thread():
        one = train(make_cfg(*args, "logger=none"), tmp_path / "one", overrides=args)
    assert one.status == "completed"
    a, b = read_metrics(tmp_path / "ddp"), read_metrics(tmp_path / "one")
    assert [r["epoch"] for r in a] == [0, 1, 2]  # one metrics.jsonl, written once
    for ra, rb in zip(a, b, strict=True):
        assert ra["lr/group0"] == rb["lr/group0"]  # same schedule, stepped identically
        for key in ("train/loss", "train/acc", "val/loss", "val/acc"):
            assert ra[key] == pytest.approx(rb[key], abs=1e-4), key
    assert len(list((tmp_path / "ddp").glob("wandb/offline-run-*"))) == 1  # one W&B run


def test_ddp_outside_torchrun_is_a_config_error():
    with pytest.raises(ConfigError, match="torchrun"):
        validate(make_cfg("trainer.strategy=ddp"))


def test_ddp_in_a_plain_process_is_exit_2_naming_the_key(tmp_path):
    proc = cli_in_process("trainer.strategy=ddp", cwd=tmp_path)
    assert proc.returncode == 2
    assert "trainer.strategy" in proc.stderr and "tasks_per_node" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "outputs").exists()  # refused before Hydra made a run dir


LAUNCH_ENV = ("LOCAL_RANK", "WORLD_SIZE", "RANK", "SUBMITIT_EXECUTOR")
# what submitit's local executor sets for task 1 of a job with two tasks (local/local.py)
LOCAL_TASK_1_OF_2 = {
    "SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_JOB_ID": "4242",
    "SUBMITIT_LOCAL_NTASKS": "2", "SUBMITIT_LOCAL_GLOBALID": "1", "SUBMITIT_LOCAL_LOCALID": "1",
    "SUBMITIT_LOCAL_NODEID": "0", "SUBMITIT_LOCAL_JOB_NUM_NODES": "1",
}  # fmt: skip
LOCAL_ONE_TASK = {**LOCAL_TASK_1_OF_2, "SUBMITIT_LOCAL_NTASKS": "1",
                  "SUBMITIT_LOCAL_GLOBALID": "0", "SUBMITIT_LOCAL_LOCALID": "0"}  # fmt: skip
# and what Slurm sets for task 5 of `nodes=2 tasks_per_node=4` (submitit's SlurmJobEnvironment)
SLURM_TASK_5_OF_8 = {
    "SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "77", "SLURM_NTASKS": "8",
    "SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NODEID": "1",
    "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "gpu[01-02]",
}  # fmt: skip


def launched_as(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for key in list(os.environ):
        if key in LAUNCH_ENV or key.startswith(("SUBMITIT_", "SLURM_")):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)


@pytest.mark.parametrize(
    ("env", "strategy", "joins"),
    [
        ({"LOCAL_RANK": "0", "WORLD_SIZE": "1"}, "ddp", True),  # torchrun, one process: asked
        ({"LOCAL_RANK": "0", "WORLD_SIZE": "1"}, "auto", False),  # nobody to join
        ({"LOCAL_RANK": "1", "WORLD_SIZE": "2"}, "auto", True),
        ({"LOCAL_RANK": "0", "WORLD_SIZE": "2"}, "single", False),
        (LOCAL_TASK_1_OF_2, "auto", True),  # a sweep job with tasks_per_node=2
        (LOCAL_TASK_1_OF_2, "ddp", True),
        (SLURM_TASK_5_OF_8, "auto", True),  # nodes=2 tasks_per_node=4
        (LOCAL_ONE_TASK, "auto", False),  # an ordinary sweep job: trains alone
        (LOCAL_ONE_TASK, "ddp", True),  # asked: a group of one, as torchrun's nproc 1
        ({"SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_NTASKS": "2", "LOCAL_RANK": "0",
          "WORLD_SIZE": "1"}, "auto", False),  # torchrun inside a submitit job: torchrun's
    ],
)  # fmt: skip
def test_which_launches_join_a_process_group(monkeypatch, env, strategy, joins):
    """`--nproc_per_node=1 ... trainer.strategy=ddp` joins (nccl + DDP on one GPU: the
    smoke run of benchmarks/gpu_smoke.sh); auto joins only with several ranks, from
    torchrun or from the tasks of one submitit job (Slurm's or the local executor's)."""
    from runner.core.distributed import wanted

    launched_as(monkeypatch, env)
    assert wanted(strategy) is joins


def test_a_submitit_task_knows_its_rank_before_joining(monkeypatch):
    """What gates the files a task writes before the process group exists (status.json of
    a failed job): the rank submitit gave it; `single` in a multi-task job is refused."""
    from runner.core.distributed import launch_rank, wanted

    launched_as(monkeypatch, SLURM_TASK_5_OF_8)
    assert launch_rank() == 5
    with pytest.raises(ConfigError, match="trainer.strategy.*8 tasks"):
        wanted("single")
    launched_as(monkeypatch, {})
    assert launch_rank() == 0


# the torchrun test's run, two epochs: the same global batch of 64 on one or two ranks
JOB_ARGS = ["epochs=2", "scheduler=step", "scheduler.step_size=1", "scheduler.gamma=0.5",
            "data.batch_size=64", "trainer.progress=line",
            "trainer.checkpoint_interval_s=0"]  # fmt: skip
_ONE_PROCESS: dict[str, list[dict]] = {}


def one_process(tmp_path: Path) -> list[dict]:
    """JOB_ARGS trained by one process (this one, one torch thread), computed once."""
    if not _ONE_PROCESS:
        with one_torch_thread():
            one = train(make_cfg(*JOB_ARGS, "logger=none"), tmp_path / "one", overrides=JOB_ARGS)
        assert one.status == "completed"
        _ONE_PROCESS["rows"] = read_metrics(tmp_path / "one")
    return _ONE_PROCESS["rows"]


def two_task_job(sweep: Path, *args: str) -> subprocess.CompletedProcess:
    """A sweep of one job, run by submitit's local executor as two tasks (two processes of
    the job, as Slurm's srun starts them), gloo on CPU."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "runner", "-m", "hydra/launcher=local",
         "hydra.launcher.tasks_per_node=2", *JOB_ARGS, *args, f"hydra.sweep.dir={sweep}"],
        cwd=sweep.parent, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def task_logs(sweep: Path, task: int) -> str:
    return "".join(p.read_text() for p in sorted(sweep.glob(f".submitit/*/*_{task}_log.*")))


def assert_like_one_process(rows: list[dict], tmp_path: Path) -> None:
    assert [r["epoch"] for r in rows] == [0, 1]  # one metrics.jsonl, written once
    for ra, rb in zip(rows, one_process(tmp_path), strict=True):
        assert ra["lr/group0"] == rb["lr/group0"]  # same schedule, stepped identically
        for key in ("train/loss", "train/acc", "val/loss", "val/acc"):
            assert ra[key] == pytest.approx(rb[key], abs=1e-4), key


def test_a_sweep_job_on_two_submitit_tasks_matches_one_process_and_writes_one_run(tmp_path):
    sweep = tmp_path / "sweep"
    proc = two_task_job(sweep, "logger=wandb")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = sweep / "0"
    rank0, rank1 = task_logs(sweep, 0), task_logs(sweep, 1)
    assert "global_rank=1(2)" in rank1  # really two tasks of one submitit job
    assert "Job completed successfully" in rank1 and "Traceback" not in rank0 + rank1
    assert_like_one_process(read_metrics(run_dir), tmp_path)  # so: one run on two ranks
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    assert len(list(run_dir.glob("wandb/offline-run-*"))) == 1  # one W&B run
    assert [d.name for d in sweep.iterdir() if d.is_dir() and not d.name.startswith(".")] == [
        "0"
    ]  # one job dir
    # Hydra gave each task a handler on train.log; submitit logs this line in both tasks
    log = (run_dir / "train.log").read_text()
    assert log.count("Job completed successfully") == 1 and "mlp on digits" in log
    assert "DDP: 2 process(es), gloo" in log
    assert (run_dir / ".hydra" / "config.yaml").is_file()


class StopInEpoch:
    """A stop flag that reads as SIGUSR2 once the run has logged `n` epochs: the run stops
    in epoch n and keeps last.pt of its first n epochs, as a job whose time ran out."""

    chain = False

    def __init__(self, run_dir: Path, n: int) -> None:
        self.run_dir, self.n = run_dir, n

    @property
    def signum(self) -> int | None:
        try:
            done = len(read_metrics(self.run_dir))
        except (OSError, ValueError):  # not written yet, or a line half-written
            return None
        return signal.SIGUSR2 if done >= self.n else None

    def restore(self) -> None:
        pass


def test_a_requeued_two_task_job_resumes_every_rank_from_the_same_last_pt(tmp_path):
    """The job's first attempt (one process here) stopped in epoch 1 with last.pt of epoch
    0; the requeued job, two tasks, finds the same config in its dir: rank 0 loads last.pt
    and both ranks continue from that state (a rank starting over, or from another state,
    would train another epoch count or other samples). Run once more, it finds the run
    complete and does nothing, on every rank."""
    sweep = tmp_path / "sweep"
    run_dir = sweep / "0"
    with one_torch_thread():
        first = train(make_cfg(*JOB_ARGS, "logger=none"), run_dir, overrides=JOB_ARGS,
                      stop=StopInEpoch(run_dir, 1))  # fmt: skip
    assert first.status == "interrupted" and first.epochs_done == 1
    proc = two_task_job(sweep, "logger=none")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = task_logs(sweep, 0), task_logs(sweep, 1)
    assert "holds a checkpoint of this same config: resuming it" in rank0
    assert "resuming" not in rank1  # rank 1 took rank 0's decision, logged nothing of it
    assert "Traceback" not in rank0 + rank1
    rows = read_metrics(run_dir)
    assert_like_one_process(rows, tmp_path)
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"

    before = (run_dir / "metrics.jsonl").read_bytes()
    proc = two_task_job(sweep, "logger=none")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "is already complete" in task_logs(sweep, 0)
    ended = [
        line
        for line in task_logs(sweep, 1).splitlines()
        if line.startswith("submitit INFO") and "Job completed successfully" in line
    ]
    assert len(ended) == 2  # rank 1 ended both runs too (none waits for a rank that left)
    assert (run_dir / "metrics.jsonl").read_bytes() == before


def run_files(run_dir: Path) -> dict[str, bytes]:
    """The run's own files (not Hydra's train.log and .hydra/, which every job writes)."""
    return {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()
            and p.name != "train.log"}  # fmt: skip


def test_a_refused_run_dir_ends_every_task_of_the_job(tmp_path):
    """Rank 0 refuses a dir that holds another run; the other rank gets the same config
    error from it (rather than waiting for a rank that gave up) and writes nothing."""
    sweep = tmp_path / "sweep"
    other = [*JOB_ARGS, "seed=1"]
    with one_torch_thread():
        train(make_cfg(*other, "logger=none"), sweep / "0", overrides=other)
    before = run_files(sweep / "0")
    proc = two_task_job(sweep, "logger=none")
    assert proc.returncode == 0, proc.stderr[-3000:]  # the sweep goes on: a failed job
    for task in (0, 1):
        log = task_logs(sweep, task)
        assert "config error: hydra.run.dir=" in log and "Traceback" not in log, task
    # status.json, metrics, checkpoints: as the other run left them
    assert run_files(sweep / "0") == before
