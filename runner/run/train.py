"""The training loop: build from config, then per epoch train -> validate -> scheduler.step().

Read top to bottom; each phase is marked. The scheduler steps once per epoch,
after the batch loop, exactly as the lecture teaches, and the lr logged for an
epoch is the one its batches used.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from runner.config.schema import RunSpec, Trainer, run_spec, typed_run, yaml_text
from runner.data.fingerprint import absolute_roots, describe, fingerprint
from runner.data.sets import augment as augment_batch
from runner.data.sets import batches, load_data, steps_per_epoch, still_held
from runner.data.stream import loaders_for
from runner.dist.ddp import agreed_stop, check_shares, setup, teardown
from runner.io import checkpoint, files
from runner.io.background import Background
from runner.io.loggers import RunLogger, open_logger
from runner.run import branch
from runner.run.check import Checked, check_found_lr, validate
from runner.run.rundir import RUN_DIR_KEY, SWEEP_DIR_KEY, Start, decide, finished, keep_rows_before
from runner.train.builders import Run, build_run, own_threads
from runner.train.engine import (
    Engine,
    Result,
    Track,
    lm_outcome,
    say_to_log,
    scores,
    track_for,
)
from runner.train.lm import token_stats, val_batch_size
from runner.train.range_test import bounds_from_lr, find_lr
from runner.train.steps import (
    evaluate,
    groups,
    has_batch_norm,
    hits,
    recalibrate_bn,
    schedule_free,
    train_step,
    train_weights,
)
from runner.train.stopping import StopFlag, stop_on_signals
from schedulers.binder import label, plain

log = logging.getLogger("schedlab")


def outcome(result: Result, wall_s: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """How a run ended: its status.json record and its W&B summary. The summary's best is
    the monitored metric's too (best/val_loss for a language model: trainer.monitor auto)."""
    status = {
        "status": result.status,
        "best_val_acc": result.best_val_acc,
        "epochs_done": result.epochs_done,
        "wall_time_s": wall_s,
    }
    summary = {
        "status": result.status,
        "diverged": result.status == "diverged",
        "best/val_acc": result.best_val_acc,
        "time/total_s": wall_s,
    }
    if result.best is not None:
        name, value = result.best
        status.update(monitor=name, best_monitored=value)
        summary["best/" + name.replace("/", "_")] = value
    return status, summary


def stored_best(status: dict[str, Any]) -> tuple[str, float] | None:
    """Result.best from a status.json record (`outcome`); None where it has none."""
    return (status["monitor"], status["best_monitored"]) if "monitor" in status else None


def write_status(
    run_dir: Path, result: Result | None, wall_s: float, error: str | None = None, **extra: Any
) -> None:
    """status.json: how the run ended (`outcome`) and what its writer adds (a single run:
    its session and data; a fused member: its group's size), or `failed` with the `error`
    when it has no result. One writer for single runs and fused members, so that the
    report and the next run read the same record from both."""
    if result is None:
        status = {"status": "failed", "error": error}
    else:
        status = {**outcome(result, wall_s)[0], **extra}
    files.write_json_atomic(run_dir / "status.json", status)


def config_yaml(cfg: DictConfig | dict[str, Any], run_dir: Path | None = None) -> str:
    """The run's config.yaml text (kept in each checkpoint too), written into run_dir when
    given: each fused member's. `cfg`: the config, or its resolved plain values (the same
    text)."""
    return write_config(yaml_text(cfg), run_dir)


def write_config(text: str, run_dir: Path | None) -> str:
    """config.yaml's `text` written into run_dir when given (a new single run's, each fused
    member's); the text."""
    if run_dir is not None:
        files.write_text_atomic(run_dir / "config.yaml", text)
    return text


def start_track(
    trainer: Trainer,
    held: ExitStack,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    logger: RunLogger,
    progress: checkpoint.Progress,
    snapshot: Callable[[checkpoint.Progress], dict[str, Any]],
    *,
    run_dir: Path | None,
    background: Background | None,
    config_text: str | None,
    data: dict[str, Any] | None,
    new: bool,
    session: checkpoint.Session | None = None,
    say: Callable[[int, str], None] = say_to_log,
) -> Track:
    """A run's Track, its checkpointer held in `held` until the loop ends: a single run's
    (`fit`) and each fused member's (runner/sweep/fused.py). A `new` run's last.pt is on
    disk before its first batch (one killed in its first epoch resumes instead of starting
    over); the newest epoch is persisted however the loop ends."""
    saver = held.enter_context(
        checkpoint.checkpointer(
            run_dir if trainer.checkpoint else None,
            trainer.checkpoint_interval_s,
            background,
            config=config_text,
            data=data,
            session=session,
            first=partial(snapshot, progress) if new else None,
            keep_epochs=trainer.keep_epochs,
            save_best=trainer.save_best,
        )
    )
    return track_for(trainer, optimizer, scheduler, logger, progress, snapshot, saver, say)


