"""Weight averaging (trainer.average): an averaged copy of the model beside the trained one.

torch.optim.swa_utils' own parts, not hand-rolled arithmetic:

- `ema`: AveragedModel with get_ema_multi_avg_fn(trainer.ema_decay), updated after every
  optimizer step. torch's first update copies the weights (the average starts at the
  weights after step 1), every later one is avg = decay * avg + (1 - decay) * weights.
- `swa`: AveragedModel's default running mean, updated at the end of every epoch from
  trainer.swa_start on (the mean of those epochs' end-of-epoch weights). trainer.swa_lr
  hands the lr to torch's SWALR from swa_start on (`SwaSchedule`); null keeps the schedule.

The averaged model's BatchNorm statistics are its own: its buffers are not averaged
(use_buffers=False) but recomputed with swa_utils.update_bn over one pass of the whole
training split, in order, before each validation of it (a model without BatchNorm skips
it). It is validated every epoch beside the raw model (val_avg/loss, val_avg/acc) and kept
in the checkpoint (`state_dict`), so a resume continues the average instead of restarting
it (PITFALLS: "EMA/SWA weights need their own BatchNorm statistics and their own place in
the checkpoint")."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim.swa_utils import SWALR, AveragedModel, get_ema_multi_avg_fn, update_bn

from schedulers import ConfigError


def _get(trainer: Any, key: str) -> Any:
    """A trainer key from the typed spec (runner/config/schema.py Trainer) or, at start-up
    validation, from the config's node."""
    return trainer[key] if isinstance(trainer, Mapping) else getattr(trainer, key)


def swa_start(trainer: Mapping[str, Any], epochs: int) -> int:
    """trainer.swa_start, its null resolved (`first_swa_epoch`)."""
    return first_swa_epoch(_get(trainer, "swa_start"), epochs)


def first_swa_epoch(start: int | None, epochs: int) -> int:
    """The epoch SWA starts at: trainer.swa_start, or null: the last quarter of the run
    (epochs * 3 // 4)."""
    return epochs * 3 // 4 if start is None else int(start)


def validate_average(average: str, start: int | None, epochs: int) -> None:
    """SWA must start within the run, or it would average nothing (and log no val_avg).
    `average`, `start`: trainer.average and trainer.swa_start, as start-up validation
    reads them."""
    if average != "swa":
        return
    if first_swa_epoch(start, epochs) >= epochs:
        raise ConfigError(
            "trainer.swa_start",
            start,
            f"must be < epochs ({epochs}): SWA averages the weights of epochs swa_start.."
            f"{epochs - 1} (0-based), so it would average nothing",
        )


class Averager:
    """The averaged model (`model`, a torch AveragedModel of the trained `source`) and when
    it takes the source's weights: after each optimizer step (ema) or at the end of each
    epoch from `start` on (swa)."""

    def __init__(self, source: torch.nn.Module, kind: str, ema_decay: float, start: int) -> None:
        self.source, self.kind, self.start = source, kind, start
        multi = get_ema_multi_avg_fn(ema_decay) if kind == "ema" else None
        self.model = AveragedModel(source, multi_avg_fn=multi, use_buffers=False)
        self.model.eval()
        self.has_bn = any(isinstance(m, _BatchNorm) for m in source.modules())

    @property
    def ready(self) -> bool:
        """It has averaged something (SWA: not before swa_start's epoch end)."""
        return int(self.model.n_averaged) > 0

    def after_step(self) -> None:
        if self.kind == "ema":
            self.model.update_parameters(self.source)

    def end_epoch(self, epoch: int) -> None:
        if self.kind == "swa" and epoch >= self.start:
            self.model.update_parameters(self.source)

    def recalibrate(self, inputs: Iterable[torch.Tensor]) -> None:
        """Its own BatchNorm statistics over `inputs` (torch's update_bn; left in eval mode)."""
        if self.has_bn:
            update_bn(inputs, self.model)
            self.model.eval()

    def state_dict(self) -> dict[str, Any]:
        return self.model.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state)


def build_average(
    trainer: Mapping[str, Any], model: torch.nn.Module, epochs: int
) -> Averager | None:
    """The run's Averager, None for trainer.average=none. Built after the model is in its
    final memory format (channels_last), so the copy is too."""
    kind = _get(trainer, "average")
    return averager(model, kind, _get(trainer, "ema_decay"), swa_start(trainer, epochs))


def averager(model: torch.nn.Module, kind: str, ema_decay: float, start: int) -> Averager | None:
    """`build_average` of trainer.average (`kind`), trainer.ema_decay and the first SWA
    epoch (`first_swa_epoch`): the values a single run's build reads off its typed trainer."""
    if kind == "none":
        return None
    return Averager(model, kind, ema_decay, start if kind == "swa" else 0)


class SwaSchedule:
    """trainer.swa_lr: the run's lr schedule (`inner`, an LRSchedule) until epoch `start`,
    then torch's SWALR holding every param group at `swa_lr` (anneal_epochs=0: constant from
    the first SWA epoch on, the SWA paper's constant schedule). What the engine calls on a
    schedule (step_batch, step_epoch, state_dict) is delegated until then; a per-step
    schedule stops stepping at the switch."""

    def __init__(self, inner: Any, swa_lr: float, start: int) -> None:
        self.inner, self.swa_lr, self.start = inner, swa_lr, start
        self.main, self.interval, self.monitor = inner.main, inner.interval, inner.monitor
        self.epoch = 0  # the epoch now training
        self.swalr: SWALR | None = None
        if start == 0:
            self._switch()

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.inner.optimizer

    def _switch(self) -> None:
        self.swalr = SWALR(self.optimizer, swa_lr=self.swa_lr, anneal_epochs=0)

    def step_batch(self) -> None:
        if self.swalr is None:
            self.inner.step_batch()

    def step_epoch(self, metrics: Mapping[str, float]) -> None:
        """After epoch `self.epoch`: the next epoch's lr (SWALR's from `start` on)."""
        self.epoch += 1
        if self.swalr is not None:
            self.swalr.step()
        elif self.epoch >= self.start:
            self._switch()
        else:
            self.inner.step_epoch(metrics)

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        swa = None if self.swalr is None else self.swalr.state_dict()
        return {**self.inner.state_dict(), "swa_epoch": self.epoch, "swa": swa}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.inner.load_state_dict(state)
        self.epoch = state["swa_epoch"]
        if state["swa"] is not None:
            if self.swalr is None:
                self._switch()
            assert self.swalr is not None
            self.swalr.load_state_dict(state["swa"])


def with_swa_lr(trainer: Mapping[str, Any], schedule: Any, epochs: int) -> Any:
    """The run's schedule, handed to SWALR at swa_start when trainer.swa_lr is set."""
    return swa_schedule(
        schedule, _get(trainer, "average"), _get(trainer, "swa_lr"), swa_start(trainer, epochs)
    )


def swa_schedule(schedule: Any, kind: str, swa_lr: float | None, start: int) -> Any:
    """`with_swa_lr` of trainer.average (`kind`), trainer.swa_lr and the first SWA epoch
    (`first_swa_epoch`): the values a single run's build reads off its typed trainer."""
    if kind != "swa" or swa_lr is None:
        return schedule
    return SwaSchedule(schedule, float(swa_lr), start)
