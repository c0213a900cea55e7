"""The epoch engine: everything around the batches of an epoch, written once for K members.

A single run is K = 1 (runner/run/train.py); a fused group trains K jobs as one stacked
model (runner/sweep/fused.py). The two differ only in how a batch is trained and
validated; what happens per step (the lr schedule's per-step advance, step rows) and at
the end of an epoch (the epoch row, its log line, divergence, the schedule's step with the
monitored metric, the best epoch, the checkpoint snapshot) happens here, so a metric or a
stop rule added once reaches both.

Rows: `lr/<group>` is the lr the epoch's batches used (read before its first batch), and
`momentum/<group>` beside it when the schedule cycles momentum (SGD's momentum or Adam's
beta1, as OneCycleLR and CyclicLR set them). Step rows carry the same as `lr_step/` and
`momentum_step/`. With trainer.average on, epoch rows also carry the averaged model's
`val_avg/loss` and `val_avg/acc` (runner/train/averaging.py), once it has averaged anything.
A language model's rows (its data token windows) add val/bpb, val/gap, train/tokens_per_s
and train/mfu (runner/train/lm.py).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from runner.config.schema import Trainer
from runner.io import checkpoint
from runner.io.loggers import RunLogger
from runner.train import heap, lm
from runner.train.steps import eval_weights, progress_bar
from schedulers.checks import mode_for

log = logging.getLogger("schedlab")


@dataclass(frozen=True)
class Result:
    status: str  # completed | diverged | interrupted
    best_val_acc: float
    epochs_done: int
    signum: int | None = None  # the signal that interrupted the run
    chain: bool = False  # pass that signal on to the launcher's handler (see stopping.py)
    # trainer.monitor (auto resolved) and its best value in its direction: the W&B summary's
    # best/<metric> (a language model's best val/loss); None before an epoch had it
    best: tuple[str, float] | None = None


def describe_epoch(row: dict[str, Any], epochs: int, note: str = "") -> str:
    """The log line of an epoch row; `note` is added after the epoch's time."""
    lr_text = " ".join(f"{k}={v:.3g}" for k, v in row.items() if k.startswith("lr/"))
    # the averaged model's loss too, as the raw model's: a language model is judged by it
    averaged = (
        f"val_avg/loss={row['val_avg/loss']:.4f} val_avg/acc={row['val_avg/acc']:.3f}  "
        if "val_avg/acc" in row
        else ""
    )
    bits = f"val/bpb={row['val/bpb']:.4f}  " if "val/bpb" in row else ""
    return (
        f"epoch {row['epoch']:>3}/{epochs}  {lr_text}  train/loss={row['train/loss']:.4f} "
        f"train/acc={row['train/acc']:.3f}  val/loss={row['val/loss']:.4f} "
        f"val/acc={row['val/acc']:.3f}  {bits}{averaged}({row['time/epoch_s']:.2f}s{note})"
    )


def diverged(row: dict[str, Any], diverge_loss: float | None) -> bool:
    """A NaN/inf loss, or one above trainer.diverge_loss: nothing after it is worth computing."""
    losses = (row["train/loss"], row["val/loss"])
    return not all(map(math.isfinite, losses)) or (
        diverge_loss is not None and max(losses) > diverge_loss
    )


def group_names(optimizer: torch.optim.Optimizer) -> list[str]:
    """A param group's `name` if it has one, else group<i>; keys of the `lr/<group>` metrics."""
    return [g.get("name", f"group{i}") for i, g in enumerate(optimizer.param_groups)]


def cycles_momentum(schedule: Any) -> bool:
    """The schedule sets momentum (or Adam's beta1) as it goes: OneCycleLR or CyclicLR with
    cycle_momentum, alone or as a phase of a sequence."""
    main = getattr(schedule, "main", schedule)
    parts = [main, *getattr(main, "_schedulers", [])]
    return any(getattr(part, "cycle_momentum", False) for part in parts)