def startup_line(spec: RunSpec, device: torch.device) -> str:
    """What trains, where, how: a single run's first log line, and each fused member's
    (runner/sweep/fused.py, after saying it is fused)."""
    names = (label(spec.model), label(spec.optimizer), label(spec.scheduler))
    return start_line(names, spec.data["name"], device, spec.optimizer["lr"], spec.epochs)


def start_line(
    names: tuple[str, str, str], data: str, device: torch.device, lr: Any, epochs: int
) -> str:
    """`startup_line` of the model's, optimizer's and scheduler's names (`label`), read
    where a single run resolves its final config, so that nothing reads its nodes again."""
    model, optimizer, scheduler = names
    return (
        f"{model} on {data} ({device}), {optimizer} lr={lr}, scheduler={scheduler}, {epochs} epochs"
    )


def send_rows(
    cfg: DictConfig,
    run_dir: Path,
    overrides: Sequence[str],
    sweep_name: str | None,
    wandb_id: str | None,
    summary: dict[str, Any],
) -> None:
    """A run's metrics.jsonl rows and summary to its W&B/TensorBoard after it trained: a
    fused member's (runner/sweep/fused.py `replay`). Its status.json then says so
    (`rows_sent`): a sweep stopped while its jobs were being sent leaves the others
    `rows_sent: false`, and the same command again sends theirs (`_train`)."""
    config = plain(cfg)
    rows = files.read_jsonl(run_dir / "metrics.jsonl")
    with open_logger(cfg.logger, run_dir, config, list(overrides), sweep_name, wandb_id) as logger:
        logger.resend(rows)  # metrics.jsonl is already written
        logger.summary(summary)
    status = files.read_json(run_dir / "status.json")
    if status is not None and status.get("rows_sent") is False:
        files.write_json_atomic(run_dir / "status.json", {**status, "rows_sent": True})


def _send_held_rows(
    cfg: DictConfig, start: Start, overrides: Sequence[str], sweep_name: str | None
) -> None:
    """A complete run whose rows never all reached its backends (status.json `rows_sent`
    false: a fused member whose sweep stopped before it was sent) sends them now, instead
    of only saying it is complete."""
    status = files.read_json(start.run_dir / "status.json")
    if status is None or status.get("rows_sent") is not False or start.state is None:
        return
    log.info(
        "trained in a fused group whose sweep stopped before this job's rows all "
        "reached W&B/TensorBoard: sending them now"
    )
    result = Result(
        status["status"],
        status.get("best_val_acc", 0.0),
        status["epochs_done"],
        best=stored_best(status),
    )
    _, summary = outcome(result, status.get("wall_time_s", 0.0))
    send_rows(cfg, start.run_dir, overrides, sweep_name, start.state.get("wandb_id"), summary)


