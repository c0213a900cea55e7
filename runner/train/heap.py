"""Freed memory kept for the next step instead of handed back to the kernel (glibc's malloc).

A training loop on the CPU frees the same activations after every step and every
validation batch and asks for them again at once. glibc's malloc, left to itself, maps
every block above a threshold afresh (128 KiB, raised as blocks are freed, to at most
32 MiB) and hands the free top of its heap back to the kernel once it is larger than
twice that; taking the memory again costs a page fault per 4 KiB page, each page zeroed
by the kernel. bench_lm.py found the runner's language-model validation (batches of 4096
tokens, four times the small GPT's training batch) paying ~24k page faults an epoch
that way, 90-97 ms of CPU time where 61 ms do without them (one thread, 2-core VM): that
was the runner's CPU time over the hand-written loop's (issue #35). model=gpt's training
steps (4-7k faults each, in a hand-written loop alike) take 4 % less CPU time without
them. So blocks up to 32 MiB come from the heap and up to 1 GiB of its free top is kept:
the process holds its peak (every step reaches it again), as the allocators that
PyTorch's own CPU launcher preloads for training (jemalloc or tcmalloc:
torch.backends.xeon.run_cpu) keep theirs.

Results are bit-for-bit the same (only where memory comes from changes). A user's own
MALLOC_* settings win (then nothing is set); other C libraries (macOS, musl) are left
alone, and under an LD_PRELOADed jemalloc/tcmalloc this only tunes the unused glibc one.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from collections.abc import Mapping

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h> mallopt parameters
MMAP_THRESHOLD = 32 << 20  # glibc's largest: blocks below it come from the heap
TRIM_THRESHOLD = 1 << 30  # the free top of the heap kept, not handed back
USER_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")


@functools.cache
def keep_freed_memory() -> bool:
    """Set glibc's thresholds once per process (the engine asks before every run: a single
    run's and a fused group's). Returns whether they are set."""
    return set_thresholds(os.environ)


def set_thresholds(environ: Mapping[str, str]) -> bool:
    """mallopt's trim and mmap thresholds, on glibc and unless `environ` sets the user's own."""
    if not sys.platform.startswith("linux") or any(k in environ for k in USER_SETTINGS):
        return False
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):  # raises, or says nothing, off glibc
            return False
        mallopt = ctypes.CDLL(None).mallopt
    except (ValueError, OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # the mmap threshold first: setting either ends glibc's own adjusting of both
    mapped = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    return bool(mapped and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
