"""Labels as the loss needs them: one integer class index in [0, num_classes) per sample.

Checked for every label held in memory (a min and a max over a tensor: cheap) and for each
sample a stream fetches, so a float, one-hot or str label, or a class out of range, is an
error naming the split and the index, instead of a crash mid-run, or worse, a silently
wrong number (float labels cast to integers; a one-class set reaching accuracy 1.0).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from schedulers import ConfigError

log = logging.getLogger("schedlab")
_RULE = "labels must be one integer class index per sample, in [0, {n})"


def sample_label_problem(y: Any, num_classes: int) -> str | None:
    """What is wrong with one sample's label, or None: the message names the real cause (a
    str label says "label", not "tensor")."""
    rule = _RULE.format(n=num_classes)
    if isinstance(y, np.ndarray | np.generic):
        y = torch.as_tensor(y)
    if torch.is_tensor(y):
        if y.dim() > 0:
            return f"label of shape {tuple(y.shape)} (one-hot or multi-dim): {rule}"
        if y.is_floating_point() or y.is_complex():
            return f"label {y.item()!r} is a {y.dtype} (not an integer): {rule}"
        y = int(y.item())
    elif isinstance(y, str):
        return f"label {y!r} is a str: {rule} (map class names to indices, as ImageFolder does)"
    elif isinstance(y, float):
        return f"label {y!r} is a float (not an integer): {rule}"
    elif not isinstance(y, int):
        return f"label {y!r} is a {type(y).__name__}: {rule}"
    if not 0 <= y < num_classes:
        return f"label {y} is outside [0, {num_classes}) (data.num_classes={num_classes})"
    return None


def check_labels(
    where: str, y: Any, num_classes: int, offset: int = 0, tokens: bool = False
) -> None:
    """Every label of a split (or of one batch of it, starting at sample `offset`), as
    collated; raises ConfigError(`<where>[<index>]`) for the first bad one. `tokens`: a
    language model's targets [N, T], one next-token id per position of integer inputs."""
    if not torch.is_tensor(y):  # default_collate leaves str labels a list
        first = y[0] if isinstance(y, list | tuple) and len(y) else y
        problem = sample_label_problem(first, num_classes) or (
            f"labels collate into a {type(y).__name__}, not an integer tensor: "
            + _RULE.format(n=num_classes)
        )
        raise ConfigError(f"{where}[{offset}]", None, problem)
    if y.dim() != (2 if tokens else 1):
        problem = sample_label_problem(y[0] if len(y) else y, num_classes)
        raise ConfigError(
            f"{where}[{offset}]", None, problem or f"labels of shape {tuple(y.shape)}"
        )
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ConfigError(
            f"{where}[{offset}]",
            None,
            f"labels are {y.dtype} (not integers): " + _RULE.format(n=num_classes),
        )
    if len(y) == 0:
        return
    bad = (y < 0) | (y >= num_classes)
    if bool(bad.any()):
        first = bad.nonzero()[0]  # (sample,) or, for token targets, (sample, position)
        i, value = int(first[0]), int(y[tuple(first)])
        raise ConfigError(f"{where}[{offset + i}]", None, sample_label_problem(value, num_classes))


def warn_one_class(y: torch.Tensor) -> None:
    """One log line when every training label is the same class: accuracy 1.0 means
    nothing then."""
    if len(y) and bool((y == y[0]).all()):
        log.warning(
            f"data.train: all {len(y)} samples have label {int(y[0])}: a one-class training set "
            "(accuracy 1.0 would say nothing)"
        )