def fit(
    spec: RunSpec,
    run: Run,
    logger: RunLogger,
    *,
    ckpt_dir: Path | None = None,
    start: dict[str, Any] | None = None,
    stop: StopFlag | None = None,
    background: Background | None = None,
    config_text: str | None = None,
    session: checkpoint.Session | None = None,
    data: dict[str, Any] | None = None,
    weights_loaded: bool = False,
) -> Result:
    """Train from epoch 0, or from the checkpoint `start` (its weights already in `run` when
    `weights_loaded`); checkpoint into ckpt_dir if given (written on `background`'s thread
    when given). `spec`: the run's validated, typed config (runner/config/schema.py).
    `config_text`: the run's config.yaml text, kept in every checkpoint (made from `spec`
    when not given; the CLI passes the text it wrote). `session`: this process, named in
    its checkpoints. `data`: the fingerprint of its data, in them too."""
    shuffle = torch.Generator().manual_seed(spec.seed)  # data order: its own stream, seeded
    progress = (
        checkpoint.restore(start, run, shuffle, weights=not weights_loaded)
        if start
        else checkpoint.Progress()
    )
    if config_text is None and ckpt_dir is not None and spec.trainer.checkpoint:
        config_text = OmegaConf.to_yaml(dataclasses.asdict(spec))

    def snapshot(p: checkpoint.Progress) -> dict[str, Any]:
        # a schedule-free optimizer's: at its eval weights, inside the engine's window
        return checkpoint.snapshot(run, p, shuffle, logger.run_id)

    with ExitStack() as held:
        track = start_track(
            spec.trainer,
            held,
            run.optimizer,
            run.scheduler,
            logger,
            progress,
            snapshot,
            run_dir=ckpt_dir,
            background=background,
            config_text=config_text,
            data=data,
            new=start is None or start.get("branched", False),  # a branch's start: last.pt now
            session=session,
        )
        track.tokens = token_stats(run.data, run.model, run.device, run.dist.world)
        engine = Engine([track], spec.epochs, step=progress.step, elapsed_s=progress.elapsed_s)
        engine.run(
            SingleModel(spec, run, shuffle),
            start=progress.epoch,
            stop=agreed_stop(stop or StopFlag(), run.dist),  # under DDP: every rank stops together
            bar_mode=spec.trainer.progress,
            desc="epoch {epoch}/{epochs}",
        )
    assert track.result is not None
    return track.result


