"""Checkpoints: everything needed to continue a run as if it had never stopped.

Written atomically (runner/io/files.py: temp file + fsync + os.replace), so `last.pt` is
always a whole checkpoint, whatever kills the process. Only tensors
and plain containers are stored, so loading uses `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import functools
import os
import random
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from runner.io import files
from runner.io.rngs import numpy_state
from schedulers import ConfigError
from schedulers.checks import mode_for

LAST, BEST = "last.pt", "best.pt"
KEPT = "epoch_{}.pt"  # trainer.keep_epochs: the checkpoint after epoch k, kept to branch from


def keeps(keep_epochs: Any, epoch: int) -> bool:
    """Whether trainer.keep_epochs (null, N: every N epochs, or a list) keeps the checkpoint
    taken after `epoch` epochs."""
    if keep_epochs is None or epoch < 1:
        return False
    if isinstance(keep_epochs, int):
        return epoch % keep_epochs == 0
    return epoch in keep_epochs


def kept_epochs(run_dir: Path) -> list[int]:
    """The epochs a run dir keeps a checkpoint of (epoch_<k>.pt), in order."""
    found = (p.name[len("epoch_") : -len(".pt")] for p in Path(run_dir).glob(KEPT.format("*")))
    return sorted(int(k) for k in found if k.isdigit())


@dataclass
class Progress:
    """Loop state that is not inside the model, optimizer or scheduler."""

    epoch: int = 0  # the next epoch to run
    step: int = 0  # optimizer steps so far
    best_val_acc: float = 0.0
    best_metric: float | None = None  # of trainer.monitor, for best.pt
    elapsed_s: float = 0.0  # training wall time before this process

    def end_epoch(
        self, epoch: int, value: float | None, mode: str, metric: str | None = None
    ) -> bool:
        """Epoch `epoch` is done and the monitored metric (named `metric`) was `value`: True
        when that is the best so far (trainer.monitor_mode max, min, or auto: by `metric`,
        schedulers.checks.mode_for), i.e. when best.pt should take this epoch. Without
        `metric`, auto means max (the default monitor is val/acc). `value` None: the epoch
        has no such metric (val_avg/* before SWA's first average), so it is not the best."""
        self.epoch = epoch + 1
        if value is None:
            return False
        resolved = mode_for(metric, mode) if metric is not None else mode
        sign = -1 if resolved == "min" else 1
        is_best = self.best_metric is None or sign * value > sign * self.best_metric
        if is_best:
            self.best_metric = value
        return is_best


@dataclass
class Session:
    """The process that trains a run: its token goes into every checkpoint it writes, and
    into status.json when it ends cleanly (after its W&B run is closed). W&B keeps a live
    run's rows in memory (its offline file gets them when the run is closed), so a
    SIGKILL loses every row the killed process logged; a resume whose last.pt was
    written by a process that never ended cleanly (the tokens differ) sends the kept rows
    again. `wrote`: whether this process wrote last.pt (else it is an earlier one's)."""

    token: str = field(default_factory=lambda: secrets.token_hex(8))
    wrote: bool = False

    def closed(self, state: dict[str, Any] | None) -> str | None:
        """The token status.json records at a clean end: the one of the last.pt on disk."""
        return self.token if self.wrote else (state or {}).get("session")


def rows_lost(state: dict[str, Any], status: dict[str, Any] | None) -> bool:
    """last.pt was written by a process that did not end cleanly (killed): the backends may
    have lost the rows it logged (W&B holds them in memory until the run is closed).
    Checkpoints from before sessions were recorded say nothing: False."""
    token = state.get("session")
    return token is not None and (status or {}).get("session") != token


def _rng_state(shuffle: torch.Generator) -> dict[str, Any]:
    """Every RNG's state as the generators hand it out: fresh copies that later draws cannot
    change, taken at each epoch's end (~100 us after an epoch's training has left the caches
    cold). _packed() turns them into tensors for torch.save when the checkpoint is written
    (on the writer thread, and only then)."""
    return {
        "python": random.getstate(),
        "numpy": numpy_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if _cuda_available() else [],
        "shuffle": shuffle.get_state(),
    }


@functools.cache
def _cuda_available() -> bool:
    return torch.cuda.is_available()  # ~20 us a call; it cannot change within a process


def _packed(state: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint as it is saved: Python's and numpy's RNG states (600-odd ints each) as
    one tensor each instead of hundreds of pickled objects (a third of a small model's
    save), which torch.load(weights_only=True) also reads back."""
    rng = state["rng"]
    version, keys, gauss = rng["python"]
    if isinstance(keys, torch.Tensor):  # packed already
        return state
    np_state = rng["numpy"]
    packed_rng = {
        **rng,
        "python": [version, torch.from_numpy(np.fromiter(keys, np.int64, len(keys))), gauss],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }
    return {**state, "rng": packed_rng}


def _set_rng_state(state: dict[str, Any], shuffle: torch.Generator) -> None:
    version, keys, gauss = state["python"]
    random.setstate((version, tuple(keys.tolist()), gauss))
    name, np_keys, *rest = state["numpy"]
    np.random.set_state((name, np_keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    shuffle.set_state(state["shuffle"])


def _clone(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.device.type == "cpu":
        return tensor.detach().clone()  # a little cheaper than .to(copy=True)
    return tensor.detach().to("cpu", copy=True)


def _snapshot(value: Any) -> Any:
    """A copy that later training steps cannot change (tensors cloned to the CPU)."""
    if isinstance(value, torch.Tensor):
        return _clone(value)
    if isinstance(value, dict):
        return {k: _snapshot(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_snapshot(v) for v in value)
    return value


def _optimizer_snapshot(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """optimizer.state_dict(), copied: per-parameter state is a flat dict of tensors and
    numbers (cloned without walking it as a tree; this runs every epoch)."""
    sd = optimizer.state_dict()
    state = {
        k: {n: _clone(v) if isinstance(v, torch.Tensor) else _snapshot(v) for n, v in s.items()}
        for k, s in sd["state"].items()
    }
    return {"state": state, "param_groups": _snapshot(sd["param_groups"])}


def snapshot(
    run: Any,
    progress: Progress,
    shuffle: torch.Generator,
    wandb_id: str | None,
    rows_sent: bool = True,
) -> dict[str, Any]:
    """Everything a resume needs, copied so that later training steps cannot change it.
    Taken at every epoch's end (a few hundred us for a small model), so the flat parts are
    copied flat. `rows_sent`: whether the rows so far went to the run's W&B/TensorBoard as
    they were logged (a fused member's go after its group trains)."""
    model = {
        k: _clone(v) if isinstance(v, torch.Tensor) else _snapshot(v)
        for k, v in run.model.state_dict().items()
    }
    return {
        "model": model,
        "optimizer": _optimizer_snapshot(run.optimizer),
        "scheduler": _snapshot(run.scheduler.state_dict()),
        "scaler": _snapshot(run.scaler.state_dict()) if run.scaler is not None else None,
        "progress": dict(vars(progress)),  # numbers only
        "rng": _rng_state(shuffle),  # fresh copies already
        "wandb_id": wandb_id,
        "rows_sent": rows_sent,
        "average": average_snapshot(run),
    }


def average_snapshot(run: Any) -> dict[str, Any] | None:
    """trainer.average's averaged model (its weights, BatchNorm statistics and count), copied;
    None without one. A resume that lost it would silently restart the average."""
    average = getattr(run, "average", None)
    return None if average is None else _snapshot(average.state_dict())


def load_average(state: dict[str, Any], run: Any) -> None:
    """The averaged model back; a checkpoint without one (averaging turned on at a resume)
    starts the average afresh."""
    average = getattr(run, "average", None)
    if average is not None and state.get("average") is not None:
        average.load_state_dict(state["average"])


class Checkpointer:
    """Snapshots every epoch; writes them (last.pt, and best.pt when the best changed) at
    most every `interval_s` seconds, and always on `persist()` (end of run, divergence,
    signal, crash). With epochs longer than the interval that is every epoch; with
    10 ms epochs it keeps checkpoint I/O from dominating the run, and a SIGKILL costs at
    most `interval_s` of recomputation (a resume is exact from any epoch)."""

    def __init__(
        self,
        run_dir: Path,
        interval_s: float,
        background: Any = None,
        config: str | None = None,
        session: Session | None = None,
        data: dict[str, Any] | None = None,
        keep_epochs: Any = None,
        save_best: str | bool = "full",
    ) -> None:
        """`config`: the run's config.yaml text, kept in every checkpoint, so that a resume
        can tell a config.yaml edited since from the config the run trained with.
        `session`: the process writing (its token in every checkpoint), when it has one.
        `data`: the fingerprint of the data it trains on (runner/data/fingerprint.py), so
        that a resume on other data is refused. `keep_epochs`: trainer.keep_epochs, whose
        epochs are also written as epoch_<k>.pt, each when it ends (`keep`). `save_best`
        (trainer.save_best): what best.pt holds, `full` (a checkpoint like last.pt),
        `weights` (best_only), or False: no best.pt."""
        self.run_dir, self.interval_s, self.background = run_dir, interval_s, background
        self.config, self.session, self.data = config, session, data
        self.keep_epochs, self.save_best = keep_epochs, save_best
        remove_orphans(run_dir)  # a run or resume starting here: no earlier write is in flight
        self.latest: dict[str, Any] | None = None
        self.best: dict[str, Any] | None = None
        self._best_written = True
        self._latest_written = True
        self._last_write = (
            time.monotonic()
        )  # a run shorter than the interval writes once, at the end

    def start(self, state: dict[str, Any]) -> None:
        """last.pt before the first epoch of a new run, written now (not on the background
        thread): a run killed in its first epoch resumes from it like from any other, with
        its W&B run id. Not best.pt. A few ms for a small model."""
        self._stamp(state)
        self.latest = state
        self._last_write = time.monotonic()
        files.replace_atomic(self.run_dir / LAST, lambda tmp: save(_packed(state), tmp))
        if self.session is not None:
            self.session.wrote = True

    def _stamp(self, state: dict[str, Any]) -> None:
        state["config"] = self.config
        if self.data is not None:
            state["data"] = self.data
        if self.session is not None:
            state["session"] = self.session.token

    def epoch_end(self, state: dict[str, Any], is_best: bool) -> None:
        self._stamp(state)
        self.latest, self._latest_written = state, False
        if keeps(self.keep_epochs, state["progress"]["epoch"]):
            self.keep(state)
        if is_best and self.save_best is not False:
            self.best, self._best_written = state, False
        if time.monotonic() - self._last_write >= self.interval_s:
            self.persist()

    def keep(self, state: dict[str, Any]) -> None:
        """epoch_<k>.pt, written now whatever checkpoint_interval_s says (on the writer thread
        when there is one): the same whole checkpoint as last.pt, which a branch starts from
        (runner/run/branch.py), kept as long as the run dir."""
        path = self.run_dir / KEPT.format(state["progress"]["epoch"])

        def write() -> None:
            files.replace_atomic(path, lambda tmp: save(_packed(state), tmp))

        if self.background is None:
            write()
        else:
            self.background.submit(write)

    def persist(self) -> None:
        write_last = not self._latest_written and self.latest is not None
        write_best = not self._best_written and self.best is not None
        if not (write_last or write_best):
            return
        if write_last and self.session is not None:
            self.session.wrote = True  # on disk once the writer thread is flushed
        latest, best, same = self.latest, self.best, self.best is self.latest
        self._latest_written = self._best_written = True
        self._last_write = time.monotonic()
        last_path, best_path = self.run_dir / LAST, self.run_dir / BEST

        def write() -> None:
            if write_last:
                files.replace_atomic(last_path, lambda tmp: save(_packed(latest), tmp))
            if write_best and self.save_best == "weights":
                files.replace_atomic(best_path, lambda tmp: save(best_only(best), tmp))
            elif write_best and same and write_last:  # the same epoch: a link, not a second save
                files.replace_atomic(best_path, lambda tmp: _link_or_copy(last_path, tmp))
            elif write_best:
                files.replace_atomic(best_path, lambda tmp: save(_packed(best), tmp))

        if self.background is None:
            write()
        else:
            self.background.submit(write)


# what best.pt keeps with trainer.save_best=weights: the model's weights, the epoch and
# metric they scored (progress) and the config they were trained with; not the optimizer,
# scheduler, scaler and RNG states only a resume needs (last.pt has them): for Adam, a
# third of the file
BEST_ONLY = ("model", "progress", "config", "data")


def best_only(state: dict[str, Any]) -> dict[str, Any]:
    """best.pt with trainer.save_best=weights: `torch.load(...)["model"]` is what
    model.load_state_dict takes, as from a full one."""
    return {k: state[k] for k in BEST_ONLY if k in state}


@contextmanager
def checkpointer(
    run_dir: Path | None,
    interval_s: float,
    background: Any,
    *,
    config: str | None,
    data: dict[str, Any] | None,
    session: Session | None = None,
    first: Callable[[], dict[str, Any]] | None = None,
    keep_epochs: Any = None,
    save_best: str | bool = "full",
) -> Iterator[Checkpointer | None]:
    """The run's Checkpointer while the loop runs (writing last.pt at most every
    `interval_s`, trainer.checkpoint_interval_s), or None when `run_dir` is None (a process
    that does not write the run dir, or trainer.checkpoint off): one factory for a single
    run (runner/run/train.py `fit`) and each fused member (runner/sweep/fused.py).
    `first`: a new run's state now, written as last.pt before its first batch, so that a
    run killed in its first epoch resumes instead of starting over. On leaving, the newest
    epoch is persisted however the loop ended (on `background`'s thread when given).
    `keep_epochs`, `save_best`: trainer.keep_epochs and trainer.save_best (Checkpointer)."""
    if run_dir is None:
        yield None
        return
    saver = Checkpointer(
        run_dir, interval_s, background, config, session, data, keep_epochs, save_best=save_best
    )
    try:
        if first is not None:
            saver.start(first())
        yield saver
    finally:
        saver.persist()


def save(obj: Any, tmp: Path) -> None:
    """torch.save(obj, tmp). torch reports a short write (a full disk, a quota, a file size
    limit) as a RuntimeError ("unexpected pos"), which would end the run in a traceback:
    a probe write then raises the OSError behind it, which files.writing turns into the
    one-line WriteFailed like any other write. On a disk that is not full the probe
    succeeds and the RuntimeError stands."""
    try:
        torch.save(obj, tmp)
    except RuntimeError:
        fd = os.open(tmp, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, bytes(1 << 16))
            os.fsync(fd)
        finally:
            os.close(fd)
        raise


def _link_or_copy(src: Path, dst: Path) -> None:
    os.unlink(dst)
    try:
        os.link(src, dst)  # last.pt is later replaced, not rewritten, so the link stays intact
    except OSError:
        shutil.copyfile(src, dst)


def remove_orphans(run_dir: Path) -> None:
    """Temp checkpoints a kill -9 left mid-write (`.last.pt.<random>.tmp`, `.epoch_4.pt...`):
    never whole."""
    files.remove_orphans(run_dir, (LAST, BEST, KEPT.format("*")))  # a glob: every epoch_<k>.pt


# what a damaged checkpoint stops, by the key that named it: the run's own resume, or a
# branch's start from its trunk's kept epoch
_DAMAGED_WAY_OUT = {
    "resume": "the run cannot continue from it: start it again, or restore the file",
    "branch": "a branch cannot start from it: pick another kept epoch (branch_epoch=), "
    "or restore the file",
}


def _damaged(path: Path, why: str, key: str = "resume") -> ConfigError:
    return ConfigError(key, str(path.parent), f"{path} is damaged ({why}); {_DAMAGED_WAY_OUT[key]}")


_KEYS = ("model", "optimizer", "scheduler", "progress", "rng")


def load(path: Path, key: str = "resume") -> dict[str, Any]:
    """A checkpoint, or a ConfigError saying why it cannot be used (never a raw pickle error),
    naming `key`: `resume` for a run's own checkpoint, `branch` for a trunk's kept epoch."""
    if not path.exists():
        raise ConfigError("resume", str(path.parent), f"no {path.name} there: nothing to resume")
    if path.stat().st_size == 0:
        raise _damaged(path, "an empty file", key)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, corrupt, or not a checkpoint at all
        first = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
        first = first.split(". ")[0][:100]  # torch appends paragraphs of advice
        why = f"{type(err).__name__}: {first}" if first else type(err).__name__
        raise _damaged(path, why, key) from None
    if not isinstance(state, dict) or any(key not in state for key in _KEYS):
        raise _damaged(path, "not a schedlab checkpoint", key)
    return state


def load_weights(state: dict[str, Any], run: Any) -> None:
    """Put model, optimizer, schedule and scaler back: what fails when the checkpoint is not
    this model's, which a resume does before it changes any file of the run."""
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if run.scaler is not None and state["scaler"] is not None:
        run.scaler.load_state_dict(state["scaler"])
    load_average(state, run)


def restore(
    state: dict[str, Any], run: Any, shuffle: torch.Generator, weights: bool = True
) -> Progress:
    """Put every RNG back, and the weights too (load_weights) unless `weights` is False
    (loaded already); returns the loop progress."""
    if weights:
        load_weights(state, run)
    _set_rng_state(state["rng"], shuffle)
    return Progress(**state["progress"])