@dataclass
class Track:
    """One member's side of the loop: its optimizer and schedule, where its rows and log lines
    go, its checkpoint state and its stop rules. Built once; the engine reads the config
    values from here, not from OmegaConf (lookups cost microseconds, epochs can be 10 ms)."""

    optimizer: torch.optim.Optimizer
    scheduler: Any  # schedulers.LRSchedule
    logger: RunLogger
    progress: checkpoint.Progress
    snapshot: Callable[[checkpoint.Progress], dict[str, Any]]  # its checkpoint state now
    saver: checkpoint.Checkpointer | None
    say: Callable[[int, str], None]  # a log line: (level, text)
    diverge_loss: float | None
    monitor: str
    monitor_mode: str  # max | min | auto
    log_every: int  # trainer.log_every_n_steps (0: no step rows but per-step lrs)
    result: Result | None = None
    tokens: lm.TokenStats | None = None  # a language model's (its rows' extra keys)

    def __post_init__(self) -> None:
        self.names = group_names(self.optimizer)
        self.per_step = self.scheduler.interval == "step"  # then every step's lr is logged
        self.momentum = cycles_momentum(self.scheduler)

    def resolve_monitor(self) -> None:
        """trainer.monitor auto resolved (`monitored`) and its mode, once `tokens` says
        whether this is a language model: when the engine takes the track."""
        self.monitor = monitored(self.monitor, self.tokens is not None)
        self.monitor_mode = mode_for(self.monitor, self.monitor_mode)

    def best(self) -> tuple[str, float] | None:
        """The monitored metric and its best value so far (Result.best)."""
        value = self.progress.best_metric
        return None if value is None else (self.monitor, value)

    def rates(self, lr_key: str, momentum_key: str) -> dict[str, float]:
        """The lr of each param group now, and its momentum when the schedule cycles it."""
        groups = self.optimizer.param_groups
        row = {f"{lr_key}{n}": g["lr"] for n, g in zip(self.names, groups, strict=True)}
        if self.momentum:
            for n, g in zip(self.names, groups, strict=True):
                row[f"{momentum_key}{n}"] = g["betas"][0] if "betas" in g else g["momentum"]
        return row


def monitored(monitor: str, language_model: bool) -> str:
    """trainer.monitor, `auto` resolved: val/loss for a language model (its val/acc, the
    share of next tokens guessed right, barely moves while the loss still falls, and the
    loss is what LM results are compared by), else val/acc."""
    if monitor != "auto":
        return monitor
    return "val/loss" if language_model else "val/acc"


def lm_outcome(rows: list[dict[str, Any]]) -> dict[str, float]:
    """A language model's (its rows have val/bpb) final and best val/loss, for its
    status.json and its last lines; {} for a classifier."""
    losses = [r["val/loss"] for r in rows if "val/bpb" in r]
    return {"final_val_loss": losses[-1], "best_val_loss": min(losses)} if losses else {}


def scores(status: dict[str, Any]) -> str:
    """What a run scored, as its last log line and a rerun's "nothing to do" say it, from
    its status.json record: a language model's final val/loss (its report ranks by it) and
    best; a classifier's best val/acc; and where trainer.monitor chose best.pt by another
    metric (an averaged model's val_avg/loss), that one too: the line's best is not
    best.pt's then."""
    if "final_val_loss" in status:
        said = "val/loss"
        text = f"final val/loss={status['final_val_loss']:.4f} (best {status['best_val_loss']:.4f})"
    else:
        said = "val/acc"
        text = f"best val/acc={status.get('best_val_acc', float('nan')):.4f}"
    monitor, best = status.get("monitor"), status.get("best_monitored")
    if monitor not in (None, said) and best is not None:
        text += f"; best.pt by {monitor}: best {best:.4f}"
    return text


