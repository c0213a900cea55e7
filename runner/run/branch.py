"""Branches from a trunk (Hägele et al. 2024): a run that starts from a checkpoint another
run kept (trainer.keep_epochs -> epoch_<k>.pt) and follows its own schedule from there.

The branch's config is a whole run of its own budget (`epochs`), e.g. `scheduler=wsd` whose
decay starts where the branch leaves the trunk; its first `branch_epoch` epochs are the
trunk's, so its schedule must give the trunk's lrs there (checked), and everything that
decides what those epochs computed (model, data, optimizer, seed, trainer) must be the
trunk's (checked, by name). It then equals, row for row on CPU, the same config trained from
scratch: the trunk's rows before the branch point are copied into its metrics.jsonl (marked
`from_trunk`), so the run dir, its W&B run and the sweep report read as one run.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner.config.later import with_later_keys
from runner.data.fingerprint import absolute_roots, check_same_data
from runner.io import checkpoint, files
from schedulers import ConfigError
from schedulers.binder import plain
from schedulers.schedule import walk
from schedulers.simulator import throwaway_schedule

log = logging.getLogger("schedlab")

# what must be the trunk's: everything that decides what its first epochs computed
COMPARED = ("seed", "model", "data", "optimizer", "trainer")
# trainer keys that change how a run is shown, saved or stopped, never what it computes
FREE_TRAINER_KEYS = (
    "device",
    "num_threads",
    "progress",
    "checkpoint",
    "checkpoint_interval_s",
    "keep_epochs",
    "save_best",
    "log_every_n_steps",
    "diverge_loss",
)
_ABSENT = object()


def trunk_dir(cfg: Mapping[str, Any]) -> Path:
    """The run dir `branch=` names, or a ConfigError (key `branch`) when it holds no run."""
    trunk = Path(str(cfg["branch"]))
    if not (trunk / "config.yaml").is_file():
        raise ConfigError(
            "branch", str(cfg["branch"]), f"no run to branch from: {trunk}/config.yaml missing"
        )
    return trunk


def trunk_config(trunk: Path, value: str) -> DictConfig:
    try:
        saved = OmegaConf.load(trunk / "config.yaml")
    except Exception as err:  # not YAML at all
        raise ConfigError(
            "branch", value, f"{trunk}/config.yaml is damaged ({type(err).__name__})"
        ) from None
    if not isinstance(saved, DictConfig) or "scheduler" not in saved:
        raise ConfigError("branch", value, f"{trunk}/config.yaml is not a run config")
    return with_later_keys(saved)  # a trunk saved before a key existed ran without it


def _flat(node: Any, prefix: str) -> dict[str, Any]:
    if not isinstance(node, Mapping):
        return {prefix: node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(_flat(value, f"{prefix}.{key}"))
    return out


def _compared(cfg: Any) -> dict[str, Any]:
    """The keys a branch must share with its trunk, flat (`data.batch_size`), with data
    paths absolute as config.yaml records them (runner/data/fingerprint.py)."""
    values = OmegaConf.create({k: plain(cfg[k]) for k in COMPARED if k in cfg})
    absolute_roots(values)
    flat: dict[str, Any] = {}
    for key in COMPARED:
        if key in values:
            flat.update(_flat(plain(values[key]), key))
    return {k: v for k, v in flat.items() if k.removeprefix("trainer.") not in FREE_TRAINER_KEYS}


def check_same_training(cfg: Mapping[str, Any], trunk_cfg: DictConfig, trunk: Path) -> None:
    """The first key (in COMPARED order) where the branch's config is not the trunk's: a
    ConfigError naming it."""
    mine, theirs = _compared(cfg), _compared(trunk_cfg)
    for key in list(mine) + [k for k in theirs if k not in mine]:
        now, was = mine.get(key, _ABSENT), theirs.get(key, _ABSENT)
        if now != was:
            raise ConfigError(
                key,
                "(absent)" if now is _ABSENT else now,
                f"the trunk {trunk} trained with {key}="
                + ("(absent)" if was is _ABSENT else repr(was))
                + "; a branch continues its trunk's training, so only epochs, scheduler, "
                "logger and trainer." + ", trainer.".join(FREE_TRAINER_KEYS) + " may differ",
            )


def _interval_steps(*schedules: Mapping[str, Any], steps_per_epoch: int) -> int:
    """Steps per epoch the lrs are compared at: every batch's when a schedule steps per
    batch, else one an epoch (a per-epoch lr is the same for all of an epoch's batches)."""
    per_batch = any(s.get("interval", "epoch") == "step" for s in schedules)
    return steps_per_epoch if per_batch else 1


def lrs_until(
    scheduler: Mapping[str, Any], epochs: int, steps: int, base_lrs: Sequence[float], upto: int
) -> list[list[float]]:
    """The lr of each param group at each of `steps` positions an epoch, for the first
    `upto` epochs of a run of `epochs` under `scheduler` (built as the run builds it)."""
    schedule = throwaway_schedule(
        scheduler, epochs=epochs, steps_per_epoch=steps, base_lrs=base_lrs
    )
    if schedule.monitor:
        raise ConfigError(
            "scheduler",
            scheduler.get("name"),
            "a schedule that follows a metric (plateau) has no lr by epoch to compare with a "
            "trunk's: branches need schedules that are functions of the step (wsd, cosine, ...)",
        )
    groups, out = schedule.optimizer.param_groups, []
    for epoch, _ in walk(schedule.optimizer, schedule, epochs, steps):
        if epoch >= upto:
            break
        out.append([g["lr"] for g in groups])
    return out


def shared_epochs(
    cfg: Mapping[str, Any],
    trunk_cfg: DictConfig,
    steps_per_epoch: int,
    base_lrs: Sequence[float],
    upto: int,
) -> tuple[int, str]:
    """How many leading epochs (at most `upto`) the branch's schedule gives the trunk's lrs,
    and, when it leaves them sooner, where and how (for the message)."""
    steps = _interval_steps(cfg["scheduler"], trunk_cfg.scheduler, steps_per_epoch=steps_per_epoch)
    mine = lrs_until(cfg["scheduler"], cfg["epochs"], steps, base_lrs, upto)
    theirs = lrs_until(plain(trunk_cfg.scheduler), trunk_cfg.epochs, steps, base_lrs, upto)
    for i, (a, b) in enumerate(zip(mine, theirs, strict=True)):
        if not all(math.isclose(x, y, rel_tol=1e-12) for x, y in zip(a, b, strict=True)):
            return i // steps, f"at epoch {i // steps} its lr is {a[0]:.6g}, the trunk's {b[0]:.6g}"
    return upto, ""


def check_branch(cfg: Any, steps_per_epoch: int, base_lrs: Sequence[float]) -> int:
    """A branch's start-up check (runner/run/check.py `use_branch`, for a config with
    branch=): the trunk is a run, keeps the epoch asked for, trained what this run would
    have (check_same_training), with the lrs this run's schedule gives up to it. Returns the
    branch epoch (branch_epoch, or the latest kept epoch up to which the schedules agree
    when it is null)."""
    trunk = trunk_dir(cfg)
    trunk_cfg = trunk_config(trunk, str(cfg["branch"]))
    check_same_training(cfg, trunk_cfg, trunk)
    kept = checkpoint.kept_epochs(trunk)
    if not kept:
        raise ConfigError(
            "branch",
            str(cfg["branch"]),
            f"{trunk} keeps no epoch checkpoints (epoch_<k>.pt): train the trunk with "
            "trainer.keep_epochs=[...] (or N: every N epochs)",
        )
    k = cfg.get("branch_epoch")
    if k is not None and k not in kept:
        raise ConfigError("branch_epoch", k, f"{trunk} keeps epochs {kept} (trainer.keep_epochs)")
    upto = min(max(kept), trunk_cfg.epochs, cfg["epochs"])
    agree, where = shared_epochs(cfg, trunk_cfg, steps_per_epoch, base_lrs, upto)
    if k is None:
        fits = [e for e in kept if e <= agree and e < cfg["epochs"]]
        if not fits:
            raise ConfigError(
                "branch_epoch",
                None,
                f"no epoch {trunk} keeps ({kept}) is one this run can start from: it must be "
                f"below epochs={cfg['epochs']} and at most {agree}, where this run's schedule "
                f"leaves the trunk's ({where or 'the trunk ends'})",
            )
        return fits[-1]
    if k >= cfg["epochs"]:
        raise ConfigError(
            "branch_epoch", k, f"must be below epochs={cfg['epochs']}: nothing left to train"
        )
    if k > agree:
        raise ConfigError(
            "branch_epoch",
            k,
            f"this run's schedule leaves the trunk's before it ({where}), so its first {k} "
            f"epochs would not be the trunk's: branch at epoch {agree} or earlier, or give a "
            "schedule whose change (e.g. scheduler=wsd's decay) starts at the branch point",
        )
    return k


def advance(schedule: Any, epochs: int, steps_per_epoch: int) -> None:
    """Step the run's schedule through `epochs` epochs without training, so that it stands
    where a run trained from scratch would have it (a metric-free schedule: check_branch)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "lr_scheduler.step() before optimizer.step()"
        for _ in range(epochs):
            for _ in range(steps_per_epoch):
                schedule.step_batch()
            schedule.step_epoch({})


# what torch's schedulers write into param groups (onecycle/cyclic: momentum or betas, and
# the bounds they keep there); anything else a group holds is the optimizer's (its
# hyper-parameters, or state such as a schedule-free optimizer's step count)
SCHEDULE_KEYS = frozenset(
    ("lr", "initial_lr", "momentum", "betas", "max_lr", "min_lr", "max_momentum", "base_momentum")
)


def scheduled_values(run: Any, epochs: int, steps_per_epoch: int) -> list[dict[str, Any]]:
    """Per param group, the values the run's own schedule gives it after `epochs` epochs
    (advanced there on the run's fresh optimizer): SCHEDULE_KEYS, and any other value the
    stepping changed (a `_target_` scheduler's own)."""
    before = [dict(g) for g in run.optimizer.param_groups]
    advance(run.scheduler, epochs, steps_per_epoch)
    after = [{n: v for n, v in g.items() if n != "params"} for g in run.optimizer.param_groups]
    return [
        {n: v for n, v in g.items() if n in SCHEDULE_KEYS or v is not was.get(n)}
        for g, was in zip(after, before, strict=True)
    ]


def start_state(
    trunk: str, k: int, data: Mapping[str, Any], run: Any, steps_per_epoch: int
) -> dict[str, Any]:
    """The `trunk`'s epoch_<k>.pt as this run's start (branch=, branch_epoch=), loaded into
    `run`: the trunk's weights, optimizer state, scaler, every RNG and progress; this run's
    own schedule, stepped to epoch k, and the lr (and any other value the schedule sets) it
    gives the param groups. A new W&B run (no id); its rows so far (copy_trunk_rows) still
    to be sent. `trunk`: the run dir as branch= gives it; `data`: this run's data config,
    checked against the checkpoint's."""
    path = Path(trunk) / checkpoint.KEPT.format(k)
    if not path.exists():
        raise ConfigError(
            "branch_epoch", k, f"{path} is gone (kept: {checkpoint.kept_epochs(path.parent)})"
        )
    state = checkpoint.load(path, "branch")
    check_same_data(
        state, data, branch=True
    )  # the data on disk is still the data the trunk trained on
    set_by_schedule = scheduled_values(run, k, steps_per_epoch)
    saved = state["optimizer"]
    groups = [{**g, **mine} for g, mine in zip(saved["param_groups"], set_by_schedule, strict=True)]
    state["optimizer"] = {**saved, "param_groups": groups}
    state["scheduler"] = run.scheduler.state_dict()
    checkpoint.load_weights(state, run)
    log.info(f"branch of {trunk} at epoch {k}: its checkpoint, then this run's schedule")
    for key in ("session", "config"):
        state.pop(key, None)
    return {**state, "wandb_id": None, "rows_sent": False, "branched": True}


def copy_trunk_rows(trunk: str, k: int, run_dir: Path) -> None:
    """The `trunk`'s metrics.jsonl rows before the branch point `k`, marked
    `"from_trunk": true`, as this run's first rows (written whole: a resume that starts the
    branch over writes the same)."""
    rows = files.read_jsonl(Path(trunk) / "metrics.jsonl")
    kept = [
        {**r, "from_trunk": True}
        for r in rows
        if isinstance(r.get("epoch"), int) and r["epoch"] < k
    ]
    files.write_text_atomic(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in kept))
