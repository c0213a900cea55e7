"""Checkpoints: everything needed to continue a run as if it had never stopped.

Written atomically (temp file + os.replace) at the start and after every epoch, so
`last.pt` is always a whole checkpoint, whatever kills the process. Only tensors
and plain containers are stored, so loading uses `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from schedulers import ConfigError

LAST, BEST = "last.pt", "best.pt"


@dataclass
class Progress:
    """Loop state that is not inside the model, optimizer or scheduler."""

    epoch: int = 0  # the next epoch to run
    step: int = 0  # optimizer steps so far
    best_val_acc: float = 0.0
    best_metric: float | None = None  # of trainer.monitor, for best.pt
    elapsed_s: float = 0.0  # training wall time before this process


def _rng_state(shuffle: torch.Generator) -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "shuffle": shuffle.get_state(),
    }


def _set_rng_state(state: dict[str, Any], shuffle: torch.Generator) -> None:
    random.setstate(_as_tuples(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    shuffle.set_state(state["shuffle"])


def _as_tuples(value: Any) -> Any:
    """random.setstate wants the nested tuples random.getstate gave."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def save(
    run_dir: Path,
    *,
    run: Any,
    progress: Progress,
    shuffle: torch.Generator,
    wandb_id: str | None,
    is_best: bool,
) -> Path:
    state = {
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict() if run.scaler is not None else None,
        "progress": asdict(progress),
        "rng": _rng_state(shuffle),
        "wandb_id": wandb_id,
    }
    last = run_dir / LAST
    _atomic(lambda tmp: torch.save(state, tmp), last)
    if is_best:
        _atomic(lambda tmp: shutil.copyfile(last, tmp), run_dir / BEST)
    return last


def _atomic(write: Any, target: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load(path: Path) -> dict[str, Any]:
    """A checkpoint, or a ConfigError saying why it cannot be used (never a raw pickle error)."""
    if not path.exists():
        raise ConfigError("resume", str(path.parent), f"no {path.name} there: nothing to resume")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, corrupt, or not a checkpoint at all
        raise ConfigError(
            "resume",
            str(path.parent),
            f"{path.name} is unreadable ({type(err).__name__}: {str(err).splitlines()[0][:120]}); "
            "the run cannot continue from it — start it again, or restore the file",
        ) from None
    if not isinstance(state, dict) or "progress" not in state:
        raise ConfigError("resume", str(path.parent), f"{path.name} is not a schedlab checkpoint")
    return state


def restore(state: dict[str, Any], run: Any, shuffle: torch.Generator) -> Progress:
    """Put model, optimizer, schedule, scaler and every RNG back; returns the loop progress."""
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if run.scaler is not None and state["scaler"] is not None:
        run.scaler.load_state_dict(state["scaler"])
    _set_rng_state(state["rng"], shuffle)
    return Progress(**state["progress"])
