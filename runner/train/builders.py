"""A run's typed config (runner/config/schema.py `RunSpec`) -> the objects it needs. The loop
receives these and builds nothing itself."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from runner.config.schema import RunSpec
from runner.data.sets import TensorData, load_data, place, resize_images, steps_per_epoch
from runner.dist.ddp import SINGLE, Dist
from runner.dist.workers import USER_THREADS, in_loky_worker
from runner.train import models, optimizers
from runner.train.averaging import Averager, averager, first_swa_epoch, swa_schedule
from runner.train.model_check import check_scores, materialise
from schedulers import ConfigError, LRSchedule, build_scheduler


@dataclass
class Run:
    device: torch.device
    data: TensorData
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: LRSchedule
    amp_ctx: Any  # autocast context (or a no-op)
    scaler: torch.amp.GradScaler | None  # fp16 only
    forward: torch.nn.Module  # what batches go through: the model, compiled and/or DDP-wrapped
    channels_last: bool  # batches converted to channels_last before the forward pass
    dist: Dist = SINGLE  # this process's rank among torchrun's, or a single process
    average: Averager | None = None  # trainer.average's averaged model (runner/train/averaging.py)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def autocast(device: torch.device, enabled: bool) -> tuple[Any, torch.amp.GradScaler | None]:
    """bf16 autocast where the device supports it, else fp16 with a GradScaler."""
    if not enabled:
        return nullcontext(), None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.float16), torch.amp.GradScaler("cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16), None


def set_threads(setting: Any) -> None:
    """trainer.num_threads: N sets torch's CPU threads; auto keeps what the process the user
    started uses, also in a hydra/launcher=joblib worker, where joblib would otherwise leave
    cpu_count // n_jobs (the same seed then gives other float sums, so other metrics than
    the basic launcher's). Other launchers' jobs keep their own setting (submitit's
    cpus_per_task)."""
    if setting != "auto":
        torch.set_num_threads(int(setting))
        return
    noted = os.environ.get(USER_THREADS)
    if not in_loky_worker() or noted is None:
        return
    # as torch reads the variable: a positive integer, else its default (the physical cores,
    # what it gives the inter-op pool, which these variables do not change)
    wanted = int(noted) if noted.strip().isdigit() and int(noted) > 0 else 0
    torch.set_num_threads(wanted or torch.get_num_interop_threads())


@contextmanager
def own_threads() -> Iterator[None]:
    """A job's trainer.num_threads (`set_threads`) for that job alone: the count the process
    had before is restored when the job ends. An in-process sweep (the basic and fused
    launchers) runs its jobs one after another in one process: a job with num_threads=auto
    after one with num_threads=1 trained on 1 thread, not on the process's count, and so
    summed in another order (and ran slower) than the same job run alone."""
    before = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(before)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def resolve_device(name: str, dist: Dist = SINGLE) -> torch.device:
    """`auto` picks cuda, then mps, then cpu; an explicit device that is absent is an error.
    Under torchrun each rank takes the GPU of its local rank."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", dist.local_rank) if dist.active else torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("trainer.device", name, "CUDA is not available here; use auto or cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("trainer.device", name, "MPS is not available here; use auto or cpu")
    return torch.device(name)


def build_model(
    spec: RunSpec, data: TensorData, device: torch.device
) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """Threads, seed, then model and optimizer, in that order (the order fixes the RNG use:
    the same seed gives the same init wherever a model is built). The model's node is read
    once, for the model, its named parts and its no_decay default; the optimizer gets those
    (one param group, or one per part / name pattern of optimizer.param_groups, each with
    lr = optimizer.lr x its multiplier, split by optimizer.no_decay)."""
    set_threads(spec.trainer.num_threads)
    seed_everything(spec.seed, spec.trainer.deterministic)
    model = models.build_model(spec.model, data.image_shape, data.num_classes).to(device)
    materialise(model, data, device)  # before the optimizer: lazy modules get parameters
    if models.spec_of(spec.model) is None:  # a user's: scores without gradient or softmaxed
        check_scores(model, data, device, models.model_named(spec.model))
    parts, default = models.model_parts(model, spec.model), models.default_no_decay(spec.model)
    opt = spec.optimizer
    groups = optimizers.split_params(opt, model, parts, optimizers.exempts_decay(opt, default))
    return model, optimizers.build_optimizer(opt, groups)


def build_member(
    spec: RunSpec, data: TensorData, device: torch.device
) -> tuple[torch.nn.Module, torch.optim.Optimizer, LRSchedule]:
    """One run's model, optimizer and lr schedule (`build_model`, then the schedule): what a
    single run (`build_run`) and each member of a fused group (runner/sweep/fused.py) train,
    built by this one function so that neither can skip a step (trainer.num_threads, the
    seed) the other takes. `data`: not yet placed on the device (the model may resize it)."""
    model, optimizer = build_model(spec, data, device)
    # the only place epochs meet batches: per-step schedules need the batches per epoch
    per_epoch = steps_per_epoch(data.n_train, spec.data["batch_size"], spec.trainer.accumulate)
    scheduler = build_scheduler(
        spec.scheduler, optimizer, epochs=spec.epochs, steps_per_epoch=per_epoch
    )
    return model, optimizer, scheduler


def build_training_parts(
    spec: RunSpec, data: TensorData | None = None, dist: Dist = SINGLE
) -> tuple[torch.device, TensorData, torch.nn.Module, torch.optim.Optimizer]:
    """Data, model, optimizer without a schedule (the LR range test sets the lr itself).
    `data` skips loading (loading uses no RNG; the split is fixed by data.split_seed)."""
    device = resolve_device(spec.trainer.device, dist)
    data = data if data is not None else load_data(spec.data)
    model, optimizer = build_model(spec, data, device)
    data = place(resize_images(data, getattr(model, "input_size", None)), device)
    return device, data, model, optimizer


def build_run(spec: RunSpec, data: TensorData | None = None, dist: Dist = SINGLE) -> Run:
    """Everything `fit` needs: the member (`build_member`) and how batches reach it."""
    device = resolve_device(spec.trainer.device, dist)
    data = data if data is not None else load_data(spec.data)
    model, optimizer, scheduler = build_member(spec, data, device)
    data = place(resize_images(data, getattr(model, "input_size", None)), device)
    trainer = spec.trainer
    has_conv = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    # conv nets run faster channels-last on CUDA (tensor cores) and on CPU (oneDNN): measured
    # 17 % for LeNet and 7 % for ResNet-18 per run on 2 CPU cores; MPS is left alone
    channels_last = len(data.image_shape) == 3 and (  # a memory format of 4-D batches only
        trainer.channels_last is True
        or (trainer.channels_last == "auto" and device.type in ("cuda", "cpu") and has_conv)
    )
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    # trainer.average: the schedule (handed to SWALR at swa_start when trainer.swa_lr is
    # set) and the averaged model, copied from `model` in its final memory format, before
    # DDP or torch.compile wrap it
    start = first_swa_epoch(trainer.swa_start, spec.epochs)
    scheduler = swa_schedule(scheduler, trainer.average, trainer.swa_lr, start)
    average = averager(model, trainer.average, trainer.ema_decay, start)
    forward: torch.nn.Module = model
    if dist.active:
        ids = [device.index] if device.type == "cuda" else None
        forward = DistributedDataParallel(model, device_ids=ids)
    if trainer.compile:
        forward = torch.compile(forward)
    amp_ctx, scaler = autocast(device, trainer.amp)
    return Run(
        device,
        data,
        model,
        optimizer,
        scheduler,
        amp_ctx,
        scaler,
        forward,
        channels_last,
        dist,
        average,
    )
