"""Fused sweeps: the jobs of a multirun that share a batch shape, trained as one stacked model.

Used by the `hydra/launcher=fused` plugin (hydra_plugins/schedlab_fused/). Jobs fuse when
they differ only in what each member can have for itself: seed (init and data order), the
schedule and its parameters, optimizer hyper-parameters (lr, momentum, weight decay,
betas, eps, param groups and no_decay), gradient clipping (each member clips its own slice
of the stacked gradients, stacked.py `clip_members`), when to call a run diverged, and
the trunk a branch starts from (branch=). Everything that shapes a batch, the model or
the loss (model, data, batch size, trainer.accumulate, trainer.label_smoothing, epochs,
device) must match, and so must where training starts (branch_epoch).

A branch member starts as a single branch does (runner/run/branch.py `start_state`): its
trunk's epoch_<k>.pt loaded into its own model, optimizer and schedule before the models
are stacked, then its optimizer state (`_start_optimizer`), averaged model
(`_start_average`) and data-order generator stacked or set from there, its trunk's rows
before the branch point copied into its metrics.jsonl.

Weight averaging (trainer.average: ema, swa, with swa_lr) is the group's (the keys are
in its key): one torch AveragedModel over the stacked net, whose update is elementwise, so
per member by construction; each member's checkpoint holds its own slice in a single run's
format, and its schedule is handed to SWALR as a single run's is.

Each member keeps what a single run has: its model built from its own seed (then stacked,
runner/sweep/stacked.py; a GPT by stacked_gpt.py), its own shuffle generator, its own
torch optimizer and real torch scheduler (which set the lr that the fused step reads), its own
metrics.jsonl/config.yaml/status.json in its own run dir. Start-up uses a single run's own
pieces (runner/train/builders.py `build_member`, runner/run/rundir.py `hold` for the run
dir's lock, runner/run/train.py `config_yaml`, `start_track` for the checkpointer and its
first save, `startup_line`, and `write_status` at the end), and the epochs run in the single
run's engine (runner/train/engine.py), with the one evaluation loop (runner/train/steps.py
`evaluate`): rows carry the same keys. Only how a batch is trained and validated is fused
(`StackedModels`).

Each member starts on its own first (`_start_member`: a branch validated again, built,
loaded from its trunk; then its config.yaml): a member whose start fails (its trunk's
checkpoint gone or damaged since the launcher's check, its run dir unwritable) fails
alone with the error its single run records, and the others are stacked without it.
Errors after the start stop the group, except divergence, which stops only its member.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch.nn import functional as F

from runner.config.schema import RunSpec, run_spec
from runner.data.fingerprint import fingerprint as data_fingerprint
from runner.data.sets import TensorData, batches, load_data, place, resize_images, steps_per_epoch
from runner.data.stream import is_streamed
from runner.data.text import is_text
from runner.io import checkpoint, files
from runner.io.background import Background
from runner.io.loggers import RunLogger
from runner.run import branch
from runner.run.check import validate
from runner.run.rundir import SWEEP_DIR_KEY, DirInUse, hold
from runner.run.train import (
    config_yaml,
    outcome,
    send_rows,
    start_track,
    startup_line,
    write_status,
)
from runner.sweep.stacked import FusedOptimizer, StackedNet, clip_members
from runner.sweep.stacked_gpt import StackedGPT, member_windows
from runner.sweep.sweepdir import record_refused
from runner.train import models, optimizers
from runner.train.averaging import Averager, build_average, with_swa_lr
from runner.train.builders import build_member, own_threads, resolve_device
from runner.train.engine import Engine, Result, Track
from runner.train.gpt import GPT
from runner.train.lm import token_stats, val_batch_size
from runner.train.steps import evaluate, groups, top_is_target
from runner.train.stopping import stop_on_signals
from schedulers import ConfigError
from schedulers.binder import label, plain

log = logging.getLogger("schedlab")

# keys each member may set for itself; everything else must be equal to fuse
PER_MEMBER = {
    "seed": None,
    "branch": None,  # each member starts from its own trunk's checkpoint (same branch_epoch)
    "scheduler": None,
    "logger": None,
    "lr_find": None,
    "optimizer": ("lr", "momentum", "weight_decay", "betas", "eps", "param_groups", "no_decay"),
    "trainer": (
        "diverge_loss", "monitor", "monitor_mode", "log_every_n_steps", "progress",
        "checkpoint", "checkpoint_interval_s", "channels_last", "grad_clip_norm",
        "grad_clip_value", "keep_epochs",
    ),
}  # fmt: skip


def why_not_fusable(cfg: DictConfig) -> str | None:
    """None when the job can train inside a fused group, else the reason (shown once)."""
    try:
        validate(cfg)
    except ConfigError:
        return "its config is invalid (the job reports the error itself)"
    model_spec, opt_spec = models.spec_of(cfg.model), optimizers.spec_of(cfg.optimizer)
    if model_spec is None or not model_spec.fusable:
        fusable = [name for name, spec in models.MODELS.items() if spec.fusable]
        return f"model={label(cfg.model)} (fused: {', '.join(fusable)})"
    if opt_spec is None or not opt_spec.fusable:
        fusable = [name for name, spec in optimizers.OPTIMIZERS.items() if spec.fusable]
        return f"optimizer={label(cfg.optimizer)} (fused: {', '.join(fusable)})"
    if cfg.data.name == "dataset" and is_streamed(load_data(plain(cfg.data))):  # loaded by validate
        return "data=dataset is streamed (fused needs it in memory: data.in_memory=true)"
    if cfg.model.name in ("mlp", "gpt") and cfg.model.dropout > 0:
        return "dropout draws from the global RNG, so members cannot match separate runs"
    reasons = {
        "resume": cfg.resume not in (None, False),
        "optimizer.lr=find": cfg.optimizer.lr == "find",
        "data.augment": bool(cfg.data.get("augment", False)),
        "trainer.amp": cfg.trainer.amp,
        "trainer.compile": cfg.trainer.compile,
        "trainer.strategy=ddp": cfg.trainer.strategy == "ddp",
    }
    bad = [name for name, on in reasons.items() if on]
    return f"{', '.join(bad)} is not supported fused" if bad else None


def group_key(cfg: DictConfig) -> str:
    """Jobs with equal keys share a batch shape and can train as one stacked model."""
    shared = OmegaConf.to_container(cfg, resolve=True)
    for top, keys in PER_MEMBER.items():
        if keys is None:
            shared.pop(top, None)
        else:
            for key in keys:
                shared[top].pop(key, None)
    return json.dumps(shared, sort_keys=True)


@dataclass
class Member:
    """One job of a fused group: its config (the job's, without `hydra`) and run dir."""

    cfg: DictConfig
    run_dir: Path
    overrides: list[str]
    sweep_name: str | None
    log_lines: list[tuple[int, str]] = field(default_factory=list)  # replayed into train.log
    result: Result | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    wandb_id: str | None = None  # chosen up front: the checkpoints name the W&B run to resume
    sweep_dir: Path | None = None  # where a member refused its dir is named (pending)
    earlier_s: float = 0.0  # a branch's trunk's training time before it: in its wall time
    failed_start: bool = False  # its own start failed: it failed alone (`_start_member`)
    refused: bool = False  # another process held its run dir: pending, nothing written there


def train_group(members: Sequence[Member]) -> None:
    """Train the members as one stacked model; leaves each one's run dir as a single run
    would (config.yaml, metrics.jsonl, status.json) and its result on the member."""
    t0 = time.perf_counter()
    try:
        # checkpoints are written on the background thread; `cleanup` persists the newest
        # epoch of every member however the loop ends, before that thread is joined
        with own_threads(), ExitStack() as locks:  # trainer.num_threads: this group's only
            members = _lock_run_dirs(members, locks)
            if not members:
                return
            with Background() as background, ExitStack() as cleanup, stop_on_signals() as stop:
                _fit(members, stop, background, cleanup)  # SystemExit(128 + n) if interrupted
    except files.WriteFailed as err:  # disk full, read-only: one line names the file
        log.error(f"the fused group stopped: {err}")
        for m in members:
            if m.result is None and not m.failed_start:
                m.error = f"error: {err}"
    except Exception as err:
        log.exception("the fused group failed")
        for m in members:
            if m.result is None and not m.failed_start:
                m.error = repr(err)
    finally:
        _write_status(members, time.perf_counter() - t0)


def _lock_run_dirs(members: Sequence[Member], locks: ExitStack) -> list[Member]:
    """Each member's run dir held for the group's training, as a single run holds its own:
    a second run into one of them is refused. A member whose dir another process took
    since the launcher checked it is left out with that error (its files untouched); one
    whose dir cannot take its lock (read-only, full) fails alone, as its single run would."""
    held = []
    for m in members:
        try:
            hold(m.run_dir, locks, SWEEP_DIR_KEY).claim()
        except DirInUse as err:
            m.error, m.refused = f"error: {err}", True
            if m.sweep_dir is not None:  # pending, not a loss (runner/sweep/sweepdir.py)
                record_refused(m.sweep_dir, m.run_dir, err.pid)
            continue
        except files.WriteFailed as err:
            m.error, m.failed_start = f"error: {err}", True
            log.error(f"error: {err}; the other fused jobs go on")
            continue
        held.append(m)
    return held


def _write_status(members: Sequence[Member], wall: float) -> None:
    k = sum(not m.failed_start for m in members)  # trained together (fused_jobs)
    for m in members:
        if (
            m.failed_start
            and (m.error or "").startswith("config error")
            and files.holds_record(m.run_dir)
        ):
            continue  # as a single run's config error leaves a dir holding a run as it was
        result = m.result if m.error is None else None
        own = wall + m.earlier_s  # as a single branch counts its trunk's time
        if result is not None:
            m.summary = outcome(result, own)[1]
        m.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            error = m.error or "the fused group stopped"
            # fused_jobs: trained with this many jobs, one process; rows_sent: not until
            # the launcher has sent them (`replay`)
            write_status(m.run_dir, result, own, error, fused_jobs=k, rows_sent=False)
        except files.WriteFailed as err:  # the other members' status still gets written
            log.error(f"error: {err}")
            m.error = m.error or f"error: {err}"


def _note(member: Member, level: int, message: str) -> None:
    """A member's log line: into its train.log when the launcher replays it; a warning
    also now, named by the member's job dir (from K members, `run diverged` or `interrupted
    in epoch 2` did not say whose)."""
    member.log_lines.append((level, message))
    if level > logging.INFO:  # warnings show now too, not only in the job's train.log
        log.log(level, f"{member.run_dir.name}: {message}")


def _shared(spec: RunSpec) -> tuple[torch.device, TensorData, int]:
    """What the group's members share (their key): the device, the data (loaded once for
    all) and the optimizer steps per epoch."""
    device = resolve_device(spec.trainer.device)
    data = load_data(spec.data)
    per_epoch = steps_per_epoch(data.n_train, spec.data["batch_size"], spec.trainer.accumulate)
    return device, data, per_epoch


def _start_member(
    m: Member, data: TensorData, device: torch.device, per_epoch: int
) -> tuple[RunSpec, Any, Any, Any, dict[str, Any] | None, str] | None:
    """Member m's own start, as a single run of it starts (`_build_member`), then its
    config.yaml (and a branch's trunk rows) written: its spec, model, optimizer, schedule,
    start state and config text. None when that start fails: m fails alone, with the
    error a single run of it records (runner/__main__.py), and the group goes on without
    it; nothing of it is written then but its status.json (`_write_status`)."""
    try:
        at = _branch_of(m)  # config.yaml then names a null branch_epoch's pick
        spec = run_spec(m.cfg)  # the member's validated config, typed
        model, optimizer, schedule, start = _build_member(spec, at, data, device, per_epoch)
        config_text = config_yaml(m.cfg, m.run_dir)
        if at is not None:  # its trunk's rows before the branch point, as its first rows
            branch.copy_trunk_rows(*at, m.run_dir)
    except ConfigError as err:
        m.error, m.failed_start = f"config error: {err}", True
    except files.WriteFailed as err:  # disk full, read-only: one line names the file
        m.error, m.failed_start = f"error: {err}", True
    except Exception as err:
        log.exception(f"a fused job failed to start ({m.run_dir}); the others go on")
        m.error, m.failed_start = repr(err), True
    else:
        return spec, model, optimizer, schedule, start, config_text
    log.error(f"{m.run_dir}: {m.error}; the other fused jobs go on")
    return None


def _build_member(
    spec: RunSpec,
    at: tuple[str, int] | None,
    data: TensorData,
    device: torch.device,
    per_epoch: int,
) -> tuple[Any, Any, Any, dict[str, Any] | None]:
    """The member's model, optimizer and scheduler built as a single run builds its own
    (runner/train/builders.py `build_member`: its threads, its seed -> the same init), a
    branch's (`at`: its trunk and epoch, else None) then loaded from its trunk's
    checkpoint as a single branch loads it. Returns also its start state (None: epoch 0)."""
    model, optimizer, schedule = build_member(spec, data, device)
    schedule = with_swa_lr(spec.trainer, schedule, spec.epochs)  # as build_run does
    # never stepped itself (the fused step reads its lr); a step without gradients
    # changes nothing and tells torch's scheduler the optimizer is in use (no warning)
    optimizer.step()
    start = None
    if at is not None:  # the trunk's weights and optimizer state, its own schedule there
        run = SimpleNamespace(model=model, optimizer=optimizer, scheduler=schedule, scaler=None)
        start = branch.start_state(*at, spec.data, run, per_epoch)
    return model, optimizer, schedule, start


def _stack(
    models: Sequence[torch.nn.Module], data: TensorData, device: torch.device
) -> tuple[TensorData, StackedNet | StackedGPT]:
    """The members' models stacked, and the data placed as the models read it."""
    if isinstance(models[0], GPT):  # runner/sweep/stacked_gpt.py
        net: StackedNet | StackedGPT = StackedGPT(list(models))
    else:
        net = StackedNet(list(models), sample_rank=len(data.image_shape))
    data = place(resize_images(data, getattr(models[0], "input_size", None)), device)
    return data, net


def _branch_of(m: Member) -> tuple[str, int] | None:
    """The member's trunk run dir and branch epoch, or None for a run from scratch. A
    branch is validated again here, as a single branch is at its own start: its trunk
    may have changed since the launcher checked it (a kept epoch removed), and then it
    fails with the single run's error (branch_epoch null: the pick is filled in)."""
    if m.cfg.get("branch") is None:
        return None
    validate(m.cfg)
    return str(m.cfg.branch), int(m.cfg.branch_epoch)


def _start_progress(starts: Sequence[dict[str, Any] | None]) -> list[checkpoint.Progress]:
    """Each member's loop progress: a branch's its trunk's at the branch point (every RNG
    set as its trunk left it, as a single branch restores them; nothing a fused step
    computes draws from them), else a fresh run's. All members start at one epoch and
    step (the group's key holds branch_epoch and what sets the steps per epoch)."""
    progress = [
        checkpoint.Progress()
        if s is None
        else checkpoint.restore(s, None, torch.Generator(), weights=False)
        for s in starts
    ]
    points = {(p.epoch, p.step) for p in progress}
    if len(points) > 1:
        raise ValueError(f"fused members start at different (epoch, step): {sorted(points)}")
    return progress


@torch.no_grad()
def _start_optimizer(
    fused: FusedOptimizer, net: StackedNet | StackedGPT, optimizers: Sequence[torch.optim.Optimizer]
) -> None:
    """The members' torch optimizer states (a branch's: its trunk's) stacked into the
    fused optimizer's, the inverse of `_member_state`; a member without a buffer that
    another has (SGD without momentum) gets zeros, which its step then ignores. Adam's
    bias correction counts the members' (one) step."""
    steps = set()
    for p, sources in enumerate(net.sources):
        own = [opt.state.get(q, {}) for opt, q in zip(optimizers, sources, strict=True)]
        steps |= {int(s["step"]) for s in own if "step" in s}
        param = fused.params[p]
        names = {n for s in own for n, v in s.items() if n != "step" and torch.is_tensor(v)}
        for name in sorted(names):
            fused.state[p][name] = torch.stack(
                [
                    net.as_member(p, s[name]) if name in s else torch.zeros_like(param[k])
                    for k, s in enumerate(own)
                ]
            ).contiguous()
    if len(steps) > 1:
        raise ValueError(f"fused members' optimizers are at different steps: {sorted(steps)}")
    fused.steps = steps.pop() if steps else 0


def _param_groups(
    net: StackedNet | StackedGPT, optimizers: Sequence[torch.optim.Optimizer]
) -> list[list[int]]:
    """groups[p][k]: which param group of member k's optimizer holds stacked param p."""
    group_of = [
        {id(q): i for i, g in enumerate(opt.param_groups) for q in g["params"]}
        for opt in optimizers
    ]
    return [[group_of[k][id(param)] for k, param in enumerate(sources)] for sources in net.sources]


def _member_state(
    i: int,
    net: StackedNet | StackedGPT,
    fused: FusedOptimizer,
    parts: dict[str, list],
    shuffle: torch.Generator,
    wandb_id: str | None,
    progress: Any,
    average: Averager | None = None,
) -> dict[str, Any]:
    """Member i as a single run's checkpoint (runner/io/checkpoint.py's format): its weights
    and optimizer state unstacked into its own model and torch optimizer, so that the
    ordinary runner can resume the job."""
    net.unstack_into(i)
    optimizer = parts["optimizers"][i]
    for p, sources in enumerate(net.sources):
        state, group = fused.state[p], optimizer.param_groups[fused.groups[p][i]]
        own = {name: net.as_member(p, buf[i]) for name, buf in state.items()}
        if fused.name == "sgd":
            if own and group["momentum"] != 0:
                optimizer.state[sources[i]] = own
        elif own:
            optimizer.state[sources[i]] = {"step": torch.tensor(float(fused.steps)), **own}
    run = SimpleNamespace(
        model=parts["models"][i], optimizer=optimizer, scheduler=parts["schedules"][i], scaler=None
    )
    # its rows reach W&B/TensorBoard only when the launcher replays the member: a member
    # resumed on its own before that sends them first (runner/run/train.py)
    state = checkpoint.snapshot(run, progress, shuffle, wandb_id, rows_sent=False)
    state["average"] = _member_average(i, net, average, parts["models"][i])
    return state


def _member_average(
    i: int, net: StackedNet | StackedGPT, average: Averager | None, model: torch.nn.Module
) -> dict[str, torch.Tensor] | None:
    """Member i's slice of the stacked averaged model, as the state_dict of a single run's
    AveragedModel of its own model (`n_averaged`, `module.<param>`): the ordinary runner
    resumes it. Fusable models have no buffers, so their parameters are all of it."""
    if average is None:
        return None
    names: dict[int, list[str]] = {}  # a tied weight (the GPT's head) under each of its names
    for name, q in model.state_dict(keep_vars=True).items():
        names.setdefault(id(q), []).append(name)
    stacked = average.model.module.stacked_params()
    state = {
        f"module.{name}": net.as_member(p, stacked[p][i].detach()).clone(
            memory_format=torch.contiguous_format
        )
        for p, sources in enumerate(net.sources)
        for name in names[id(sources[i])]
    }
    state["n_averaged"] = average.model.n_averaged.detach().clone()
    return state


@torch.no_grad()
def _start_average(
    average: Averager,
    net: StackedNet,
    models: Sequence[torch.nn.Module],
    starts: Sequence[dict[str, Any] | None],
) -> None:
    """Each branch's averaged model as its trunk left it (a single branch loads it, or its
    average would restart at the branch point) into its slice of the stacked one: the
    inverse of `_member_average`. Members share the count (one start epoch, one kind)."""
    stacked = average.model.module.stacked_params()
    counts = set()
    for k, (model, start) in enumerate(zip(models, starts, strict=True)):
        saved = None if start is None else start.get("average")
        if saved is None:
            continue
        names = {id(q): name for name, q in model.named_parameters()}
        for p, sources in enumerate(net.sources):
            own = saved[f"module.{names[id(sources[k])]}"]
            stacked[p][k].copy_(net.as_member(p, own))
        counts.add(int(saved["n_averaged"]))
    if len(counts) > 1:
        raise ValueError(f"fused members' averages hold different counts: {sorted(counts)}")
    if counts:
        average.model.n_averaged.fill_(counts.pop())


def _data_streams(
    members: Sequence[Member], starts: Sequence[dict[str, Any] | None]
) -> tuple[list[torch.Generator], int]:
    """The shuffle generators (a single run seeds its own with its seed, so members of one
    seed draw the same batches; a branch's stands where its trunk's stood at the branch
    point) and how many consecutive members read each one: members of a seed (and
    generator state) share one gathered batch when they split the group evenly (members
    are sorted by seed), else every member gets its own."""
    shuffles = [None if s is None else s["rng"]["shuffle"] for s in starts]
    keys = [
        (m.cfg.seed, None if g is None else g.numpy().tobytes())
        for m, g in zip(members, shuffles, strict=True)
    ]
    state = dict(zip(keys, shuffles, strict=True))
    distinct = list(dict.fromkeys(keys))
    per = len(keys) // len(distinct)
    if keys != [s for s in distinct for _ in range(per)]:
        distinct, per = keys, 1
    streams = []
    for key in distinct:
        generator = torch.Generator().manual_seed(key[0])
        if state[key] is not None:
            generator.set_state(state[key])
        streams.append(generator)
    return streams, per


def _fit(members: Sequence[Member], stop: Any, background: Background, cleanup: ExitStack) -> None:
    members = sorted(members, key=lambda m: m.cfg.seed)  # same seed, same batches: adjacent
    device, data, per_epoch = _shared(run_spec(members[0].cfg))  # the group's (its key)
    started = {id(m): s for m in members if (s := _start_member(m, data, device, per_epoch))}
    members = [m for m in members if id(m) in started]  # a member whose start failed: alone
    if not members:
        return
    specs, models, optimizers, schedules, starts, config_texts = (
        list(column) for column in zip(*(started[id(m)] for m in members), strict=True)
    )
    for m in members:
        if "wandb" in m.cfg.logger and m.cfg.logger.wandb.mode != "disabled":
            m.wandb_id = uuid.uuid4().hex[:8]  # W&B's own ids are 8 characters of [a-z0-9]
    first = specs[0]  # what the group shares (its key): read as a single run reads its own
    data, net = _stack(models, data, device)
    parts = {"models": models, "optimizers": optimizers, "schedules": schedules}
    k, epochs, batch_size = len(members), first.epochs, first.data["batch_size"]
    fused = FusedOptimizer(
        net.stacked_params(), optimizers, _param_groups(net, optimizers), first.optimizer["name"]
    )
    if any(starts):
        _start_optimizer(fused, net, optimizers)
    average = build_average(first.trainer, net, epochs)  # the group's (in its key)
    if average is not None and any(starts):
        _start_average(average, net, models, starts)
    loggers = [RunLogger(m.run_dir) for m in members]  # metrics.jsonl now; backends replayed
    for logger in loggers:
        cleanup.callback(logger.close_metrics)
    progress = _start_progress(starts)
    for m, p in zip(members, progress, strict=True):
        m.earlier_s = p.elapsed_s
    streams, per = _data_streams(members, starts)
    shuffles = [streams[i // per] for i in range(k)]  # member i's, for its checkpoints
    fingerprint = data_fingerprint(first.data, load_data(first.data))  # as a single run's
    tracks = []
    for i, m in enumerate(members):
        # member i as a single run's checkpoint, at the progress given; as a single run,
        # last.pt is on disk before the first batch (a job killed in its first epoch
        # resumes on its own), and the newest epoch is persisted however the loop ends
        snapshot = partial(
            _member_state, i, net, fused, parts, shuffles[i], m.wandb_id, average=average
        )
        tracks.append(
            start_track(
                specs[i].trainer,
                cleanup,
                optimizers[i],
                schedules[i],
                loggers[i],
                progress[i],
                snapshot,
                run_dir=m.run_dir,
                background=background,
                config_text=config_texts[i],
                data=fingerprint,
                new=True,
                say=partial(_note, m),
            )
        )
    for i, track in enumerate(tracks):  # a language model's rows add val/bpb, tokens/s, MFU
        track.tokens = token_stats(data, models[i], device)
    engine = Engine(
        tracks,
        epochs,
        step=progress[0].step,
        elapsed_s=max(p.elapsed_s for p in progress),  # a branch's: its trunk's so far
        note=f", fused x{k}",
        diverge_note="; the other fused jobs go on",
    )
    for m, spec in zip(members, specs, strict=True):
        _note(m, logging.INFO, f"fused with {k - 1} other job(s): {startup_line(spec, device)}")
    per_step = any(t.per_step for t in tracks)  # then the lrs are read before every step
    trainers = [spec.trainer for spec in specs]
    models = StackedModels(
        net, fused, data, streams, per, batch_size, device, per_step, engine, trainers, average
    )
    engine.run(
        models,
        start=progress[0].epoch,
        stop=stop,
        bar_mode=first.trainer.progress,
        desc=f"fused x{k} epoch {{epoch}}",
    )
    _collect(members, tracks)
    if stop.signum is not None:
        raise SystemExit(128 + stop.signum)
    for i in engine.active:
        best = tracks[i].progress.best_val_acc
        _note(
            members[i],
            logging.INFO,
            f"completed: best val/acc={best:.4f}; outputs in {members[i].run_dir}",
        )


class StackedModels:
    """The K stacked models' side of the epoch engine (runner/train/engine.py): member i's
    batch is its seed's permutation's slice, gathered as [D, B, ...] (D = K / per data
    streams; members i*per .. i*per+per-1 read stream i), one fused optimizer step for all."""

    def __init__(
        self,
        net: StackedNet | StackedGPT,
        fused: FusedOptimizer,
        data: TensorData,
        streams: list[torch.Generator],
        per: int,
        batch_size: int,
        device: torch.device,
        any_per_step: bool,
        engine: Engine,
        trainers: Sequence[Any],
        average: Averager | None = None,
    ) -> None:
        self.average = average  # trainer.average over the stacked net: the group's
        self.net, self.fused, self.data, self.streams, self.per = net, fused, data, streams, per
        self.batch_size, self.device, self.k = batch_size, device, net.k
        self.n_train = data.y_train.shape[0]
        self.any_per_step = any_per_step  # then the fused step reads the lrs before every step
        self.engine = engine  # which members still train: the epoch's summary line
        self.val_acc: list[float] = []
        self.loss_sum = self.correct = self.norm_sum = torch.zeros(())
        self.steps = 0  # optimizer steps this epoch: train/grad_norm is their mean
        # the trainer knobs: accumulate and label_smoothing are the group's (in its key),
        # gradient clipping each member's own (clip_members: member k's slice of each grad)
        self.accumulate = trainers[0].accumulate
        self.label_smoothing = trainers[0].label_smoothing
        self.micro, self.batch_size = batch_size, batch_size * self.accumulate  # per step
        self.steps_per_epoch = steps_per_epoch(self.n_train, batch_size, self.accumulate)
        self.val_batch = val_batch_size(data, batch_size)  # a single run's (its windows' for an LM)
        self.clip_norms = [t.grad_clip_norm for t in trainers]
        self.clip_values = [t.grad_clip_value for t in trainers]
        self.clips = [
            a is not None or b is not None
            for a, b in zip(self.clip_norms, self.clip_values, strict=True)
        ]

    def batches(self, epoch: int) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
        """The epoch's optimizer steps, trainer.accumulate batches each (runner/train/steps.py
        `groups`: the epoch's last step takes the batches left)."""
        n, device = self.n_train, self.device
        self.loss_sum = torch.zeros(self.k, device=device)
        self.correct = torch.zeros(self.k, device=device)
        self.norm_sum, self.steps = torch.zeros(self.k, device=device), 0
        data, micro = self.data, self.micro
        if is_text(data):  # data=text: windows at offsets drawn per batch, as a single run's
            windows = member_windows(data, micro, self.streams, self.per, device)
            return groups(windows, self.accumulate)
        orders = torch.stack([torch.randperm(n, generator=g) for g in self.streams]).to(device)

        def each() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            for start in range(0, n, micro):
                idx = orders[:, start : start + micro]
                yield data.x_train[idx], data.y_train[idx].repeat_interleave(self.per, 0)

        return groups(each(), self.accumulate)

    def train_batch(
        self, group: list[tuple[torch.Tensor, torch.Tensor]]
    ) -> Callable[[], list[float]]:
        """One fused optimizer step on the group's micro-batches, each one's loss weighted
        by its share of the step's samples as a single run weighs it (train.py)."""
        if self.any_per_step:
            self.fused.refresh()  # the lrs (and momenta) the schedules set after the last step
        self.fused.zero_grad()
        total = sum(y.shape[1] for _, y in group)
        step_loss = None
        for x, y in group:
            logits = self.net(x)
            loss = F.cross_entropy(  # a language model's: one prediction per token
                logits.flatten(0, -2),
                y.flatten(),
                reduction="none",
                label_smoothing=self.label_smoothing,
            )
            loss = loss.view(self.k, -1).mean(1)  # each member's mean over its own batch
            weight = y.shape[1] / total
            # members share no weights: each gets its own gradient
            (loss.sum() if weight == 1.0 else loss.sum() * weight).backward()
            loss = loss.detach()
            self.loss_sum += loss * y.shape[1]
            self.correct += member_hits(logits.detach(), y)
            step_loss = loss * weight if step_loss is None else step_loss + loss * weight
        if any(self.clips):
            params = self.fused.params
            self.norm_sum += clip_members(params, self.clip_norms, self.clip_values)
        self.fused.step()
        if self.average is not None:
            self.average.after_step()  # ema: every optimizer step
        self.steps += 1
        assert step_loss is not None
        return step_loss.tolist

    def train_metrics(self) -> tuple[list[float], list[float]]:
        # sums on the device, divided on the host in double precision, as train.py does
        n = self.n_train
        return [v / n for v in self.loss_sum.tolist()], [v / n for v in self.correct.tolist()]

    def grad_norms(self) -> list[float | None]:
        """Each clipping member's mean gradient norm before clipping over the epoch's steps."""
        if not any(self.clips):
            return [None] * self.k
        means = [v / max(self.steps, 1) for v in self.norm_sum.tolist()]
        return [m if on else None for m, on in zip(means, self.clips, strict=True)]

    def validate(self) -> tuple[list[float], list[float]]:
        """Every member on the same val batches: logits [K, N, classes]."""
        data, net = self.data, self.net
        net.eval()
        try:
            val = batches(data.x_val, data.y_val, self.val_batch, device=self.device)
            losses, self.val_acc = evaluate(net, val)
            return losses, self.val_acc
        finally:
            net.train()

    def validate_average(self, epoch: int) -> list[tuple[float, float] | None]:
        """The stacked averaged model updated at the epoch's end (swa), then every member's
        slice of it on the val batches (fusable models have no BatchNorm to recalibrate)."""
        average = self.average
        if average is None:
            return [None] * self.k
        average.end_epoch(epoch)
        if not average.ready:
            return [None] * self.k
        val = batches(self.data.x_val, self.data.y_val, self.val_batch, device=self.device)
        losses, accs = evaluate(average.model, val)
        return list(zip(losses, accs, strict=True))

    def stop_member(self, i: int) -> None:
        self.fused.freeze(i)  # weights and state zeroed, lr 0: its NaNs never spread

    def epoch_done(self, epoch: int) -> None:
        """The lrs the schedules set for the next epoch, and the group's line for the epoch
        (each member's own line went to its train.log)."""
        self.fused.refresh()
        engine = self.engine
        accs = [self.val_acc[i] for i in engine.active]
        log.info(
            f"fused epoch {epoch:>3}/{engine.epochs}: {len(engine.active)}/"
            f"{len(engine.tracks)} jobs training"
            + (f", val/acc {min(accs):.3f}..{max(accs):.3f}" if accs else "")
            + f" ({engine.epoch_s:.2f}s)"
        )


def member_hits(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each member's correct predictions counted in samples, as a single run's `hits`: a
    classifier's right labels (y [K, B]); a language model's windows (y [K, B, T]) each
    counted as the share of its tokens whose target scored highest."""
    if y.dim() > 2:
        return top_is_target(logits, y).float().mean(-1).sum(1)
    return (logits.argmax(-1) == y).sum(1)


def _collect(members: Sequence[Member], tracks: Sequence[Track]) -> None:
    for m, t in zip(members, tracks, strict=True):
        m.result = t.result


def replay(member: Member) -> float:
    """The job's own part, run inside Hydra's job context (its train.log, .hydra/, callbacks):
    its log lines, then its rows and summary sent to W&B/TensorBoard as a single run
    sends them. Returns what the task function returns: the best val accuracy."""
    for level, line in member.log_lines:
        log.log(level, line)
    if member.refused:  # as a single job of a sweep refused its dir (runner/__main__.py)
        log.error(f"job refused, pending (not a loss): {member.error}")
        return 0.0
    if member.error is not None or member.result is None:
        when = "to start " if member.failed_start else ""  # then the others trained without it
        log.error(f"job failed {when}in its fused group: {member.error}")
        return 0.0  # the worst objective, as a failed single job returns (runner/__main__.py)
    send_rows(
        member.cfg,
        member.run_dir,
        member.overrides,
        member.sweep_name,
        member.wandb_id,
        member.summary,
    )
    return member.result.best_val_acc