class SingleModel:
    """One model's side of the epoch engine (runner/train/engine.py): its batches (this
    rank's share of each under DDP) in groups of trainer.accumulate, the training step, the
    epoch's sums, validation."""

    def __init__(self, spec: RunSpec, run: Run, shuffle: torch.Generator) -> None:
        self.run, self.shuffle = run, shuffle
        trainer, micro = spec.trainer, spec.data["batch_size"]
        self.accumulate = trainer.accumulate
        self.micro, self.batch_size = micro, micro * self.accumulate  # per optimizer step
        self.augment = spec.data.get("augment", False)  # only image sets that have the key
        self.n_train = run.data.n_train
        self.steps_per_epoch = steps_per_epoch(self.n_train, micro, self.accumulate)
        self.val_batch_size = val_batch_size(run.data, micro)  # no gradients: larger
        self.knobs = {
            "params": [p for g in run.optimizer.param_groups for p in g["params"]],
            "clip_norm": trainer.grad_clip_norm,
            "clip_value": trainer.grad_clip_value,
            "label_smoothing": trainer.label_smoothing,
            # DDP: micro-batches that do not step keep their gradients on the rank
            "no_sync": getattr(run.forward, "no_sync", None) if self.accumulate > 1 else None,
        }
        self.loss_sum = self.correct = self.norm_sum = torch.zeros(())
        self.steps = 0  # optimizer steps this epoch: train/grad_norm is their mean
        self.seed = spec.seed
        self.recalibrate = bn_batches(trainer, run)
        self.average = run.average  # trainer.average's averaged model, or None
        # data=dataset not held in memory: DataLoaders (runner/data/stream.py), else None;
        # under DDP each rank's loader fetches only its share of each batch
        self.stream = loaders_for(
            run.data,
            micro,
            spec.seed,
            run.device,
            share=(run.dist.rank, run.dist.world) if run.dist.active else (0, 1),
            dataset=spec.data.get("name") == "dataset",
        )

    def batches(self, epoch: int) -> Iterator[list[tuple[torch.Tensor, ...]]]:
        """The epoch's batches, trainer.accumulate of them per optimizer step."""
        run = self.run
        run.model.train()
        train_weights(run.optimizer)  # a schedule-free optimizer: the point gradients are taken at
        # loss/acc summed on the device: no host sync per batch
        self.loss_sum = torch.zeros((), device=run.device)
        self.correct = torch.zeros((), device=run.device)
        self.steps = 0
        if self.knobs["clip_norm"] is not None or self.knobs["clip_value"] is not None:
            self.norm_sum = torch.zeros((), device=run.device)  # read only when clipping
        if self.stream is not None:  # the same order, drawn from the same generator
            return groups(self.stream.train(epoch, self.shuffle), self.accumulate)
        data = run.data
        return groups(
            batches(data.x_train, data.y_train, self.micro, self.shuffle, run.device),
            self.accumulate,
        )

    def share(self, batch: tuple[Any, ...]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(x, y, n): this rank's part of a global batch of n samples. `batch`: (x, y) in
        memory, the global batch; (x, y, n) streamed, this rank's share already (the loader
        fetched only it)."""
        x, y = batch[:2]
        if self.augment:
            x = augment_batch(x, self.shuffle)
        dist = self.run.dist
        if not dist.active:
            return x, y, y.shape[0]
        if self.stream is None:
            return x[dist.rank :: dist.world], y[dist.rank :: dist.world], y.shape[0]
        return x, y, batch[2]

    def train_batch(self, group: list[tuple[Any, ...]]) -> Callable[[], list[float]]:
        """One optimizer step on `group`'s micro-batches (`_train_group`; one batch, as
        trainer.accumulate 1 gives every step, `_train_one`)."""
        return self._train_one(group[0]) if len(group) == 1 else self._train_group(group)

    def _train_group(self, group: list[tuple[Any, ...]]) -> Callable[[], list[float]]:
        """One optimizer step on `group`'s micro-batches. Each one's loss is weighted by its
        share of the group's samples (under DDP: this rank's share, times the world size,
        which DDP's average of the ranks' gradients divides out again)."""
        run, world = self.run, self.run.dist.world
        parts = [self.share(batch) for batch in group]
        total = sum(n for _, _, n in parts)
        micro = [(run.prepare(x), y, world * y.shape[0] / total) for x, y, _ in parts]
        out, norm = train_step(
            run.forward, run.optimizer, micro, run.amp_ctx, run.scaler, **self.knobs
        )
        sums = []  # each micro-batch's loss x its samples (on this rank)
        for (loss, logits), (_, y, _) in zip(out, parts, strict=True):
            sums.append(loss * y.shape[0])
            self.loss_sum += sums[-1]
            self.correct += hits(logits, y)
        if norm is not None:
            self.norm_sum += norm
        if self.average is not None:
            self.average.after_step()  # ema: every optimizer step
        self.steps += 1
        if world > 1:  # the step's mean over the global batch, every rank's samples
            return self._global_loss(sum(sums), total)
        if len(out) == 1:  # most runs: the batch's own loss
            loss = out[0][0]
            return lambda: [loss.item()]
        n = sum(y.shape[0] for _, y, _ in parts)
        return lambda: [sum(sums).item() / n]  # the step's mean over its samples

    def _train_one(self, batch: tuple[Any, ...]) -> Callable[[], list[float]]:
        """`_train_group` of a one-batch group: the same ops in the same order, without the
        lists, zips and sums over micro-batches (at the digits MLP's 0.4 ms step, the
        runner's step cost ~20 µs more than a hand-written one, most of it that Python)."""
        run = self.run
        x, y, n = self.share(batch)
        micro = ((run.prepare(x), y, run.dist.world * y.shape[0] / n),)
        out, norm = train_step(
            run.forward, run.optimizer, micro, run.amp_ctx, run.scaler, **self.knobs
        )
        loss, logits = out[0]
        self.loss_sum += loss * y.shape[0]
        self.correct += hits(logits, y)  # a classifier's or a language model's (per token)
        if norm is not None:
            self.norm_sum += norm
        if self.average is not None:
            self.average.after_step()  # ema: every optimizer step
        self.steps += 1
        if run.dist.world > 1:
            return self._global_loss(loss * y.shape[0], n)
        return lambda: [loss.item()]

    def _global_loss(self, local_sum: torch.Tensor, n: int) -> Callable[[], list[float]]:
        """Under DDP, the step's loss as one process on the global batch of n samples gets it
        (train/step_loss): the ranks' loss sums all-reduced when a step row reads it, as
        train/loss's epoch sums are (rank 0's own share alone is another number). Every rank
        reads the same steps' losses (trainer.log_every_n_steps), so all of them join."""
        dist = self.run.dist

        def read() -> list[float]:
            total = local_sum.detach().clone()
            dist.all_reduce_sum(total)
            return [total.item() / n]

        return read

    def train_metrics(self) -> tuple[list[float], list[float]]:
        # every rank logs and schedules on the same value
        self.run.dist.all_reduce_sum(self.loss_sum, self.correct)
        return [self.loss_sum.item() / self.n_train], [self.correct.item() / self.n_train]

    def grad_norms(self) -> list[float | None]:
        """The mean over the epoch's optimizer steps of the gradient norm before clipping,
        when clipping is on (equal on every rank: DDP's gradients are all-reduced)."""
        if self.knobs["clip_norm"] is None and self.knobs["clip_value"] is None:
            return [None]
        return [self.norm_sum.item() / max(self.steps, 1)]

    def validate(self) -> tuple[list[float], list[float]]:
        """Called inside the engine's eval_weights window: a schedule-free optimizer's
        eval weights are in the model."""
        run = self.run
        if self.recalibrate:
            self.recalibrate_bn()
        run.forward.eval()  # back to train mode in the next epoch's `batches`
        if self.stream is not None:
            val = self.stream.val()
        else:
            val = batches(run.data.x_val, run.data.y_val, self.val_batch_size, device=run.device)
        return evaluate(self.val_forward, val)

    def recalibrate_bn(self) -> None:
        """trainer.bn_recalibrate_batches: the BatchNorm statistics of the eval weights, from
        the first N training batches of epoch 0's order (a generator of their own, seeded
        with `seed`: training's data order and every RNG are untouched, so a resume stays
        exact), unaugmented. Under DDP every rank computes them from the same global
        batches in memory; streamed, each from its share, then the ranks' mean."""
        run = self.run
        order = torch.Generator().manual_seed(self.seed)
        if self.stream is not None:
            xs: Iterator[torch.Tensor] = (b[0] for b in self.stream.train(0, order))
        else:
            data = run.data
            xs = (x for x, _ in batches(data.x_train, data.y_train, self.micro, order, run.device))

        def forward(x: torch.Tensor) -> torch.Tensor:
            with run.amp_ctx:
                return run.model(run.prepare(x))

        recalibrate_bn(run.model, islice(xs, self.recalibrate), forward)
        if self.stream is not None and run.dist.active:
            mean_bn_stats(run.model, run.dist)

    def val_forward(self, x: torch.Tensor) -> torch.Tensor:
        run = self.run
        with run.amp_ctx:
            return run.forward(run.prepare(x))

    def validate_average(self, epoch: int) -> list[tuple[float, float] | None]:
        """The averaged model (trainer.average) updated at the epoch's end (swa), its
        BatchNorm statistics recomputed over the training split, then validated."""
        average = self.average
        if average is None:
            return [None]
        average.end_epoch(epoch)
        if not average.ready:
            return [None]
        average.recalibrate(self.train_inputs(epoch))
        run, model = self.run, average.model

        def forward(x: torch.Tensor) -> torch.Tensor:
            with run.amp_ctx:
                return model(run.prepare(x))

        if self.stream is not None:
            val = self.stream.val()
        else:
            val = batches(run.data.x_val, run.data.y_val, self.val_batch_size, device=run.device)
        losses, accs = evaluate(forward, val)
        return [(losses[0], accs[0])]

    def train_inputs(self, epoch: int) -> Iterator[torch.Tensor]:
        """The training split's inputs in order, in batches of data.batch_size, without
        augmentation and without drawing from any RNG (the data order's generator
        included): what update_bn reads. Under DDP, streamed data is this rank's share."""
        run = self.run
        if self.stream is not None:
            xs = (x for x, _ in self.stream.train_in_order(epoch))
        else:
            xs = (x for x, _ in batches(run.data.x_train, run.data.y_train, self.micro))
        return (run.prepare(x.to(run.device)) for x in xs)

    def stop_member(self, i: int) -> None:
        pass  # a single run ends with its only member (the engine has no one left)

    def epoch_done(self, epoch: int) -> None:
        pass


def bn_batches(trainer: Trainer, run: Run) -> int:
    """How many batches recompute the BatchNorm statistics before each validation: the
    trainer's bn_recalibrate_batches when a schedule-free optimizer trains a model with
    BatchNorm (its eval weights are not the weights the running statistics were collected
    at), else 0."""
    n = trainer.bn_recalibrate_batches
    return n if n and schedule_free(run.optimizer) and has_batch_norm(run.model) else 0


def mean_bn_stats(model: torch.nn.Module, dist: Any) -> None:
    """Every rank's BatchNorm running statistics replaced by the ranks' mean: validation
    (each rank's, of the whole val split) then gives every rank the same metrics."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    stats = [t for m in norms for t in (m.running_mean, m.running_var) if t is not None]
    dist.all_reduce_sum(*stats)
    for t in stats:
        t.div_(dist.world)


def use_range_test(cfg: DictConfig, run_dir: Path) -> float:
    """optimizer.lr=find: run the LR range test and write its suggestion into the config,
    which the run then trains with (what it decides is checked once the config is resolved:
    `found_lr_checked`); returns it.

    onecycle/cyclic get it as max_lr (their max_lr/base_lr are reset to null, which
    means optimizer.lr and optimizer.lr / 10, Smith's bounds)."""
    lr, _ = find_lr(run_spec(cfg), run_dir / "lr_find")
    cfg.optimizer.lr = float(lr)
    for key in bounds_from_lr(cfg.scheduler):
        cfg.scheduler[key] = None
    return lr


def found_lr_checked(config: dict[str, Any], checked: Checked, lr: float) -> Checked:
    """The range test's lr in the final config's plain values: what it decides checked
    again (the schedule against the lr it will really get; the rest was checked at
    start-up), then said; returned with it."""
    found = check_found_lr(config, checked)
    log.info(f"lr range test chose optimizer.lr={lr:.4g} ({config['lr_find']['suggestion']})")
    return found


def train(
    cfg: DictConfig,
    run_dir: Path,
    overrides: Sequence[str] = (),
    sweep_name: str | None = None,
    stop: StopFlag | None = None,
) -> Result:
    """Validate, build, fit, and leave metrics.jsonl, config.yaml, checkpoints and
    status.json in run_dir (under torchrun or in a multi-task submitit job: rank 0 writes,
    every rank trains).

    `overrides` are the ones the run was given (Hydra's task overrides): with resume= they
    are applied to the saved config or refused (apply_resume_overrides). `stop` is the flag
    of signal handlers the caller installed (the CLI: before Hydra starts); without one,
    handlers are installed for the whole run, start-up included."""
    dist = setup(cfg.trainer.strategy)
    if not dist.is_main:
        quiet_rank(Path(run_dir))
    elif dist.active:  # train.log says that the run was one over several processes
        backend = torch.distributed.get_backend()
        log.info(f"DDP: {dist.world} process(es), {backend}; rank 0 writes the run dir")
    ended = False  # alike on every rank: completed, diverged, or stopped on the agreed batch
    try:
        with own_threads():  # trainer.num_threads: this job's, not the next job's of a sweep
            if stop is not None:
                result = _train(cfg, Path(run_dir), overrides, sweep_name, dist, stop)
            else:
                with stop_on_signals() as own:
                    result = _train(cfg, Path(run_dir), overrides, sweep_name, dist, own)
                if result.status == "interrupted":  # own.chain: set once handlers are restored
                    result = dataclasses.replace(result, chain=own.chain)
        ended = True
        return result
    finally:
        teardown(dist, wait_for_peers=ended)


def quiet_rank(run_dir: Path) -> None:
    """A rank other than 0 logs only warnings, and none into the run dir: the launcher made
    every task a Hydra job with its own handler on <run dir>/train.log (submitit's tasks;
    torchrun's ranks share one dir), which would interleave every rank's lines with rank
    0's. Its warnings still reach its own console, stdout (submitit: the task's log)."""
    logging.getLogger("schedlab").setLevel(logging.WARNING)
    root = logging.getLogger()
    for handler in list(root.handlers):
        name = getattr(handler, "baseFilename", None)
        if name is not None and Path(name).resolve().is_relative_to(run_dir.resolve()):
            root.removeHandler(handler)
            handler.close()


def _interrupted(signum: int, state: dict[str, Any] | None) -> Result:
    """A signal came during start-up: no epoch ran in this process."""
    progress = state["progress"] if state else {}
    log.warning(f"{signal_name(signum)} during start-up: stopped before the first epoch")
    return Result(
        "interrupted", progress.get("best_val_acc", 0.0), progress.get("epoch", 0), signum
    )


def _stopped(run_dir: Path, dist: Any, signum: int, state: dict[str, Any] | None) -> Result:
    """A signal came during start-up, before the loggers: status.json says `interrupted`
    (and keeps the session that ended cleanly before: nothing was logged since)."""
    result = _interrupted(signum, state)
    if dist.is_main:
        before = files.read_json(run_dir / "status.json") or {}
        kept = {"session": before["session"]} if "session" in before else {}
        write_status(run_dir, result, 0.0, **kept)
    return result


def signal_name(signum: int | None) -> str:
    try:
        return signal.Signals(signum or 0).name
    except ValueError:
        return f"signal {signum}"


def _train(
    cfg: DictConfig,
    run_dir: Path,
    overrides: Sequence[str],
    sweep_name: str | None,
    dist: Any,
    stop: StopFlag,
) -> Result:
    checked = None
    if not cfg.resume:
        if made := absolute_roots(cfg):  # config.yaml names the data read, from any cwd
            log.info(f"data paths resolved against {Path.cwd()}: {', '.join(made)}")
        checked = validate(cfg)  # before anything is built or written (the CLI's, if it did)
    with ExitStack() as held:
        # Rank 0 alone reads the run dir and decides (new run, resume, nothing to do, or a
        # refusal), holding its lock, before anything is written there; every other rank
        # takes that decision and the last.pt state rank 0 loaded, so that a requeued
        # multi-task job resumes all ranks from the same checkpoint.
        dir_key = RUN_DIR_KEY if sweep_name is None else SWEEP_DIR_KEY
        start = dist.from_main(lambda: decide(cfg, run_dir, overrides, dist, held, dir_key))
        if start.done is not None:
            if dist.is_main:
                _send_held_rows(start.cfg or cfg, start, overrides, sweep_name)
            return start.done
        if start.cfg is not None:
            cfg, checked = start.cfg, start.checked
        assert checked is not None
        check_shares(checked.n_train, cfg.data.batch_size, dist)  # every rank alike
        return _run(
            cfg,
            checked,
            start.run_dir,
            overrides,
            sweep_name,
            dist,
            stop,
            start.resuming,
            start.state,
            start.changes,
        )


def _run(
    cfg: DictConfig,
    checked: Checked,
    run_dir: Path,
    overrides: Sequence[str],
    sweep_name: str | None,
    dist: Any,
    stop: StopFlag,
    resuming: bool,
    state: dict[str, Any] | None,
    changes: list[str],
) -> Result:
    """Start-up, as downward steps: the final config (the range test's lr; resolved once,
    typed), the build, where training starts (`_start_state`: a branch's trunk epoch, or a
    resume's checkpoint), then fit (`_fit_and_record`). A signal during start-up is looked
    for between its steps. Under DDP the ranks agree there (every rank
    asks at the same points, runner/dist/ddp.py): a rank that left alone would leave the
    others waiting in the model's first broadcast."""
    agreed = agreed_stop(stop, dist)

    def signalled() -> int | None:
        return agreed.requested(1, 1)  # (1, 1): an epoch's end, where every rank asks

    if (signum := signalled()) is not None:
        return _stopped(run_dir, dist, signum, state)
    lr = use_range_test(cfg, run_dir) if cfg.optimizer.lr == "find" else None
    # the config is final now: resolved once into plain values, which config.yaml, the
    # typed spec (what the rest reads) and W&B's config are all made from
    config = plain(cfg)
    names = (label(config["model"]), label(config["optimizer"]), label(config["scheduler"]))
    found = None
    if lr is not None:
        checked = found_lr_checked(config, checked, lr)
        found = checked.lr
    config_text = yaml_text(config)  # written once the run's start stands (below)
    spec = typed_run(config)
    if found is not None:  # W&B config: the lr the range test chose (a copy: not the spec's)
        config["lr_find"] = {**config["lr_find"], "found_lr": found}
    if (signum := signalled()) is not None:
        return _stopped(run_dir, dist, signum, state)
    # the data validation loaded (unless a run since wrote into it): built on, fingerprinted
    loaded = checked.data if still_held(checked.data) else load_data(spec.data)
    run = build_run(spec, loaded, dist=dist)
    data = fingerprint(spec.data, loaded)
    log.info(start_line(names, spec.data["name"], run.device, spec.optimizer["lr"], spec.epochs))
    log.info(describe(data))
    branching = state is None and config.get("branch") is not None
    state = _start_state(config, run, checked, resuming, state)
    if resuming:
        _resume_writes(run_dir, dist, config_text, state, changes)
    elif dist.is_main:  # a new run's files: only once its start stands (`_first_writes`)
        _first_writes(config, config_text, run_dir, branching)
    if (signum := signalled()) is not None:  # e.g. while the data loaded
        return _stopped(run_dir, dist, signum, state)
    return _fit_and_record(
        spec,
        run,
        config,
        config_text,
        data,
        run_dir,
        overrides,
        sweep_name,
        dist,
        stop,
        state,
        signalled,
    )


def _start_state(
    config: dict[str, Any],
    run: Run,
    checked: Checked,
    resuming: bool,
    state: dict[str, Any] | None,
) -> dict[str, Any] | None:
    """Where training starts: a new branch at its trunk's epoch with its own schedule
    (runner/run/branch.py), a resume at its checkpoint (loaded into `run`), or epoch 0
    (None). Nothing is written: a trunk checkpoint or a last.pt this run cannot use fails
    before any file of the run dir changes."""
    if state is None and config.get("branch") is not None:
        trunk, epoch = str(config["branch"]), int(config["branch_epoch"])
        state = branch.start_state(trunk, epoch, config["data"], run, checked.steps_per_epoch)
    elif resuming and state is not None:
        checkpoint.load_weights(state, run)
    return state


def _first_writes(config: dict[str, Any], config_text: str, run_dir: Path, branching: bool) -> None:
    """A new run's config.yaml, then a branch's trunk rows before its branch point
    (runner/run/branch.py), written once the run is built and its start loaded, as a fused
    member's are (runner/sweep/fused.py `_start_member`): a start that fails (a damaged
    trunk checkpoint) leaves no config.yaml, so runner/__main__.py records it `failed`
    with its error in status.json, the same command runs it again, and resume= finds no
    run to continue."""
    write_config(config_text, run_dir)
    if branching:
        branch.copy_trunk_rows(str(config["branch"]), int(config["branch_epoch"]), run_dir)


def _fit_and_record(
    spec: RunSpec,
    run: Run,
    config: dict[str, Any],
    config_text: str,
    data: dict[str, Any],
    run_dir: Path,
    overrides: Sequence[str],
    sweep_name: str | None,
    dist: Any,
    stop: StopFlag,
    state: dict[str, Any] | None,
    signalled: Callable[[], int | None],
) -> Result:
    """Fit with the loggers open (rank 0 alone talks to W&B/TensorBoard and writes), then
    status.json: how the run ended."""
    wandb_id = state["wandb_id"] if state else None
    session = checkpoint.Session()  # this process, in its checkpoints and status.json
    loggers = spec.logger if dist.is_main else {}  # only rank 0 talks to W&B / TensorBoard
    with (
        Background() as background,
        open_logger(
            loggers, run_dir, config, list(overrides), sweep_name, wandb_id, background
        ) as logger,
    ):
        logger.write = dist.is_main
        if state is not None and not state.get("rows_sent", True) and dist.is_main:
            # a fused member stopped before its launcher replayed it, or a process killed
            # before it closed its W&B run: the rows so far first
            logger.resend(files.read_jsonl(run_dir / "metrics.jsonl"))
        t0 = time.perf_counter()
        if (signum := signalled()) is not None:  # while W&B started
            result = _interrupted(signum, state)
        else:
            result = fit(
                spec,
                run,
                logger,
                ckpt_dir=run_dir if dist.is_main else None,
                start=state,
                stop=stop,
                background=background,
                config_text=config_text,
                session=session,
                data=data,
                weights_loaded=state is not None,
            )
        background.flush()  # checkpoints on disk before status.json says how the run ended
        wall = time.perf_counter() - t0 + (state["progress"]["elapsed_s"] if state else 0.0)
        logger.summary(outcome(result, wall)[1])
    losses = lm_outcome(files.read_jsonl(run_dir / "metrics.jsonl")) if dist.is_main else {}
    if dist.is_main:  # W&B closed: every row logged so far is in it (checkpoint.Session)
        # `data`: what it trained on (runner/data/fingerprint.py)
        write_status(run_dir, result, wall, session=session.closed(state), data=data, **losses)
    best = (
        {} if result.best is None else {"monitor": result.best[0], "best_monitored": result.best[1]}
    )
    score = scores({"best_val_acc": result.best_val_acc, **losses, **best})
    log.info(f"{result.status}: {score}; outputs in {run_dir}")
    return result


def _resume_writes(
    run_dir: Path,
    dist: Any,
    config_text: str,
    state: dict[str, Any] | None,
    changes: list[str],
) -> None:
    """A resume's changes to the run dir, made once its run is built and its checkpoint
    loaded into it (a failure before leaves a complete run complete): config.yaml with
    the changes applied (and status.json no longer saying complete), metrics.jsonl without
    the rows logged after the checkpoint."""
    start_epoch = state["progress"]["epoch"] if state else 0
    if dist.is_main:
        if changes:  # the run dir's config is the one the run now follows
            files.write_text_atomic(run_dir / "config.yaml", config_text)
            status = files.read_json(run_dir / "status.json")
            if finished(status, 0) is not None:  # it is no longer complete
                with files.writing(run_dir / "status.json"):
                    (run_dir / "status.json").unlink(missing_ok=True)
        keep_rows_before(run_dir / "metrics.jsonl", start_epoch)
    applied = f" with {', '.join(changes)}" if changes else ""
    log.info(f"resuming {run_dir} at epoch {start_epoch}{applied}")
