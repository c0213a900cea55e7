"""Which launcher worker this process is, and the torch thread count the user's own
process had: a hydra/launcher=joblib worker (loky) is given cpu_count // n_jobs threads
and another multiprocessing context than the one it needs, so the threads setting and
the data loaders ask here."""

from __future__ import annotations
import multiprocessing

import os

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
