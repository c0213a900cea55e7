"""scikit-learn's bundled handwritten digits and their stratified train/val split, without
importing scikit-learn: importing it (with scipy) took 1.3 s of every run's start-up on
digits, the default data, for one CSV file and one split.

`load` reads the file `sklearn.datasets.load_digits` reads, from the installed package's
data dir; `stratified_split` is `train_test_split(..., stratify=y, random_state=seed)`'s
arithmetic (StratifiedShuffleSplit with one split), draw for draw, so the split is the one
the runner always used. tests/test_data.py checks both against scikit-learn itself.
"""

from __future__ import annotations

import importlib.util
from math import ceil
from pathlib import Path

import numpy as np


def data_file() -> Path:
    """sklearn/datasets/data/digits.csv.gz of the installed scikit-learn (found, not imported)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "scikit-learn is not installed: data=digits needs its digits file"
        )
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"


def load() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 images ([N, 8, 8], values 0-16, float64) and their labels, as load_digits."""
    data = np.loadtxt(data_file(), delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)


def stratified_split(
    y: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices: each class split in proportion, then both shuffled."""
    n = len(y)
    n_test = ceil(test_fraction * n)
    n_train = n - n_test
    _, y_indices, class_counts = np.unique(y, return_inverse=True, return_counts=True)
    class_indices = np.split(np.argsort(y_indices, kind="stable"), np.cumsum(class_counts)[:-1])
    rng = np.random.RandomState(seed)
    n_i = _approximate_mode(class_counts, n_train, rng)
    t_i = _approximate_mode(class_counts - n_i, n_test, rng)
    train: list[int] = []
    test: list[int] = []
    for i in range(len(class_counts)):
        shuffled = class_indices[i].take(rng.permutation(class_counts[i]), mode="clip")
        train.extend(shuffled[: n_i[i]])
        test.extend(shuffled[n_i[i] : n_i[i] + t_i[i]])
    return rng.permutation(train), rng.permutation(test)


def _approximate_mode(
    class_counts: np.ndarray, n_draws: int, rng: np.random.RandomState
) -> np.ndarray:
    """How many of n_draws each class gets: its share floored, the rest to the largest
    remainders, ties broken at random."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need_to_add = int(n_draws - floored.sum())
    if need_to_add > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (inds,) = np.where(remainder == value)
            add_now = min(len(inds), need_to_add)
            floored[rng.choice(inds, size=add_now, replace=False)] += 1
            need_to_add -= add_now
            if need_to_add == 0:
                break
    return floored.astype(int)