def track_for(
    trainer: Trainer,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    logger: RunLogger,
    progress: checkpoint.Progress,
    snapshot: Callable[[checkpoint.Progress], dict[str, Any]],
    saver: checkpoint.Checkpointer | None,
    say: Callable[[int, str], None],
) -> Track:
    """A run's Track, its stop rules and logging read from its typed `trainer` node once: a
    single run's (runner/run/train.py) and each fused member's (runner/sweep/fused.py)."""
    return Track(
        optimizer,
        scheduler,
        logger,
        progress,
        snapshot=snapshot,
        saver=saver,
        say=say,
        diverge_loss=trainer.diverge_loss,
        monitor=trainer.monitor,
        monitor_mode=trainer.monitor_mode,
        log_every=trainer.log_every_n_steps,
    )


class Models(Protocol):
    """How batches are trained and validated: one model (runner/run/train.py) or K stacked
    ones (runner/sweep/fused.py). Everything else in an epoch is the engine's."""

    steps_per_epoch: int  # optimizer steps
    batch_size: int  # samples per step (the bar shows samples/s)

    def batches(self, epoch: int) -> Iterable[Any]:
        """The epoch's optimizer steps, each the micro-batches it accumulates
        (trainer.accumulate; the models set to train mode, the sums reset)."""

    def train_batch(self, batch: Any) -> Callable[[], list[float]]:
        """One optimizer step on every member; returns how to read each one's loss of it
        (a host sync, so only called on the steps that log it)."""

    def train_metrics(self) -> tuple[list[float], list[float]]:
        """Each member's mean train loss and accuracy over the epoch."""

    def grad_norms(self) -> list[float | None]:
        """Each member's train/grad_norm of the epoch (the mean over its optimizer steps of
        the gradient norm before clipping), None for a member that does not clip."""

    def validate(self) -> tuple[list[float], list[float]]:
        """Each member's loss and accuracy on the whole validation split."""

    def validate_average(self, epoch: int) -> list[tuple[float, float] | None]:
        """At epoch `epoch`'s end: each member's averaged model (trainer.average) updated as
        its kind says, then its (loss, accuracy) on the validation split; None for a member
        without one yet (average none, or SWA before swa_start)."""

    def stop_member(self, i: int) -> None:
        """Member i diverged: it trains no more (the others go on)."""

    def epoch_done(self, epoch: int) -> None:
        """After the engine's epoch end: whatever the models need before the next epoch."""


def say_to_log(level: int, text: str) -> None:
    log.log(level, text)


