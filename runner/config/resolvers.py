"""OmegaConf resolvers the configs use: lecture scaling (200 epochs -> the run's), the
run dir of a resumed run, and where Hydra's own files (.hydra/, train.log) go.

Registered when `runner` is imported, so they exist wherever a config is resolved
(the CLI, the compose API in tests, joblib workers).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import ListConfig, OmegaConf

from runner.dist.ddp import not_rank_0
from runner.dist.workers import record_user_threads
from runner.io.files import run_dir_holder
from schedulers import ConfigError

LECTURE_EPOCHS = 200  # the lecture's demos ran for 200 epochs


def lecture_epochs(n: int, epochs: int) -> int:
    """n epochs of the lecture's 200, as the same share of a run of `epochs` (at least 1)."""
    return max(1, round(n * epochs / LECTURE_EPOCHS))


def lecture_milestones(milestones: Sequence[int], epochs: int) -> Any:
    """The lecture's milestones, each scaled as by lecture_epochs and kept strictly
    increasing (as MultiStepLR's check wants): one that rounds onto or below the one before
    it moves to the epoch after it, so every decay stays (50, 125, 160 of 200 -> 5, 12, 16
    of 20, but 1, 2, 3 of 3 rather than 1, 2, 2)."""
    out: list[int] = []
    for m in milestones:
        scaled = lecture_epochs(int(m), epochs)
        out.append(max(scaled, out[-1] + 1) if out else scaled)
    # a ListConfig, not a list: OmegaConf.resolve (the fused launcher's) cannot put a plain
    # list in place of the interpolation it resolves
    return ListConfig(out)


def lecture_gamma(gamma: float, epochs: int) -> float:
    """A per-epoch decay giving the same total decay over `epochs` as gamma over 200."""
    return float(gamma) ** (LECTURE_EPOCHS / epochs)


def times(factor: float, value: float) -> float:
    """factor x value: a setting tied to another, e.g. a cosine's eta_min at 10 % of the lr
    (`${times:0.1,${optimizer.lr}}`), which then follows an optimizer.lr override."""
    return float(f"{float(factor) * float(value):.12g}")  # 0.0003, not 0.00030000000000000003


def text_epoch_steps(
    tokens_per_epoch: int, block_size: int, batch_size: int, accumulate: int
) -> int:
    """Optimizer steps in a data=text epoch (tokens_per_epoch // block_size windows), as
    runner/data/sets.py `steps_per_epoch` counts them: schedule-free AdamW's own warmup
    (optimizer.warmup_steps) set to the epoch of warmup the scheduled runs get. An epoch of
    the whole train split (tokens_per_epoch null) has a length only the text knows, which
    no resolver reads: a config error that says what to set, not int(None)'s TypeError."""
    if tokens_per_epoch is None:
        raise ConfigError(
            "data.tokens_per_epoch",
            None,
            "this preset warms up over one epoch's optimizer steps, counted from "
            "data.tokens_per_epoch: set it (e.g. data.tokens_per_epoch=32768), or the warmup "
            "itself (scheduler.warmup_steps=N; optimizer.warmup_steps=N with lm_schedule="
            "schedulefree)",
        )
    windows = int(tokens_per_epoch) // int(block_size)
    return math.ceil(math.ceil(windows / int(batch_size)) / int(accumulate))


def run_dir(resume: object, default: str) -> str:
    """hydra.run.dir: the dir named by resume=<dir>, else the default (also for resume=true).
    Under torchrun every rank resolves it, at slightly different times: they share a dir
    named by torchrun's run id instead of the clock (hydra#2070)."""
    if isinstance(resume, str) and resume.lower() != "true":
        return resume
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if run_id and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return f"outputs/runs/torchrun-{run_id}"
    return default


# a dir name the file systems take: no separator, no NUL, at most NAME_MAX (255) bytes; long
# ones keep a readable head and a hash of the whole, so two jobs never share a dir
_NAME_BYTES = 240
_NOT_IN_NAMES = re.compile(r"[/\\\x00]")


def dir_name(text: str) -> str:
    """`text` as one dir name: `/` (a data.root=/tmp/x, a _target_ path) and `\\` as `_`,
    a name over _NAME_BYTES cut with a hash of the whole appended."""
    name = _NOT_IN_NAMES.sub("_", text).strip()
    if name in ("", ".", ".."):
        name = name.replace(".", "_") or "_"
    if len(name.encode()) <= _NAME_BYTES:
        return name
    digest = hashlib.sha1(text.encode()).hexdigest()[:10]
    head = name.encode()[: _NAME_BYTES - 11].decode(errors="ignore")
    return f"{head}~{digest}"


