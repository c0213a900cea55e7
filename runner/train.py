"""The training loop: build from config, then per epoch train -> validate -> scheduler.step().

Read top to bottom; each phase is marked. The scheduler steps once per epoch,
after the batch loop, exactly as the lecture teaches, and the lr logged for an
epoch is the one its batches used.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.nn import functional as F

from runner import checkpoint, files
from runner.background import Background
from runner.builders import Run, build_run
from runner.config import validate
from runner.data import augment as augment_batch
from runner.data import batches, steps_per_epoch
from runner.loggers import RunLogger, open_logger
from runner.stopping import StopFlag, stop_on_signals
from runner.targets import label
from schedulers import ConfigError

log = logging.getLogger("schedlab")


@dataclass(frozen=True)
class Result:
    status: str  # completed | diverged | interrupted
    best_val_acc: float
    epochs_done: int
    signum: int | None = None  # the signal that interrupted the run
    chain: bool = False  # pass that signal on to the launcher's handler (see stopping.py)


def describe_epoch(row: dict[str, Any], epochs: int, note: str = "") -> str:
    """The log line of an epoch row; `note` is added after the epoch's time."""
    lr_text = " ".join(f"{k}={v:.3g}" for k, v in row.items() if k.startswith("lr/"))
    return (
        f"epoch {row['epoch']:>3}/{epochs}  {lr_text}  train/loss={row['train/loss']:.4f} "
        f"train/acc={row['train/acc']:.3f}  val/loss={row['val/loss']:.4f} "
        f"val/acc={row['val/acc']:.3f}  ({row['time/epoch_s']:.2f}s{note})"
    )


def diverged(row: dict[str, Any], diverge_loss: float | None) -> bool:
    """A NaN/inf loss, or one above trainer.diverge_loss: nothing after it is worth computing."""
    losses = (row["train/loss"], row["val/loss"])
    return not all(map(math.isfinite, losses)) or (
        diverge_loss is not None and max(losses) > diverge_loss
    )