class Engine:
    """Steps and epoch ends for K tracks; `active` are the ones still training."""

    def __init__(
        self,
        tracks: Sequence[Track],
        epochs: int,
        *,
        step: int = 0,
        elapsed_s: float = 0.0,
        note: str = "",
        diverge_note: str = "",
    ) -> None:
        self.tracks, self.epochs, self.step = list(tracks), epochs, step
        heap.keep_freed_memory()  # each step's activations reused, not faulted in again
        for t in self.tracks:  # their tokens are set by now (a language model's or None)
            t.resolve_monitor()
        self.active = list(range(len(self.tracks)))
        self.note, self.diverge_note = note, diverge_note
        self.t_start = time.perf_counter() - elapsed_s  # wall time counts the earlier processes
        self._any_per_step = any(t.per_step for t in self.tracks)
        self._everies = tuple({t.log_every for t in self.tracks if t.log_every})
        self._rates: list[dict[str, float]] = []
        self._t0 = 0.0
        self.epoch_s = 0.0  # the last epoch's wall time, as its rows say
        self.data_s = 0.0  # of which waiting for batches
        self.train_s = 0.0  # of which its training steps (batches included, validation not)

    def run(self, models: Models, *, start: int, stop: Any, bar_mode: str, desc: str) -> None:
        """Epochs `start`..epochs-1: per batch one optimizer step and the step's bookkeeping;
        per epoch the train means, validation and the epoch end. A signal drops the partial
        epoch: `stop.requested(step, steps)` is asked after each step of the epoch but its
        last, then once after its batches as `(steps, steps)`; it returns the signal to stop
        on, or None (a StopFlag: this process's signal; under DDP an AgreedStop, which
        answers every rank alike, so all of them stop after the same batch and none waits
        in a collective for a rank that left). `desc` (formatted with epoch, epochs) names
        the bar."""
        # bound once: looked up per step, they cost a share of a small model's step
        requested, train_batch, clock = stop.requested, models.train_batch, time.perf_counter
        for epoch in range(start, self.epochs):
            self.begin_epoch()

            # -- train: one optimizer step per batch, nothing read back unless it is logged
            bar = progress_bar(
                bar_mode,
                models.steps_per_epoch,
                desc.format(epoch=epoch, epochs=self.epochs),
                models.batch_size,
            )
            n = models.steps_per_epoch
            per_step, logged = self._any_per_step, self._logged_steps(n)
            # the time spent waiting for the next batch: a loader that starves the model
            # shows as time/data_s close to time/epoch_s
            batches, data_s = iter(models.batches(epoch)), 0.0
            done, signum = 0, None  # steps of this epoch; the signal to stop on
            update = bar.update
            while True:
                t0 = clock()
                batch = next(batches, None)
                data_s += clock() - t0
                if batch is None:
                    break
                step_loss = train_batch(batch)
                if per_step or self.step + 1 in logged:
                    self.after_step(epoch, step_loss)
                else:  # most steps of most runs: nothing else to do
                    self.step += 1
                update()
                done += 1
                # the epoch's end is asked once, below, however many batches there were
                if done < n and (signum := requested(done, n)) is not None:
                    break
            bar.close()
            self.data_s, self.train_s = data_s, time.perf_counter() - self._t0
            if signum is None:
                signum = requested(n, n)

            # -- interrupted: last.pt (the epoch before) is where a resume continues
            if signum is not None:
                self.interrupt(epoch, signum)
                return

            # -- validate, then rows, divergence, schedules, best epoch, checkpoints, all at
            # a schedule-free optimizer's eval weights (runner/train/steps.py eval_weights):
            # its checkpoints hold them, in eval mode, and every rank switches once an
            # epoch alike, whether or not it writes checkpoints (a switch there and back
            # is not bit-exact: ranks that switched more often would drift apart)
            train = models.train_metrics()
            norms = models.grad_norms()
            with eval_weights(*(t.optimizer for t in self.tracks)):
                val = models.validate()
                averaged = models.validate_average(epoch)
                stopped = self.end_epoch(epoch, train, val, norms, averaged)
            for i in stopped:
                models.stop_member(i)
            models.epoch_done(epoch)
            if not self.active:
                return
        self.complete()

    def _logged_steps(self, n: int) -> set[int]:
        """Which of the next n steps log a step row (trainer.log_every_n_steps)."""
        first, last = self.step + 1, self.step + n
        return {
            s for every in self._everies for s in range(-(-first // every) * every, last + 1, every)
        }

    def begin_epoch(self) -> None:
        """Before the first batch: the rates this epoch's batches start with."""
        self._t0 = time.perf_counter()
        self._rates = [t.rates("lr/", "momentum/") for t in self.tracks]

    def after_step(self, epoch: int, step_loss: Callable[[], list[float]]) -> None:
        """After an optimizer step that advances a per-step schedule or logs a step row (run()
        counts the other steps itself): schedules advance, step rows are logged.
        `step_loss()` (each member's loss of this step; a host sync) is called only on the
        steps that log it."""
        self.step += 1
        step = self.step
        losses = None
        for i in self.active:
            t = self.tracks[i]
            # the rates this step used: read before a per-step schedule advances
            row = t.rates("lr_step/", "momentum_step/") if t.per_step else {}
            t.scheduler.step_batch()  # advances only `interval: step` schedules
            if t.log_every and step % t.log_every == 0:
                losses = step_loss() if losses is None else losses
                row = row or t.rates("lr_step/", "momentum_step/")
                row["train/step_loss"] = losses[i]
            if row:
                t.logger.log_step({"trainer/global_step": step, "epoch": epoch, **row})

    def end_epoch(
        self,
        epoch: int,
        train: tuple[list[float], list[float]],
        val: tuple[list[float], list[float]],
        norms: Sequence[float | None] = (),
        averaged: Sequence[tuple[float, float] | None] = (),
    ) -> list[int]:
        """After validation: each active member's row logged, divergence checked, schedule
        stepped with the row (Plateau reads its monitored metric there), best tracked and
        checkpoint state snapshotted. `train`/`val` are (losses, accuracies), one per member;
        `norms` each one's train/grad_norm (None: not measured, no such key in its row);
        `averaged` each one's averaged model's (val loss, val acc) (None: no val_avg keys).
        Returns the members that diverged in this epoch (they leave `active`)."""
        epoch_s = self.epoch_s = time.perf_counter() - self._t0
        (train_loss, train_acc), (val_loss, val_acc) = train, val
        stopped = []
        for i in list(self.active):
            t, p = self.tracks[i], self.tracks[i].progress
            row = {
                "epoch": epoch,
                **self._rates[i],
                "train/loss": train_loss[i],
                "train/acc": train_acc[i],
                "val/loss": val_loss[i],
                "val/acc": val_acc[i],
                "time/epoch_s": epoch_s,
                "time/data_s": self.data_s,
            }
            if i < len(norms) and norms[i] is not None:
                row["train/grad_norm"] = norms[i]
            if i < len(averaged) and averaged[i] is not None:
                row["val_avg/loss"], row["val_avg/acc"] = averaged[i]
            if t.tokens is not None:
                row.update(lm.row(t.tokens, val_loss[i], self.train_s))
            t.logger.log_epoch(row)
            p.best_val_acc = max(p.best_val_acc, val_acc[i])
            t.say(logging.INFO, describe_epoch(row, self.epochs, self.note))

            # -- a diverged run stops: nothing after a NaN/inf (or too large) loss is worth it
            if diverged(row, t.diverge_loss):
                t.say(
                    logging.WARNING,
                    f"loss {train_loss[i]:.4g} at epoch {epoch}: run diverged, stopping"
                    + self.diverge_note,
                )
                t.result = Result("diverged", p.best_val_acc, epoch + 1, best=t.best())
                self.active.remove(i)
                stopped.append(i)
                continue

            # -- schedule: once per epoch, after the batch loop (sets the next epoch's lr)
            t.scheduler.step_epoch(row)

            # -- checkpoint: the state the next epoch starts from
            p.step = self.step
            # val_avg/* is missing before SWA's first average: not a best epoch
            is_best = p.end_epoch(epoch, row.get(t.monitor), t.monitor_mode)  # resolved once
            if t.saver is not None:
                p.elapsed_s = time.perf_counter() - self.t_start
                t.saver.epoch_end(t.snapshot(p), is_best)
        return stopped

    def interrupt(self, epoch: int, signum: int) -> None:
        """A signal in epoch `epoch`: its partial epoch is dropped; each member's last.pt
        (the epoch before) is where a resume continues."""
        for i in self.active:
            t = self.tracks[i]
            p = t.progress
            t.result = Result("interrupted", p.best_val_acc, p.epoch, signum, best=t.best())
            t.say(
                logging.WARNING,
                f"interrupted in epoch {epoch}; resume continues from epoch {t.progress.epoch}",
            )

    def complete(self) -> None:
        """Every member still active trained all its epochs."""
        for i in self.active:
            t = self.tracks[i]
            t.result = Result("completed", t.progress.best_val_acc, self.epochs, best=t.best())
