"""Which launcher worker this process is, and the torch thread count the user's own
process had: a hydra/launcher=joblib worker (loky) is given cpu_count // n_jobs threads
and another multiprocessing context than the one it needs, so the threads setting and
the data loaders ask here. And DataLoader workers that die with the run (`worker_init`)."""

from __future__ import annotations

import ctypes
import functools
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable

# set by record_user_threads, read by runner/train/builders.py (set_threads)
USER_THREADS = "SCHEDLAB_USER_THREADS"


def in_loky_worker() -> bool:
    """A job run by hydra/launcher=joblib: joblib's loky backend names its processes so."""
    return multiprocessing.current_process().name.startswith("LokyProcess")


def record_user_threads() -> None:
    """Note, in the environment the launcher's workers inherit, where the process the user
    started takes its torch thread count from: MKL_NUM_THREADS, else OMP_NUM_THREADS (as
    torch reads them), else "" (torch's default, the physical cores). joblib's loky workers
    get these variables set to cpu_count // n_jobs when the user set none, so their
    reductions would sum in another order; trainer.num_threads=auto undoes that
    (runner/train/builders.py). A worker keeps its parent's note."""
    if in_loky_worker():
        return
    os.environ[USER_THREADS] = (
        os.environ.get("MKL_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS") or ""
    )


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def worker_init(context: str | None) -> Callable[[int], None]:
    """A DataLoader's worker_init_fn for workers started with `context` (None: the default
    start method): each worker dies with the process that iterates the loader. torch's
    worker checks its parent only every 5 s, and against the parent pid it reads after its
    own start-up: a run SIGKILLed while its workers were starting (each epoch's start, with
    non-persistent workers) left them taking init for their parent, alive for good. Only
    fork and spawn make the workers this process's children; a forkserver's are the
    server's, which ends with this process."""
    method = context or multiprocessing.get_start_method()
    parent = os.getpid() if method in ("fork", "spawn") else None
    return functools.partial(die_with_parent, parent=parent)


def die_with_parent(worker_id: int, parent: int | None) -> None:
    """In a worker: SIGKILL from the kernel when the thread that started it ends (Linux's
    PR_SET_PDEATHSIG; the runner iterates its loaders in the thread that trains, which
    outlives them), and SIGKILL now if `parent` died before that was set. A no-op outside
    a DataLoader worker (in the run's own process the signal would end the run with its
    launcher) and off Linux, where torch's 5 s check remains."""
    from torch.utils.data import get_worker_info  # torch: not on the --help path (test_layers)

    if not sys.platform.startswith("linux") or get_worker_info() is None:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return  # refused (a seccomp filter): torch's check remains
    if parent is not None and os.getppid() != parent:  # it died before the prctl
        os.kill(os.getpid(), signal.SIGKILL)
