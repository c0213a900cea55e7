"""A run SIGKILLed alone (kill -9 of its pid, not its process group) leaves nothing behind:
its DataLoader workers die with it and never held its run dir's lock, so `resume` is accepted
at once and continues exactly. One worker once outlived its run for 13+ minutes: started
just before the kill, torch's 5 s parent check took init for its parent, and the lock fd it
had inherited by fork kept `resume` refused (RunDirBusy)."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

import pytest

from runner.dist.workers import worker_init
from runner.io import files
from runner.io.files import RunDirBusy, hold_run_dir, run_dir_holder
from tests.helpers import (
    comparable,
    read_metrics,
    reference,
    resume_in_process,
    start,
    wait_for_rows,
)

ROOT = Path(__file__).resolve().parents[1]
LINUX = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG")
BLOBS = "tests.user_datasets.SlowBlobs"
# 3 ms a sample, 2 workers: ~0.1 s an epoch, slow enough to be killed mid-run
STREAMED = ["data=dataset", f"data.train={{_target_:{BLOBS},size:60,delay_s:0.003}}",
            f"data.val={{_target_:{BLOBS},size:20,offset:1}}", "data.in_memory=false",
            "data.num_workers=2", "data.persistent_workers=true", "logger=none",
            "trainer.progress=line", "model.hidden=[16]", "data.batch_size=16", "epochs=3",
            "trainer.checkpoint_interval_s=0"]  # fmt: skip


def alive(pids: list[int]) -> list[int]:
    """Those of `pids` still running (a zombie waiting to be reaped by init is dead)."""
    running = []
    for pid in pids:
        with suppress(OSError):
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if state != "Z":
                running.append(pid)
    return running


def gone_within(pids: list[int], seconds: float) -> list[int]:
    """Waits up to `seconds` for `pids` to end; those still running then."""
    deadline = time.monotonic() + seconds
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    return alive(pids)


def children(pid: int) -> list[int]:
    tasks = Path(f"/proc/{pid}/task")
    return [int(c) for t in tasks.iterdir() for c in (t / "children").read_text().split()]


def test_a_forked_child_keeps_no_copy_of_the_run_dirs_lock(tmp_path):
    ready = multiprocessing.get_context("fork").Event()

    def child() -> None:
        ready.set()
        time.sleep(60)

    proc = multiprocessing.get_context("fork").Process(target=child, daemon=True)
    try:
        with hold_run_dir(tmp_path):
            proc.start()
            assert ready.wait(30)
            # the child closed its copy; the run's own lock still holds
            assert isinstance(run_dir_holder(tmp_path), RunDirBusy)
        assert proc.is_alive()
        assert run_dir_holder(tmp_path) is None  # the run ended: free, whatever it forked
    finally:
        proc.kill()
        proc.join()


@LINUX
def test_the_worker_init_does_nothing_in_the_runs_own_process():
    libc = ctypes.CDLL(None, use_errno=True)
    signum = ctypes.c_int(-1)
    worker_init(None)(0)  # as if a loader called it in this process
    try:
        assert libc.prctl(2, ctypes.byref(signum), 0, 0, 0) == 0  # PR_GET_PDEATHSIG
        assert signum.value == 0  # else this process would die with its launcher
    finally:
        libc.prctl(1, 0, 0, 0, 0)


# A run whose DataLoader worker is forked, and the run SIGKILLed before the worker starts up
# (an at-fork hook holds it until its parent is gone): torch's own check would then take
# init for its parent, and the worker would wait for work for good.
LATE_START = """
import os, signal, sys, time
import torch
from runner.data.stream import Loaders, StreamData
pidfile, run = sys.argv[1], os.getpid()


def start_late():
    with open(pidfile, "w") as f:
        f.write(str(os.getpid()))
    while os.getppid() == run:
        time.sleep(0.005)


os.register_at_fork(after_in_child=start_late)
opts = {"num_workers": 1, "pin_memory": False, "persistent_workers": False,
        "prefetch_factor": None}
data = StreamData(list(range(8)), list(range(4)), 3, (1,), opts)  # never fetched
it = iter(Loaders(data, 4, 0, torch.device("cpu")).val_loader)
while not os.path.exists(pidfile):
    time.sleep(0.005)
os.kill(run, signal.SIGKILL)
"""


@LINUX
@pytest.mark.slow
def test_a_worker_whose_run_died_before_it_started_up_dies_too(tmp_path):
    pidfile, err = tmp_path / "worker.pid", tmp_path / "stderr"
    with err.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-c", LATE_START, str(pidfile)],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
    try:
        assert proc.wait(60) == -signal.SIGKILL, err.read_text()
        worker = int(pidfile.read_text())
        assert gone_within([worker], 3) == [], "the worker outlived its run"
    finally:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


@LINUX
@pytest.mark.slow
def test_sigkill_of_a_streamed_run_alone_frees_its_dir_at_once_and_the_resume_is_exact(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # tests.user_datasets, as a user's package
    run_dir = tmp_path / "run"
    proc = start([*STREAMED, f"hydra.run.dir={run_dir}"], tmp_path, own_group=True)
    try:
        wait_for_rows(run_dir, 1, proc)
        workers = children(proc.pid)  # persistent: the train and val loaders' two each
        assert len(workers) >= 2
        busy = run_dir_holder(run_dir)  # the workers closed their copies, not the run's
        assert busy is not None and busy.pid == proc.pid
        os.kill(proc.pid, signal.SIGKILL)  # the run alone: its workers are orphaned
        proc.wait()
        assert run_dir_holder(run_dir) is None  # at once: no worker shares the lock
        assert gone_within(workers, 2) == [], "workers outlived their run"
        assert len(read_metrics(run_dir)) < 3

        resumed = resume_in_process(run_dir)
        assert resumed.status == "completed"
        rows = read_metrics(run_dir)
        assert [r["epoch"] for r in rows] == list(range(3))
        assert comparable(rows) == reference(tmp_path, STREAMED)
    finally:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.stdout.close()
        proc.stderr.close()


def _child_sees(*fds: int) -> bool:
    """Whether a forked child still has these fds open when it starts."""
    pid = os.fork()
    if pid == 0:
        try:
            for fd in fds:
                os.fstat(fd)
        except OSError:
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


@pytest.mark.parametrize("how", ["released", "closed behind its back"])
def test_a_forked_child_closes_no_file_that_reused_a_lock_s_number(tmp_path, how):
    """A lock fd released (files.release_kept) or closed elsewhere leaves its number free;
    a pipe that reuses it must stay open in every child forked later (it once closed a
    DataLoader worker's pipe in the child: the test process's loader hung)."""
    (tmp_path / "run").mkdir()
    lock = files.keep_run_dir(tmp_path / "run")
    if how == "released":
        files.release_kept()
    else:
        os.close(lock.fd)
    r, w = os.pipe()
    try:
        if how == "closed behind its back":
            assert lock.fd in (r, w)  # the number is reused: the case that matters
        assert _child_sees(r, w)
    finally:
        os.close(r)
        os.close(w)
        files._KEPT.clear()
