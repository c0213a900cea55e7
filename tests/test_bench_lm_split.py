"""bench_lm's split (issue #35): the runner's time over the hand loop's was glibc's malloc
handing freed activations back to the kernel and faulting them in again (runner/train/
heap.py); the benchmark times the steady steps apart from the rest of a run."""

from __future__ import annotations

import ctypes
import os
import resource
import sys
from pathlib import Path

import pytest

from runner.train import heap


def on_glibc() -> bool:
    try:
        return sys.platform.startswith("linux") and bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError):
        return False


glibc = pytest.mark.skipif(not on_glibc(), reason="glibc's malloc only")


def faults_taking_memory_twice(blocks: int = 96, size: int = 1 << 20) -> int:
    """Page faults when `blocks` blocks of `size` bytes, written, freed, are asked for and
    written again (what a step's or a validation batch's activations do)."""
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)

    def take_and_free() -> None:
        ptrs = [libc.malloc(size) for _ in range(blocks)]
        for p in ptrs:
            ctypes.memset(p, 1, size)
        for p in reversed(ptrs):
            libc.free(p)

    take_and_free()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    take_and_free()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@glibc
def test_freed_memory_is_taken_again_without_page_faults():
    """96 MiB freed and taken again: without the thresholds glibc maps 1 MiB blocks
    afresh or trims the freed top (its own trim threshold is at most 64 MiB), 24k faults."""
    assert heap.keep_freed_memory()
    assert faults_taking_memory_twice() < 100


def test_the_engine_keeps_freed_memory_before_any_run(monkeypatch):
    from runner.train import engine

    called = []
    monkeypatch.setattr(heap, "keep_freed_memory", lambda: called.append(True))
    engine.Engine([], epochs=1)
    assert called == [True]


@pytest.mark.parametrize("name", heap.USER_SETTINGS)
def test_a_users_own_malloc_setting_wins(name, monkeypatch):
    def no_mallopt(*args):
        raise AssertionError("mallopt called over the user's setting")

    monkeypatch.setattr(ctypes, "CDLL", no_mallopt)
    assert heap.set_thresholds({name: "1000000"}) is False


def test_the_benchmark_splits_a_run_into_its_steady_step_and_the_rest():
    """Two epochs of three steps: 10 ms steps inside an epoch, a validation of 200 ms
    across the epochs' end; the rest is the run less its six steps at the median."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_lm

    walls = [0.05, 0.06, 0.07, 0.27, 0.28, 0.29]  # (wall, CPU): CPU half the wall
    split = bench_lm.split_at_steps([(w, w / 2) for w in walls], 3, 0.5, 0.25)
    assert split["step ms"] == pytest.approx(10) and split["step cpu ms"] == pytest.approx(5)
    assert split["rest s"] == pytest.approx(0.5 - 0.06)
    assert split["rest cpu s"] == pytest.approx(0.25 - 0.03)
    assert bench_lm.split_at_steps([(0.1, 0.1), (0.2, 0.2)], 1, 0.3, 0.3) == {}
