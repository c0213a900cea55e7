"""numpy's global RNG state, cheaply: read at every epoch's end (checkpoint snapshots) and
around every streamed batch (stream.py), where get_state()'s copy would cost more than the
rest of the work."""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np


class NumpyGlobalState:
    """numpy's global RNG state, as np.random.get_state() gives it, taken cheaply when it has
    not changed. get_state() costs 50-100 us (numpy copies its 624 words one at a time), and
    between two epoch ends numpy's global generator is nearly always untouched (only user
    code draws from it). The global bit generator (np.random.get_bit_generator()) exposes
    the address of its state through its documented ctypes interface; the words there
    (MT19937's key[624] and pos: numpy's C struct, not a public layout) are read in place
    to tell whether anything changed. The layout is checked against get_state() once; when
    it disagrees (a numpy that lays its state out differently), or the global generator is
    replaced, get_state() is called every time: slower, never wrong (tests/test_twins.py
    fails then, so the slow path is not taken silently). A cached legacy Gaussian
    (has_gauss) can be consumed without the words changing: then never reused.

    Why not get_state() alone (public API only): it is what a checkpoint stores, so
    checkpoints are the same either way, but a streamed batch reads the state three times
    (stream.py), ~0.2 ms a batch at ~80 us a read: by estimate a seventh of the streamed
    digits benchmark (~150 batches in 0.25 s)."""

    def __init__(self) -> None:
        self._bitgen: Any = None
        self._words: np.ndarray | None = None  # a live view of the generator's words
        self._seen: np.ndarray | None = None  # the words when `_state` was taken
        self._state: tuple[Any, ...] | None = None
        try:
            bitgen = np.random.get_bit_generator()
            words = np.ctypeslib.as_array(
                (ctypes.c_uint32 * 625).from_address(bitgen.ctypes.state_address)
            )
            _, key, pos, *_ = np.random.get_state()
            if np.array_equal(words[:624], key) and int(words[624]) == pos:
                self._bitgen, self._words = bitgen, words
        except Exception:  # another numpy layout: get_state() every time
            pass

    @property
    def reads_in_place(self) -> bool:
        """Whether the cheap read is in use (numpy's layout is the one checked)."""
        return self._words is not None

    def __call__(self) -> tuple[Any, ...]:
        if self._words is None or np.random.get_bit_generator() is not self._bitgen:
            return np.random.get_state()
        if self._state is not None and np.array_equal(self._words, self._seen):
            return self._state  # never written to: _packed and set_state copy it
        state = np.random.get_state()
        self._state = None if state[3] else state  # state[3]: has_gauss
        self._seen = self._words.copy()
        return state


numpy_state = NumpyGlobalState()


def same_numpy_state(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    """Two np.random.get_state() tuples equal (the key array compared by value)."""
    return a is b or (a[0] == b[0] and a[2:] == b[2:] and np.array_equal(a[1], b[1]))