def run_name(*, _root_: Any = None) -> str:
    """A run's readable name, the folder its run dirs are grouped in (outputs/runs/<name>/):
    the `name` key when set, else the experiment preset's name (+experiment=lecture_lenet),
    else <model>-<scheduler> as chosen (mlp-cosine, my_cnn-onecycle); model=target by its
    class's name (model._target_=mypkg.nets.SmallCNN: SmallCNN-step), so runs of two models
    of one's own are not filed together under target-step."""
    root = _root_ if _root_ is not None else OmegaConf.create()
    given = OmegaConf.select(root, "name", default=None)
    if given:
        return dir_name(str(given))
    choices = OmegaConf.select(root, "hydra.runtime.choices", default=None) or {}
    if choices.get("experiment"):
        return dir_name(str(choices["experiment"]))
    model = choices.get("model")
    target = OmegaConf.select(root, "model._target_", default=None)
    if model == "target" and isinstance(target, str) and target.strip("?"):
        model = target.rsplit(".", 1)[-1]
    parts = [model, choices.get("scheduler")]
    return dir_name("-".join(str(p) for p in parts if p) or "run")


def job_dir(num: int, *, _root_: Any = None) -> str:
    """hydra.sweep.subdir: a job's dir named by its overrides as Hydra's
    hydra.job.override_dirname names it (sorted `key=value`s joined by commas, the keys in
    hydra.job.config.override_dirname.exclude_keys left out: `scheduler=cosine,seed=1`),
    but a long value (a `_target_` node, a path) cut to its head and a hash, so every key
    stays in sight. A sweep run again finds each job's dir by what it is; `job<num>` when
    the job has no override of its own. Jobs with the same overrides are the same run: the
    second finds the first's dir and trains nothing more."""
    root = _root_ if _root_ is not None else OmegaConf.create()
    task = OmegaConf.select(root, "hydra.overrides.task", default=None) or []
    exclude = OmegaConf.select(root, "hydra.job.config.override_dirname.exclude_keys") or []
    items = [_short(str(o)) for o in task if str(o).split("=", 1)[0].lstrip("+~") not in exclude]
    return dir_name(",".join(sorted(items))) if items else f"job{num}"


_VALUE_BYTES = 32  # a longer override value is named by its head and a hash


def _short(override: str) -> str:
    key, sep, value = override.partition("=")
    if len(value.encode()) <= _VALUE_BYTES:
        return override
    return f"{key}{sep}{value[:12]}~{hashlib.sha1(value.encode()).hexdigest()[:8]}"


def hydra_subdir(resume: object, *, _root_: Any = None) -> str | None:
    """Where Hydra writes its .hydra/ files: nested when resuming, so the original stays;
    nowhere under torchrun but on rank 0, or when the job's dir already holds a run
    launched with other overrides. Hydra writes them before the job starts, and that job
    will refuse the dir (it holds another run's results), so writing them would relabel
    the other run: the sweep report reads a job's config from its .hydra/overrides.yaml (a
    sweep run again into the same sweep dir with other values did that)."""
    if resume:
        return ".hydra/resumed"
    if not_rank_0():
        return None  # torchrun: rank 0 writes them (and holds the dir); it may be refused
    if _root_ is not None:  # run_job has set the job's output dir by now
        out = OmegaConf.select(_root_, "hydra.runtime.output_dir", default=None)
        task = OmegaConf.select(_root_, "hydra.overrides.task", default=None)
        if out and task is not None and _launched_otherwise(Path(out), list(task)):
            return None
        if out and run_dir_holder(out) is not None:
            return None  # another process writes there: this job will be refused (pending)
    return ".hydra"


def _launched_otherwise(run_dir: Path, overrides: list[str]) -> bool:
    """The dir holds a run (its config.yaml) whose .hydra/ says other overrides. Without a
    config.yaml (a run stopped in its start-up) the dir holds no run and this one may take
    it: then its own .hydra/ must replace the stale one."""
    if not (run_dir / "config.yaml").exists():
        return False
    try:
        saved = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return False  # none yet (a new dir), or unreadable: Hydra writes them anew
    return isinstance(saved, list) and sorted(map(str, saved)) != sorted(overrides)


def job_log(path: str) -> str:
    """Hydra's job log file: <run dir>/train.log, but nowhere (os.devnull) on torchrun's ranks
    other than 0. Rank 0 holds the run dir, and before Hydra it may refuse it (another run
    writes there): the other ranks' Hydra would already have opened that run's train.log.
    They log warnings to their own console, stdout (runner/run/train.py quiet_rank)."""
    if not_rank_0() or run_dir_holder(Path(path).parent) is not None:
        return os.devnull  # or another process writes that dir: this job will be refused
    return path


def register() -> None:
    record_user_threads()
    OmegaConf.register_new_resolver("run_dir", run_dir, replace=True)
    OmegaConf.register_new_resolver("run_name", run_name, replace=True)
    OmegaConf.register_new_resolver("job_dir", job_dir, replace=True)
    OmegaConf.register_new_resolver("hydra_subdir", hydra_subdir, replace=True)
    OmegaConf.register_new_resolver("job_log", job_log, replace=True)
    OmegaConf.register_new_resolver("times", times, replace=True)
    OmegaConf.register_new_resolver("text_epoch_steps", text_epoch_steps, replace=True)
    OmegaConf.register_new_resolver("lecture_epochs", lecture_epochs, replace=True)
    OmegaConf.register_new_resolver("lecture_gamma", lecture_gamma, replace=True)
    OmegaConf.register_new_resolver("lecture_milestones", lecture_milestones, replace=True)
