"""What the tests share: compose configs in-process, run the CLI (as a subprocess, or in this
process for a command that ends before Hydra), read back what a run wrote, start and stop
runs, and the references the tests compare runs against. A module, not a test file, so no
test file imports another (tests/test_layers.py checks it); conftest.py holds only fixtures
and hooks."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from omegaconf import DictConfig
from torch.optim import lr_scheduler as tls

from runner.config.compose import CONF as CONF  # re-exported for the tests
from runner.config.compose import compose_config
from runner.run.train import train
from runner.sweep.fused import Member, train_group
from schedulers.binder import plain
from schedulers.lecture import ITERATIONS, LR, MAX_EPOCH, plateau_loss
from schedulers.lecture import toy_params as lecture_params

# -- configs, the CLI, what a run wrote


WANDB_CLI = Path(sys.executable).parent / "wandb"
ROOT = Path(__file__).resolve().parents[1]


def make_cfg(*overrides: str) -> DictConfig:
    """The config `python -m runner <overrides>` would run, composed by Hydra's compose API."""
    return compose_config(list(overrides))


def make_values(*overrides: str) -> dict[str, Any]:
    """`make_cfg`'s config as plain values, `${...}` resolved: what the group checkers
    (validate_model, validate_data, ...) are handed by runner/run/check.py's `validate`,
    which resolves the config once."""
    return plain(make_cfg(*overrides))


def read_metrics(run_dir: Path, kind: str = "epoch") -> list[dict]:
    """The epoch rows of a run's metrics.jsonl (or its step rows, kind="step")."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("kind", "epoch") == kind]


def quiet_env(one_thread: bool = False) -> dict[str, str]:
    """This process's environment for a child run, less W&B's variables (the tests' runs are
    offline, whatever the shell says); one_thread: OMP_NUM_THREADS=1, the float sums of a
    reference trained under one_torch_thread."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    if one_thread:
        env["OMP_NUM_THREADS"] = "1"
    return env


def run_python(
    *args: str, cwd: Path, one_thread: bool = False, timeout: int = 300
) -> subprocess.CompletedProcess:
    """`python <args>` (`-m runner ...`, or `-c <script> ...`) in quiet_env, its output kept."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=quiet_env(one_thread),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def imported_by(code: str, packages: tuple[str, ...]) -> list[str]:
    """Which of `packages` (top-level names) a fresh interpreter holds in sys.modules once it
    has run `code` in the repository's root: what a start-up pays in imports, which this
    process (torch and all already imported) cannot tell."""
    probe = (
        f"{code}\nimport json, sys\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({packages!r}))))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_cli(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m runner <args>` on one torch thread, in or outside xdist: the float sums of
    the in-process references (`reference`, one_torch_thread) that resumed runs are
    compared with (outside xdist it used every core, and rows differed by 1e-7)."""
    return run_python("-m", "runner", *args, cwd=cwd, one_thread=True, timeout=timeout)


class _ReachedHydra(BaseException):
    """cli_in_process: the command got past every check made before Hydra starts (not an
    Exception: cli() reports those as a failed run)."""