def outcome(result: Result, wall_s: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """How a run ended: its status.json record and its W&B summary."""
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
    return status, summary


def group_names(optimizer: torch.optim.Optimizer) -> list[str]:
    """A param group's `name` if it has one, else group<i>; keys of the `lr/<group>` metrics."""
    return [g.get("name", f"group{i}") for i, g in enumerate(optimizer.param_groups)]


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    amp_ctx: Any,
    scaler: torch.amp.GradScaler | None,
    grad_scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, backward, optimizer.step() on one batch; returns (loss, logits), no host sync.
    `grad_scale` multiplies the loss that is backpropagated (DDP: this rank's share)."""
    with amp_ctx:
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
    optimizer.zero_grad(set_to_none=True)
    scaled = loss if grad_scale == 1.0 else loss * grad_scale
    if scaler is None:
        scaled.backward()
        optimizer.step()
    else:
        scaler.scale(scaled).backward()
        scaler.step(optimizer)
        scaler.update()
    return loss.detach(), logits.detach()


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    *,
    amp_ctx: Any,
    batch_size: int,
    device: torch.device,
    prepare: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
) -> tuple[float, float]:
    """Mean loss and accuracy over the whole validation split (one host sync at the end)."""
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    for x, y in batches(x_val, y_val, batch_size, device=device):
        with amp_ctx:
            logits = model(prepare(x))
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    n = y_val.shape[0]
    return loss_sum.item() / n, correct.item() / n


class NoBar:
    """What progress_bar gives when there is no terminal: the caller logs lines instead."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(mode: str, total: int, desc: str) -> Any:
    """A tqdm bar on a terminal (or when mode is `bar`), else a NoBar."""
    if mode == "line" or (mode == "auto" and not sys.stderr.isatty()):
        return NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)


def fit(
    cfg: DictConfig,
    run: Run,
    logger: RunLogger,
    *,
    ckpt_dir: Path | None = None,
    start: dict[str, Any] | None = None,
    stop: StopFlag | None = None,
    background: Background | None = None,
) -> Result:
    """Train from epoch 0, or from the checkpoint `start`; checkpoint into ckpt_dir if given
    (written on `background`'s thread when given)."""
    shuffle = torch.Generator().manual_seed(cfg.seed)  # data order: its own stream, seeded
    progress = checkpoint.restore(start, run, shuffle) if start else checkpoint.Progress()
    stop = stop or StopFlag()
    t_start = time.perf_counter() - progress.elapsed_s
    saver = None
    if ckpt_dir is not None and cfg.trainer.checkpoint:
        saver = checkpoint.Checkpointer(
            ckpt_dir,
            cfg.trainer.checkpoint_interval_s,
            background,
            config=OmegaConf.to_yaml(cfg, resolve=True),  # = the config.yaml written for it
        )
        if start is None:  # a new run: last.pt is on disk before its first batch
            saver.start(checkpoint.snapshot(run, progress, shuffle, logger.run_id))
    try:
        return _epochs(cfg, run, logger, progress, shuffle, stop, saver, t_start)
    finally:
        if saver is not None:
            saver.persist()  # the newest completed epoch is on disk however the loop ended


def _epochs(
    cfg: DictConfig,
    run: Run,
    logger: RunLogger,
    progress: checkpoint.Progress,
    shuffle: torch.Generator,
    stop: StopFlag,
    saver: checkpoint.Checkpointer | None,
    t_start: float,
) -> Result:
    model, optimizer, scheduler, data, dist = (
        run.model, run.optimizer, run.scheduler, run.data, run.dist
    )  # fmt: skip
    names = group_names(optimizer)
    batch_size = cfg.data.batch_size
    per_epoch = steps_per_epoch(data.y_train.shape[0], batch_size)
    every = cfg.trainer.log_every_n_steps
    # read once: an OmegaConf lookup costs microseconds, and 10 ms epochs add them up
    epochs, bar_mode, diverge_loss = cfg.epochs, cfg.trainer.progress, cfg.trainer.diverge_loss
    monitor, monitor_mode = cfg.trainer.monitor, cfg.trainer.monitor_mode
    augment = cfg.data.get("augment", False)  # only image sets that have the key
    per_step = scheduler.interval == "step"  # then the lr of every step is logged

    def lrs_now(prefix: str) -> dict[str, float]:
        return {f"{prefix}{n}": g["lr"] for n, g in zip(names, optimizer.param_groups, strict=True)}

    for epoch in range(progress.epoch, epochs):
        t0 = time.perf_counter()
        lrs = lrs_now("lr/")

        # -- train: one optimizer.step() per batch; loss/acc summed on device, no per-batch sync
        model.train()
        loss_sum = torch.zeros((), device=run.device)
        correct = torch.zeros((), device=run.device)
        bar = progress_bar(bar_mode, per_epoch, f"epoch {epoch}/{epochs}")
        for x, y in batches(data.x_train, data.y_train, batch_size, shuffle, run.device):
            if augment:
                x = augment_batch(x, shuffle)
            grad_scale = 1.0
            if dist.active:  # this rank's share of the global batch, weighted by its size
                global_n = y.shape[0]
                x, y = x[dist.rank :: dist.world], y[dist.rank :: dist.world]
                grad_scale = dist.world * y.shape[0] / global_n
            loss, logits = train_step(
                run.forward, optimizer, run.prepare(x), y, run.amp_ctx, run.scaler, grad_scale
            )
            loss_sum += loss * y.shape[0]
            correct += (logits.argmax(1) == y).sum()
            step_row = lrs_now("lr_step/") if per_step else {}  # the lr this step used
            scheduler.step_batch()  # advances only `interval: step` schedules
            progress.step += 1
            if every and progress.step % every == 0:
                step_row = {**lrs_now("lr_step/"), "train/step_loss": loss.item()}  # a host sync
            if step_row:
                logger.log_step({"trainer/global_step": progress.step, "epoch": epoch, **step_row})
            bar.update()
            if stop.signum is not None:
                break
        bar.close()

        # -- interrupted: drop the partial epoch; last.pt (the epoch before) is the resume point
        if stop.signum is not None:
            log.warning(
                f"interrupted in epoch {epoch}; resume continues from epoch {progress.epoch}"
            )
            return Result("interrupted", progress.best_val_acc, progress.epoch, stop.signum)
        dist.all_reduce_sum(loss_sum, correct)  # every rank logs and schedules on the same value
        n_train = data.y_train.shape[0]
        train_loss, train_acc = loss_sum.item() / n_train, correct.item() / n_train

        # -- validate
        val_loss, val_acc = evaluate(
            run.forward, data.x_val, data.y_val, amp_ctx=run.amp_ctx,
            batch_size=max(batch_size, 1024), device=run.device, prepare=run.prepare,
        )  # fmt: skip

        # -- log
        progress.best_val_acc = max(progress.best_val_acc, val_acc)
        row = {
            "epoch": epoch,
            **lrs,
            "train/loss": train_loss,
            "train/acc": train_acc,
            "val/loss": val_loss,
            "val/acc": val_acc,
            "time/epoch_s": time.perf_counter() - t0,
        }
        logger.log_epoch(row)
        log.info(describe_epoch(row, epochs))

        # -- stop a diverged run: nothing after a NaN/inf (or too large) loss is worth computing
        if diverged(row, diverge_loss):
            log.warning(f"loss {train_loss:.4g} at epoch {epoch}: run diverged, stopping")
            return Result("diverged", progress.best_val_acc, epoch + 1)

        # -- schedule: once per epoch, after the batch loop (sets the lr of the next epoch);
        # a Plateau schedule reads its monitored metric from the row
        scheduler.step_epoch(row)

        # -- checkpoint: the state the next epoch starts from
        is_best = progress.end_epoch(epoch, row[monitor], monitor_mode, monitor)
        if saver is not None:
            progress.elapsed_s = time.perf_counter() - t_start
            saver.epoch_end(checkpoint.snapshot(run, progress, shuffle, logger.run_id), is_best)
    return Result("completed", progress.best_val_acc, epochs)


def use_range_test(cfg: DictConfig, run_dir: Path) -> float:
    """optimizer.lr=find: run the LR range test, then train with its suggestion.

    onecycle/cyclic get it as max_lr (their max_lr/base_lr are reset to null, which
    means optimizer.lr and optimizer.lr / 10, Smith's bounds)."""
    from runner.lr_find import find_lr

    lr, _ = find_lr(cfg, run_dir / "lr_find")
    cfg.optimizer.lr = float(lr)
    for key in ("max_lr", "base_lr"):
        if key in cfg.scheduler and cfg.scheduler.get("name") in ("onecycle", "cyclic"):
            cfg.scheduler[key] = None  # a `_target_` class keeps the arguments it was given
    validate(cfg)  # the schedule's checks against the lr it will really get
    log.info(f"lr range test chose optimizer.lr={lr:.4g} ({cfg.lr_find.suggestion})")
    return float(lr)


class RunDirRefused(ConfigError):
    """This run may not write into its run dir: another run is writing there, or the dir
    holds another run's results. Nothing in the dir is touched, status.json included."""


def _saved_config_path(cfg: DictConfig, run_dir: Path) -> Path:
    """The dir `resume=` names: its value, or (resume=true) the Hydra run dir."""
    target = run_dir if cfg.resume is True else Path(str(cfg.resume))
    if not (target / "config.yaml").is_file():
        raise ConfigError(
            "resume", str(cfg.resume), f"no run to resume: {target}/config.yaml missing"
        )
    return target


def read_saved_config(target: Path, value: object) -> DictConfig:
    """A run dir's config.yaml, or a ConfigError (key `resume`) saying why it cannot be used."""
    try:
        saved = OmegaConf.load(target / "config.yaml")
    except Exception as err:  # not YAML at all
        why = f"{type(err).__name__}: {str(err).strip()[:120]}"
        raise ConfigError(
            "resume", str(value), f"{target}/config.yaml is damaged ({why})"
        ) from None
    if not isinstance(saved, DictConfig):
        raise ConfigError("resume", str(value), f"{target}/config.yaml is not a run config")
    OmegaConf.set_struct(saved, True)
    return saved


def load_resume(
    cfg: DictConfig, run_dir: Path
) -> tuple[DictConfig, Path, dict[str, Any] | None, list[str]]:
    """`resume=<run dir>` (or `resume=true` in the Hydra run dir): its saved config, the dir,
    its last checkpoint (None when it stopped before writing one), and the edits made to
    config.yaml by hand since that checkpoint, as `key=value` texts (edit_changes)."""
    target = _saved_config_path(cfg, run_dir)
    checkpoint.remove_orphans(target)  # temp files of writes a kill -9 cut short
    saved = read_saved_config(target, cfg.resume)
    if not (target / checkpoint.LAST).exists() and not (target / checkpoint.BEST).exists():
        log.info(f"{target} has no checkpoint yet (stopped in its first epoch): starting over")
        return saved, target, None, []
    state = checkpoint.load(target / checkpoint.LAST)
    return saved, target, state, edit_changes(saved, state, target)


def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix.rstrip("."): node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(_leaves(value, f"{prefix}{key}."))
    return out


def edit_changes(saved: DictConfig, state: dict[str, Any], run_dir: Path) -> list[str]:
    """config.yaml edited by hand after the checkpoint was written (the checkpoint keeps the
    config text the run trained with): each edited key is held to the rules of an override
    given with resume=, so an edited `epochs` extends the run or is refused like
    `resume=<dir> epochs=N`, and any other edit that would change what was computed is a
    ConfigError naming it, instead of a schedule that silently keeps its old length."""
    trained = state.get("config")
    if not isinstance(trained, str):
        return []  # a checkpoint from before configs were kept in it
    trained_cfg = OmegaConf.create(trained)
    old = _leaves(OmegaConf.to_container(trained_cfg, resolve=True))
    new = _leaves(OmegaConf.to_container(saved, resolve=True))
    changes = []
    for key in sorted(set(old) | set(new)):
        was, now = old.get(key, _ABSENT), new.get(key, _ABSENT)
        if was == now:
            continue
        if key == "epochs" and isinstance(was, int) and isinstance(now, int):
            _check_extension(trained_cfg, was, now, run_dir)
        elif not (key in SAFE_ON_RESUME or key.startswith("logger.")):
            shown = "(absent)" if now is _ABSENT else now
            raise ConfigError(
                key,
                shown,
                f"{run_dir}/config.yaml was edited after its last checkpoint was written "
                f"({key} was {'(absent)' if was is _ABSENT else repr(was)}); a resume "
                "continues the run it saved: only a larger epochs and "
                + ", ".join(f"{k}.*" if k == "logger" else k for k in SAFE_ON_RESUME)
                + " may change. Restore the file, or start a new run with this config",
            )
        changes.append(f"{key}={now}" + (f" (was {was}, edited in config.yaml)"))
    return changes


# -- what a resume may change -----------------------------------------------------------------
# Keys that change how a run is shown or how often it is saved, never what it computes: given
# with resume=, they are applied. `epochs` may be raised where the schedule's lengths are
# explicit (extend_blocker). Anything else is refused, naming the key.
SAFE_ON_RESUME = (
    "trainer.progress",
    "trainer.checkpoint_interval_s",
    "trainer.log_every_n_steps",
    "logger",
)
_ABSENT = object()


def _override_keys(overrides: Sequence[str]) -> dict[str, str]:
    """The config keys (or groups) the overrides set -> the value as given; resume= and
    hydra.* left out."""
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parsed = OverridesParser.create().parse_overrides(list(overrides))
        pairs = [(o.key_or_group, o.input_line or "") for o in parsed]
    except Exception:  # Hydra has parsed them already; this is only a fallback
        pairs = [(o.split("=", 1)[0].lstrip("+~"), o) for o in overrides]
    keys = {}
    for key, text in pairs:
        key = key.split("@", 1)[0].replace("/", ".")
        if key != "resume" and key.split(".")[0] != "hydra":
            keys[key] = text.split("=", 1)[1] if "=" in text else ""
    return keys


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def extend_blocker(scheduler: Any) -> tuple[str, str] | None:
    """Why more epochs would change the schedule a run has already followed: the key of a
    length that means "the whole run" (or `scheduler`, for a schedule that has none), and
    what it means. None where every length is explicit (step, multistep, exponential,
    plateau, lambda, none, cyclic, cosine_restarts, cosine/linear/poly with their length
    set, a sequence whose last phase has a length, a `_target_` class, whose arguments are
    saved as given)."""
    name = scheduler.get("name")
    if name == "sequence":
        phases = list(scheduler.get("phases") or [])
        for i, phase in enumerate(phases):
            if phase.get("length") is None:
                key = f"scheduler.phases.{i}.length"
                return key, f"{key} is null: the last phase takes the rest of the run"
        return None
    key = {"cosine": "T_max", "linear": "total_iters", "poly": "total_iters"}.get(name)
    if key is not None and scheduler.get(key) is None:
        return f"scheduler.{key}", f"scheduler.{key} is null: {name} spans the whole run"
    if name in ("onecycle", "wsd"):
        return "scheduler", f"scheduler={name} spans the whole run (it has no length to set)"
    return None


def apply_resume_overrides(
    saved: DictConfig, given: DictConfig, overrides: Sequence[str], run_dir: Path
) -> list[str]:
    """Apply to the saved config the overrides given with resume= (values as composed in
    `given`), or raise a ConfigError naming the ones that cannot be applied. Returns what
    changed, as `key=value` texts; an override equal to the saved value changes nothing."""
    changes, refused = [], []
    texts = _override_keys(overrides)
    for key, text in texts.items():
        new = _plain(OmegaConf.select(given, key, default=_ABSENT))
        old = _plain(OmegaConf.select(saved, key, default=_ABSENT))
        if new is not _ABSENT and new == old:
            continue
        if key == "epochs" and isinstance(new, int) and isinstance(old, int):
            _check_extension(saved, old, new, run_dir)
        elif new is _ABSENT or not (key in SAFE_ON_RESUME or key.startswith("logger.")):
            refused.append((key, text if new is _ABSENT else new, old))
            continue
        with open_dict(saved):
            OmegaConf.update(saved, key, new, merge=False)
        changes.append(f"{key}={new}" + (f" (was {old})" if key == "epochs" else ""))
    if refused:
        key, new, old = refused[0]
        others = ", ".join(k for k, _, _ in refused[1:])
        was = "" if old is _ABSENT else f" ({key}={old!r} there)"
        raise ConfigError(
            key,
            new,
            f"a resumed run keeps the config saved in {run_dir}/config.yaml{was}"
            + (f"; also refused: {others}" if others else "")
            + "; with resume= only a larger epochs and "
            + ", ".join(f"{k}.*" if k == "logger" else k for k in SAFE_ON_RESUME)
            + " may be given: start a new run for another config",
        )
    return changes


def _check_extension(saved: DictConfig, old: int, new: int, run_dir: Path) -> None:
    if new < old:
        raise ConfigError(
            "epochs", new, f"below the saved epochs={old}: a resumed run can only be extended"
        )
    blocker = extend_blocker(saved.scheduler)
    if blocker is not None:
        key, why = blocker
        how = (
            "use a schedule with explicit lengths"
            if key == "scheduler"
            else f"set {key} (in units of scheduler.interval)"
        )
        raise ConfigError(
            "epochs",
            new,
            f"cannot extend {run_dir} from {old} epochs: {why}, so more epochs would stretch "
            f"a schedule the run has already followed; {how} in a run you mean to extend, or "
            f"start a new run with epochs={new}",
        )


def finished(run_dir: Path, epochs: int) -> dict[str, Any] | None:
    """status.json of a run that completed all `epochs` (None if it did not)."""
    status = files.read_json(run_dir / "status.json")
    if status is None or status.get("status") != "completed":
        return None
    done = status.get("epochs_done")
    return status if isinstance(done, int) and done >= epochs else None


def nothing_to_do(run_dir: Path, status: dict[str, Any]) -> str:
    return (
        f"{run_dir} is already complete ({status['epochs_done']} epochs, best val/acc "
        f"{status.get('best_val_acc', float('nan')):.4f}): nothing to do; to train longer: "
        f"resume={run_dir} epochs=<more>"
    )


# -- one run per run dir -------------------------------------------------------------------------
def same_run_on_disk(cfg: DictConfig, run_dir: Path) -> bool:
    """run_dir holds a checkpoint of this very config: a run to continue, not to redo."""
    return (run_dir / checkpoint.LAST).exists() and _same_config(run_dir, cfg)


def _same_config(run_dir: Path, cfg: DictConfig) -> bool:
    """run_dir/config.yaml is this config's. With optimizer.lr=find it holds the lr the range
    test found (and onecycle/cyclic's max_lr/base_lr reset): compared as given."""
    try:
        saved_text = (run_dir / "config.yaml").read_text()
    except (OSError, UnicodeDecodeError):
        return False
    wanted = OmegaConf.to_yaml(cfg, resolve=True)
    if saved_text == wanted or OmegaConf.select(cfg, "optimizer.lr") != "find":
        return saved_text == wanted
    try:
        saved = OmegaConf.create(saved_text)
        saved.optimizer.lr = "find"
        for key in ("max_lr", "base_lr"):
            if key in saved.scheduler and saved.scheduler.get("name") in ("onecycle", "cyclic"):
                saved.scheduler[key] = cfg.scheduler.get(key)
    except Exception:  # not this runner's config at all
        return False
    return OmegaConf.to_yaml(saved) == wanted


def _differing_keys(saved_text: str, cfg: DictConfig) -> list[str]:
    def flat(value: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            for k, v in value.items():
                out.update(flat(v, f"{prefix}{k}."))
            return out
        return {prefix[:-1]: value}

    try:
        old = flat(OmegaConf.to_container(OmegaConf.create(saved_text)))
    except Exception:
        return []
    new = flat(OmegaConf.to_container(cfg, resolve=True))
    return [
        k for k in sorted(old.keys() | new.keys()) if old.get(k, _ABSENT) != new.get(k, _ABSENT)
    ]


def other_run_in(run_dir: Path, cfg: DictConfig) -> str | None:
    """Why run_dir holds another run's results, which a new run would mix with its own; None
    when it holds none (a dir Hydra just made, a run that failed or was stopped before it
    wrote a row or a checkpoint) or a checkpoint of this same config (same_run_on_disk)."""
    if same_run_on_disk(cfg, run_dir):
        return None
    saved = run_dir / "config.yaml"
    try:
        saved_text = saved.read_text()
    except FileNotFoundError:
        saved_text = None
    except (OSError, UnicodeDecodeError):
        saved_text = ""
    if saved_text is not None and not _same_config(run_dir, cfg):
        keys = _differing_keys(saved_text, cfg)
        shown = ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
        return "its config.yaml is another run's" + (f" (differs in {shown})" if keys else "")
    found = [
        n for n in ("metrics.jsonl", checkpoint.LAST, checkpoint.BEST) if (run_dir / n).exists()
    ]
    status = files.read_json(run_dir / "status.json")
    if status is not None and status.get("status") in ("completed", "diverged"):
        found.append("status.json")
    if found:
        return f"it holds a run's results ({', '.join(found)}) with no checkpoint to continue"
    return None


def refuse_other_run(run_dir: Path, cfg: DictConfig) -> None:
    why = other_run_in(run_dir, cfg)
    if why is not None:
        raise RunDirRefused(
            "hydra.run.dir",
            str(run_dir),
            f"{why}; a new run would mix its files with that one's. To continue that run: "
            f"resume={run_dir}; for a new run: another hydra.run.dir (or none: a new dated dir)",
        )


def busy(err: files.RunDirBusy) -> RunDirRefused:
    who = f"another run (pid {err.pid})" if err.pid else "another run"
    return RunDirRefused(
        "hydra.run.dir",
        str(err.run_dir),
        f"{who} is writing into it; wait for it to end (resume={err.run_dir} then continues "
        "it), or give another hydra.run.dir",
    )


def check_run_dir(
    run_dir: Path, overrides: Sequence[str], resuming: bool, config_dirs: Sequence[str] = ()
) -> str | None:
    """The CLI's check of an existing run dir before Hydra writes into it (its .hydra/ and
    train.log), so that a refused run leaves the dir byte for byte as it was: RunDirRefused
    if another run holds it or it holds another run; a ConfigError for overrides a resume
    cannot apply; the line to print (and exit 0) when the run is already complete and
    nothing is asked of it. None: go on."""
    holder = files.run_dir_holder(run_dir)
    if holder is not None:
        raise busy(holder)
    from runner.compose import compose_config

    given = compose_config(list(overrides), with_hydra=True, config_dirs=config_dirs)
    with open_dict(given):
        del given["hydra"]
    last, state = run_dir / checkpoint.LAST, None
    if resuming:
        saved = read_saved_config(run_dir, given.resume)
        if last.exists():  # edits refused before Hydra writes a file
            state = checkpoint.load(last)
            edit_changes(saved, state, run_dir)
        apply_resume_overrides(saved, given, overrides, run_dir)
        epochs = saved.epochs
    elif same_run_on_disk(given, run_dir):
        epochs = given.epochs
    else:
        refuse_other_run(run_dir, given)
        return None
    status = finished(run_dir, epochs)
    if status is None or not last.exists():
        return None  # a run to continue (or one that stopped before its first checkpoint)
    # as the run itself would: a damaged last.pt is refused, and it is the last epoch's
    state = state if state is not None else checkpoint.load(last)
    if state["progress"]["epoch"] < epochs:
        return None
    return nothing_to_do(run_dir, status)


def _keep_rows_before(metrics: Path, epoch: int) -> None:
    """Rows logged after the checkpoint was written are redone by the resumed run; a line
    torn by a kill or a full disk is dropped (read_jsonl warns about it)."""
    if metrics.exists():
        kept = [r for r in files.read_jsonl(metrics) if isinstance(r.get("epoch"), int)]
        lines = [json.dumps(r) + "\n" for r in kept if r["epoch"] < epoch]
        files.write_text_atomic(metrics, "".join(lines))


def train(
    cfg: DictConfig,
    run_dir: Path,
    overrides: Sequence[str] = (),
    sweep_name: str | None = None,
    stop: StopFlag | None = None,
) -> Result:
    """Validate, build, fit, and leave metrics.jsonl, config.yaml, checkpoints and
    status.json in run_dir (under torchrun: rank 0 writes, every rank trains).

    `overrides` are the ones the run was given (Hydra's task overrides): with resume= they
    are applied to the saved config or refused (apply_resume_overrides). `stop` is the flag
    of signal handlers the caller installed (the CLI: before Hydra starts); without one,
    handlers are installed for the whole run, start-up included."""
    from runner.distributed import setup, teardown

    dist = setup(cfg.trainer.strategy)
    if not dist.is_main:
        logging.getLogger("schedlab").setLevel(logging.WARNING)
    try:
        if stop is not None:
            return _train(cfg, Path(run_dir), overrides, sweep_name, dist, stop)
        with stop_on_signals() as own:
            result = _train(cfg, Path(run_dir), overrides, sweep_name, dist, own)
        if result.status == "interrupted":  # own.chain is set once the handlers are restored
            result = dataclasses.replace(result, chain=own.chain)
        return result
    finally:
        teardown(dist)


def _interrupted(stop: StopFlag, state: dict[str, Any] | None) -> Result:
    """A signal came during start-up: no epoch ran in this process."""
    progress = state["progress"] if state else {}
    log.warning(f"{signal_name(stop.signum)} during start-up: stopped before the first epoch")
    return Result(
        "interrupted", progress.get("best_val_acc", 0.0), progress.get("epoch", 0), stop.signum
    )


def _stopped(run_dir: Path, dist: Any, stop: StopFlag, state: dict[str, Any] | None) -> Result:
    """A signal came during start-up, before the loggers: status.json says `interrupted`."""
    result = _interrupted(stop, state)
    if dist.is_main:
        files.write_json_atomic(run_dir / "status.json", outcome(result, 0.0)[0])
    return result


def signal_name(signum: int | None) -> str:
    import signal

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
    resuming = bool(cfg.resume)
    if resuming:
        run_dir = _saved_config_path(cfg, run_dir)  # nothing is created for a missing run
    else:
        validate(cfg)  # before anything is built or written
    with ExitStack() as held:
        lock = None
        if dist.is_main:  # only rank 0 writes, so only rank 0 holds the run dir
            run_dir.mkdir(parents=True, exist_ok=True)
            try:
                lock = held.enter_context(files.hold_run_dir(run_dir))
            except files.RunDirBusy as err:
                raise busy(err) from None
        if not resuming and same_run_on_disk(cfg, run_dir):
            # a requeued job (Slurm time-out/preemption) or the same command run again into
            # the same dir: continue instead of starting over
            log.info(f"{run_dir} holds a checkpoint of this same config: resuming it")
            cfg.resume, resuming = True, True
        elif not resuming and dist.is_main:
            refuse_other_run(run_dir, cfg)
        state, changes = None, []
        if resuming:
            given = cfg
            cfg, run_dir, state, changes = load_resume(cfg, run_dir)
            changes += apply_resume_overrides(cfg, given, overrides, run_dir)
            validate(cfg)
            start_epoch = state["progress"]["epoch"] if state else 0
            status = finished(run_dir, cfg.epochs) if start_epoch >= cfg.epochs else None
            if status is not None:  # nothing to train: no W&B run, no file touched
                log.info(nothing_to_do(run_dir, status))
                return Result("completed", status.get("best_val_acc", 0.0), start_epoch)
        if lock is not None:
            lock.claim()
        return _run(cfg, run_dir, overrides, sweep_name, dist, stop, resuming, state, changes)


def _run(
    cfg: DictConfig,
    run_dir: Path,
    overrides: Sequence[str],
    sweep_name: str | None,
    dist: Any,
    stop: StopFlag,
    resuming: bool,
    state: dict[str, Any] | None,
    changes: list[str],
) -> Result:
    """Start-up (range test, config.yaml, data, model, loggers), then fit; a signal during
    start-up is looked for between its steps."""
    if stop.signum is not None:
        return _stopped(run_dir, dist, stop, state)
    found = use_range_test(cfg, run_dir) if cfg.optimizer.lr == "find" else None
    if not resuming:
        if dist.is_main:
            files.write_text_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    else:
        start_epoch = state["progress"]["epoch"] if state else 0
        if dist.is_main:
            if changes:  # the run dir's config is the one the run now follows
                files.write_text_atomic(
                    run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True)
                )
                if finished(run_dir, 0) is not None:  # it is no longer complete
                    with files.writing(run_dir / "status.json"):
                        (run_dir / "status.json").unlink(missing_ok=True)
            _keep_rows_before(run_dir / "metrics.jsonl", start_epoch)
        applied = f" with {', '.join(changes)}" if changes else ""
        log.info(f"resuming {run_dir} at epoch {start_epoch}{applied}")
    config = OmegaConf.to_container(cfg, resolve=True)
    if found is not None:
        config["lr_find"]["found_lr"] = found  # W&B config: the lr the range test chose
    if stop.signum is not None:
        return _stopped(run_dir, dist, stop, state)
    run = build_run(cfg, dist=dist)
    log.info(
        f"{label(cfg.model)} on {cfg.data.name} ({run.device}), {label(cfg.optimizer)} "
        f"lr={cfg.optimizer.lr}, scheduler={label(cfg.scheduler)}, {cfg.epochs} epochs"
    )
    if stop.signum is not None:  # e.g. while the data loaded
        return _stopped(run_dir, dist, stop, state)
    wandb_id = state["wandb_id"] if state else None
    loggers = cfg.logger if dist.is_main else {}  # only rank 0 talks to W&B / TensorBoard
    with (
        Background() as background,
        open_logger(
            loggers, run_dir, config, list(overrides), sweep_name, wandb_id, background
        ) as logger,
    ):
        logger.write = dist.is_main
        t0 = time.perf_counter()
        if stop.signum is not None:  # while W&B started
            result = _interrupted(stop, state)
        else:
            result = fit(
                cfg, run, logger, ckpt_dir=run_dir if dist.is_main else None, start=state,
                stop=stop, background=background,
            )  # fmt: skip
        background.flush()  # checkpoints on disk before status.json says how the run ended
        wall = time.perf_counter() - t0 + (state["progress"]["elapsed_s"] if state else 0.0)
        status, summary = outcome(result, wall)
        logger.summary(summary)
    if dist.is_main:
        files.write_json_atomic(run_dir / "status.json", status)
    log.info(f"{result.status}: best val/acc={result.best_val_acc:.4f}; outputs in {run_dir}")
    return result