def cli_in_process(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m runner <args>` for a command that ends before Hydra starts (a config error,
    a refused or already complete run dir): runner.__main__.cli() itself, in this process,
    with its exit status and output as run_cli returns them, without a new interpreter's
    ~6 s of imports. A command that gets past those checks is run by run_cli instead, so
    the result is always what the real command gives."""
    import io

    import runner.__main__ as entry

    def reached_hydra() -> None:
        raise _ReachedHydra

    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        # cli() sets it for Hydra once the checks pass; "" reads as unset and is undone
        mp.setenv("HYDRA_FULL_ERROR", os.environ.get("HYDRA_FULL_ERROR", ""))
        mp.setattr(sys, "argv", ["runner", *args])
        mp.setattr(entry, "main", reached_hydra)
        mp.setattr(entry, "_CLI_STOP", None)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                entry.cli()
            code = 0
        except _ReachedHydra:
            code = None
        except SystemExit as exit_:  # as the interpreter turns it into an exit status
            code = exit_.code
            if code is None:
                code = 0
            elif not isinstance(code, int):
                print(code, file=err)
                code = 1
        finally:  # the run dir lock cli() took for the run it would start: not this process's
            release_kept_locks()
    if code is None:
        return run_cli(*args, cwd=cwd)
    return subprocess.CompletedProcess(["runner", *args], code, out.getvalue(), err.getvalue())


def release_kept_locks() -> None:
    """Drop the run-dir locks the CLI took for a run (files.keep_run_dir) that this test
    process will not start, and the result of its start-up check, kept for that run's job
    (runner/run/check.py validate_and_hand_on)."""
    from runner.io import files
    from runner.run import check

    files.release_kept()
    check._HANDED.clear()


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """torch on one CPU thread, as in a `python -m runner` started with OMP_NUM_THREADS=1 (what
    run_cli gives its processes under xdist): the same float sums, so the same metrics."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


TORCHRUN = Path(sys.executable).parent / "torchrun"


def torchrun(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=2 -m runner <args>` on CPU, one torch thread
    a rank."""
    env = quiet_env(one_thread=True)
    command = [str(TORCHRUN), "--standalone", "--nproc_per_node=2", "-m", "runner", *args]
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def train_stopped_at_step(
    monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...] | list[str], run_dir: Path, n: int
) -> None:
    """train(args) in this process into run_dir, stopped by a SIGINT in its `n`th training
    step (a run killed mid-epoch): it ends "interrupted", its last.pt saved."""
    import runner.run.train
    from runner.train.stopping import StopFlag

    real, stop, calls = runner.run.train.train_step, StopFlag(), []

    def step_then_stop(*a, **kw):
        calls.append(1)
        if len(calls) == n:
            stop.signum = signal.SIGINT
        return real(*a, **kw)

    monkeypatch.setattr(runner.run.train, "train_step", step_then_stop)
    assert train(make_cfg(*args), run_dir, stop=stop).status == "interrupted"
    monkeypatch.undo()


def resumed_and_straight(
    args: tuple[str, ...] | list[str], run_dir: Path, ref_dir: Path
) -> tuple[list[dict], list[dict]]:
    """The stopped run in run_dir resumed (as `resume=<dir>` does) and args trained without a
    stop in ref_dir: both runs' comparable rows, equal when the resume is exact."""
    given = [f"resume={run_dir}"]
    assert train(make_cfg(*given), run_dir, overrides=given).status == "completed"
    train(make_cfg(*args), ref_dir)
    return comparable(read_metrics(run_dir)), comparable(read_metrics(ref_dir))


def wandb_records(run_dir: Path, newest: bool = False, index: int | None = None) -> list[dict]:
    """Every record of the run's offline .wandb file, decoded by W&B's own CLI (`newest`:
    of its newest, when a resume has written another; `index`: of the index-th, oldest
    first; else there must be one)."""
    found = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"), key=lambda p: p.stat().st_mtime)
    if index is not None:
        found = [found[index]]
    (wandb_file,) = found[-1:] if newest else found
    out = subprocess.run(
        [str(WANDB_CLI), "leet", "inspect", "--json", str(wandb_file)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


# -- runs stopped mid-way and the same runs never interrupted


# LeNet with batch 16 on digits: ~0.3 s an epoch, slow enough to be stopped mid-run
SLOW = ("model=lenet", "data.batch_size=16", "optimizer.lr=0.02", "trainer.progress=line")


def start(
    args: list[str], cwd: Path, own_group: bool = False, script: str | None = None
) -> subprocess.Popen:
    """`python -m runner <args>` started, its output piped. `own_group`: in a process group
    of its own, so that os.killpg reaches its DataLoader workers too (a worker that outlives
    its SIGKILLed parent keeps the output pipes open, and reading them to the end hangs).
    `script`: `python -c script <args>` instead (a script that patches the runner, then
    runs it as `python -m runner` does)."""
    entry = ["-c", script] if script is not None else ["-m", "runner"]
    return subprocess.Popen(
        [sys.executable, *entry, *args],
        cwd=cwd,
        env=quiet_env(one_thread=True),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=own_group,
    )


def wait_for_rows(run_dir: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    metrics = run_dir / "metrics.jsonl"
    while time.monotonic() < deadline:
        try:
            if metrics.exists() and len(read_metrics(run_dir)) >= n:  # epoch rows
                return
        except ValueError:  # caught a line half-written; look again
            pass
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError(f"no {n} epochs within {timeout}s")


def comparable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


_REFERENCES: dict[tuple[str, ...], list[dict]] = {}


def reference(tmp_path: Path, args: list[str]) -> list[dict]:
    """The same run, never interrupted: the job `python -m runner <args>` runs, train() on
    the config composed from the same overrides, in this process (no interpreter start-up)
    on one torch thread, as `start` runs the interrupted one. Computed once per set of args."""
    key = tuple(args)
    if key not in _REFERENCES:
        run_dir = tmp_path / "reference"
        with one_torch_thread():
            result = train(make_cfg(*args), run_dir, overrides=list(args))
        assert result.status == "completed"
        _REFERENCES[key] = comparable(read_metrics(run_dir))
    return _REFERENCES[key]


def resume_in_process(run_dir: Path):
    """The job `python -m runner resume=<dir>` runs: train() on the saved run, in this
    process, on one torch thread as `start` runs the interrupted one (the command itself
    resumes in the signal and requeue tests below, and in test_custom_project.py)."""
    with one_torch_thread():
        return train(make_cfg(f"resume={run_dir}"), run_dir, overrides=[f"resume={run_dir}"])


# -- run dirs


def snapshot(run_dir: Path) -> dict[str, bytes | None]:
    """Every file under the run dir, byte for byte; W&B's debug-core.log and
    debug-internal.log only by name: W&B's service process (shared by the test process's
    runs) appends to them on its own time, also after the run has ended. That service may
    also still be writing an ended in-process run's .wandb file (seen once in CI: 7 bytes,
    its header, then the whole run): it is shut down first, as a command's exit does."""
    if "wandb" in sys.modules:
        sys.modules["wandb"].teardown()  # no-op without a service; the next run starts one
    return {
        str(p.relative_to(run_dir)): None
        if p.name in ("debug-core.log", "debug-internal.log")
        else p.read_bytes()
        for p in run_dir.rglob("*")
        if p.is_file()
    }


# -- streamed data


V2 = "torchvision.transforms.v2"


def pipeline(random: bool) -> str:
    steps = [f"{{_target_:{V2}.ToImage}}"]
    if random:
        steps += [
            f"{{_target_:{V2}.RandomCrop,size:8,padding:1}}",
            f"{{_target_:{V2}.RandomHorizontalFlip}}",
        ]
    steps.append(
        f"{{_target_:{V2}.ToDtype,dtype:{{_target_:hydra.utils.get_object,path:torch.float32}},"
        "scale:true}"
    )
    return f"{{_target_:{V2}.Compose,transforms:[{','.join(steps)}]}}"


# -- fused sweeps against separate runs


REL = 1e-4  # the tolerance for losses/accuracies; lrs must be equal
SPEEDS = ("train/tokens_per_s", "train/mfu")  # a language model's rows: timings, like time/*


def train_separate(tmp_path: Path, overrides: list[str]) -> Path:
    run_dir = tmp_path / "separate" / "_".join(overrides).replace("/", "_")
    assert train(make_cfg(*overrides), run_dir).status in ("completed", "diverged")
    return run_dir


def assert_same_rows(fused: Path, separate: Path) -> None:
    """lr values equal; losses and accuracies within REL (speeds not compared); same step
    rows."""
    for kind in ("epoch", "step"):
        a, b = read_metrics(fused, kind), read_metrics(separate, kind)
        assert len(a) == len(b) and (a or kind == "step"), (fused, kind)
        for row, ref in zip(a, b, strict=True):
            assert row.keys() == ref.keys()
            for key, value in row.items():
                if key.startswith("lr"):
                    assert value == ref[key], key
                elif key.startswith(("train/", "val/")) and key not in SPEEDS:
                    assert value == pytest.approx(ref[key], rel=REL, nan_ok=True), key


def train_members(tmp_path: Path, jobs: list[list[str]]) -> list[Member]:
    """train_group on these jobs (what the launcher does for one group), in-process."""
    members = [
        Member(make_cfg(*o), tmp_path / "fused" / str(i), o, None) for i, o in enumerate(jobs)
    ]
    train_group(members)
    return members


# -- TensorBoard


def tensorboard_scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


# -- a full disk


# `python -m runner` with one write site failing: ENOSPC from fsync for the whole-file
# writes (status.json, config.yaml, last.pt: where a full disk shows on delayed
# allocation) or from a write(2) that got half the line out (metrics.jsonl), after `after`
# successful writes of that file. One interpreter runs the cases one after the other (as
# a sweep runs its jobs), each as `python -m runner` with its own exit status and its own
# stdout and stderr (file descriptors 1 and 2 sent to that case's files): one start-up of
# the interpreter for all of them.
FULL_DISK_DRIVER = r"""
import errno, json, os, runpy, sys, traceback
cases = json.loads(sys.argv[1])
case = {"name": None, "after": 0, "seen": 0}

def target(fd, exact):
    path = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
    if exact:
        return path == case["name"]
    return path.startswith(f".{case['name']}.") and path.endswith(".tmp")

def due():
    case["seen"] += 1
    return case["seen"] > case["after"]

def no_space():
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

real_write, real_fsync = os.write, os.fsync

def write(fd, data):
    if case["name"] == "metrics.jsonl" and target(fd, exact=True) and due():
        real_write(fd, bytes(data[: len(data) // 2]))
        no_space()
    return real_write(fd, data)

def fsync(fd):
    if case["name"] not in (None, "metrics.jsonl") and target(fd, exact=False) and due():
        no_space()
    return real_fsync(fd)

os.write, os.fsync = write, fsync
saved, codes = (os.dup(1), os.dup(2)), []
for c in cases:
    sys.stdout.flush(), sys.stderr.flush()
    for fd, path in ((1, c["stdout"]), (2, c["stderr"])):
        out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(out, fd)
        os.close(out)
    case.update(name=c["name"], after=c["after"], seen=0)
    sys.argv = ["runner", *c["argv"]]
    try:  # what the interpreter makes of the way `python -m runner` ends
        runpy.run_module("runner", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
        if isinstance(exit_.code, str):
            print(exit_.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        code = 1
    case["name"] = None
    sys.stdout.flush(), sys.stderr.flush()
    os.dup2(saved[0], 1), os.dup2(saved[1], 2)
    codes.append(code)
print(json.dumps(codes))
"""


# -- the lecture's toy demo, against torch used directly


def torch_reference(name: str) -> list[list[float]]:
    """The lecture's script written with torch's classes and Python lambdas, no schedlab."""
    params = lecture_params(name)
    opt = torch.optim.SGD([{"params": [p]} for p in params], lr=LR, momentum=0.9)
    sched = {
        "step": lambda: tls.StepLR(opt, step_size=50, gamma=0.1),
        "multistep": lambda: tls.MultiStepLR(opt, milestones=[50, 125, 160], gamma=0.1),
        "exponential": lambda: tls.ExponentialLR(opt, gamma=0.95),
        "cosine": lambda: tls.CosineAnnealingLR(opt, T_max=50, eta_min=0),
        "plateau": lambda: tls.ReduceLROnPlateau(
            opt, mode="min", factor=0.1, patience=10, cooldown=10, min_lr=1e-4
        ),
        "lambda": lambda: tls.LambdaLR(
            opt, lr_lambda=[lambda epoch: 0.1 ** (epoch // 20), lambda epoch: 0.95**epoch]
        ),
    }[name]()
    lrs = []
    for epoch in range(MAX_EPOCH):
        lrs.append([g["lr"] for g in opt.param_groups])
        for _ in range(ITERATIONS):
            loss = sum((p**2).sum() for p in params)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if name == "plateau":
            sched.step(plateau_loss(epoch))
        else:
            sched.step()
    return lrs


# -- sweeps and races


def report_rows(sweep: Path) -> dict[str, dict[str, str]]:
    with (sweep / "report.csv").open() as f:
        return {row["config"]: row for row in csv.DictReader(f)}


def job_dirs(sweep: Path) -> dict[str, Path]:
    """job dir by its overrides (as Hydra recorded them)."""
    return {
        " ".join(yaml.safe_load((d / ".hydra" / "overrides.yaml").read_text())): d
        for d in sorted(p for p in sweep.iterdir() if (p / ".hydra").is_dir())
    }


def race_json(sweep: Path) -> dict:
    return json.loads((sweep / "race.json").read_text())


def write_job(job: Path, overrides: list[str], seed: int, status: str, rows: list[dict]) -> None:
    """A sweep job's run dir as the runner leaves it, without training: what the sweep
    report and compare read (its overrides, seed, status and metrics.jsonl, if any rows)."""
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / "config.yaml").write_text(yaml.safe_dump({"seed": seed}))
    (job / "status.json").write_text(json.dumps({"status": status, "wall_time_s": 1.0}))
    if rows:
        (job / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def fake_run(sweep: Path, overrides: list[str], status: str, best_acc: float) -> None:
    """A job's run dir as the runner leaves it (`hydra.sweep.subdir=` names the dir)."""
    task = [o for o in overrides if not o.startswith("hydra.")]
    subdir = next(o for o in overrides if o.startswith("hydra.sweep.subdir=")).split("=")[1]
    seed = int(next(o for o in task if o.startswith("seed=")).split("=")[1])
    rows = [{"epoch": 0, "lr/group0": 0.1, "val/acc": best_acc, "val/loss": 0.5}]
    write_job(sweep / subdir, task, seed, status, rows if status == "completed" else [])


def sweep_job(sweep: Path, *overrides: str) -> Path:
    """A sweep job's run dir, named by its overrides sorted and joined by commas, as Hydra's
    hydra.job.override_dirname names it (conf/config.yaml hydra.sweep.subdir)."""
    return sweep / ",".join(sorted(overrides))


# -- budget sweeps (tests/test_budget_preset.py, tests/test_lecture.py)


def budget_row(text: str, *parts: str) -> list[str]:
    """The cells of the one report table row naming every one of `parts`."""
    (line,) = [x for x in text.splitlines() if x.startswith("| `") and all(p in x for p in parts)]
    return [c.strip() for c in line.strip("|").split("|")]


def check_tiny_budget_sweep(sweep: Path) -> None:
    """+experiment=mnist1d_budgets at budgets 10 and 12 on 500 signals, one seed (the lecture's
    quick part 6): the trunk keeps epoch 9 (the 10-epoch WSD decays from epoch 8, which still
    has the base lr), its branch starts there, and one report compares all."""
    (trunk,) = sweep.glob("*trainer.keep_epochs=[[]9[]]*")
    assert (trunk / "epoch_9.pt").is_file()
    (branch,) = sweep.glob("*branch=*")
    branched = yaml.safe_load((branch / "config.yaml").read_text())
    assert (branched["branch"], branched["branch_epoch"], branched["epochs"]) == (str(trunk), 9, 10)
    rows = read_metrics(branch)
    assert [r.get("from_trunk", False) for r in rows] == [True] * 9 + [False]
    text = (sweep / "report.md").read_text()
    assert budget_row(text, "branch=<trunk>", "| 10 | 1/1")[4] == "1"
    assert budget_row(text, "branch=<trunk>", "| 12 | 1/1")[4] == "12"  # the trunk, its strategy's
    assert budget_row(text, "optimizer=schedulefree_adamw", "| 10 | 1/1")[4].startswith(
        "0 (read off"
    )
    assert "[averaged model]` | 10 | 1/1" in text
    assert (sweep / "budgets.png").is_file()


# -- a tiny GPT on the test-only Markov token windows (tests/test_gpt.py, test_lm_presets.py)
MARKOV = "tests.user_datasets.MarkovTokens"
GPT_ON_TOKENS = (
    "model=gpt",
    "data=dataset",
    f"data.train={{_target_:{MARKOV},size:256}}",
    f"data.val={{_target_:{MARKOV},size:32,seed:1}}",
    "model.n_layer=1",
    "model.n_embd=32",
    "model.n_head=2",
    "optimizer=adamw",
    "optimizer.lr=0.01",
    "scheduler=none",
    "trainer.num_threads=1",
    "logger=none",
)


# -- stopping a fused group mid-run (tests/test_fused.py, test_fused_branches.py)


class StopAfter:
    """A StopFlag whose signal arrives after `n` looks (the loop looks once a batch)."""

    def __init__(self, n: int) -> None:
        self.n = n

    @property
    def signum(self) -> int | None:
        self.n -= 1
        return signal.SIGINT if self.n < 0 else None

    def requested(self, step: int, steps: int) -> int | None:
        return self.signum  # as StopFlag's: the engine asks once a batch


# -- a WSD trunk and its budgets (tests/test_branches.py, test_fused_branches.py,
# test_fused_isolation.py; the `trunk` fixture in conftest.py trains WSD_TRUNK)
WSD = ("logger=none", "scheduler=wsd", "trainer.progress=line")  # warmup 2 epochs
# The trunk: 8 epochs whose decay starts at epoch 6 (2 + 6 - round(6 x 0.25)), its
# checkpoints after epochs 3 and 5 kept.
WSD_TRUNK = (*WSD, "epochs=8", "scheduler.decay_fraction=0.25", "trainer.keep_epochs=[3,5]")
# A budget of 6 epochs whose decay starts at epoch 4 (2 + 4 - round(4 x 0.5)): its first
# 4 epochs (warmup, then the base lr) are the trunk's, its decay is its own.
WSD_BUDGET = (*WSD, "epochs=6", "scheduler.decay_fraction=0.5")
