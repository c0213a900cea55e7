"""A run dir's rules: one run per dir, resume= and what it may change, a finished run left
alone. Checked by the CLI before Hydra writes (check_run_dir) and by the run itself."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict

from runner.config.compose import compose_config
from runner.config.later import with_later_keys
from runner.data.fingerprint import absolute_roots, check_same_data
from runner.io import checkpoint, files
from runner.run.check import Checked, fill_inferred, validate
from runner.train.engine import Result, scores
from schedulers import ConfigError
from schedulers.binder import plain

log = logging.getLogger("schedlab")


class RunDirRefused(ConfigError):
    """This run may not write into its run dir: another run is writing there, or the dir
    holds another run's results. Nothing in the dir is touched, status.json included."""


class DirInUse(RunDirRefused):
    """Refused because another process is writing into the dir (not for what it holds): a
    sweep counts such a job pending, never a loss (runner/sweep/sweepdir.py). `pid`: the
    holder's, if it wrote one."""

    pid: int | None = None


def saved_config_path(resume: Any, run_dir: Path) -> Path:
    """The dir `resume=` names: its value, or (resume=true) the Hydra run dir."""
    target = run_dir if resume is True else Path(str(resume))
    if not (target / "config.yaml").is_file():
        raise ConfigError("resume", str(resume), files.no_run_to_resume(target))
    return target


def yaml_problem(err: Exception) -> str:
    """What a YAML parser found wrong, and where: `line 24, column 1: could not find
    expected ':'`. Its own text names the file twice first, so one line cut to length kept
    the file's name and lost the problem."""
    problem = getattr(err, "problem", None)
    # where the construct it could not finish starts (the line with the typo), else where
    # it gave up
    mark = getattr(err, "context_mark", None) or getattr(err, "problem_mark", None)
    if mark is not None and problem:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return " ".join(str(err).split())[:120]


def read_saved_config(target: Path, value: object) -> DictConfig:
    """A run dir's config.yaml, or a ConfigError (key `resume`) saying why it cannot be used."""
    try:
        saved = OmegaConf.load(target / "config.yaml")
    except Exception as err:  # not YAML at all (a hand edit's typo, a damaged disk)
        why = f"{type(err).__name__}: {yaml_problem(err)}"
        last = target / checkpoint.LAST
        raise ConfigError(
            "resume",
            str(value),
            f"{target}/config.yaml is damaged ({why}): fix it there (the config the run "
            f"trained with is in {last}: torch.load(...)['config'])",
        ) from None
    if not isinstance(saved, DictConfig):
        raise ConfigError("resume", str(value), f"{target}/config.yaml is not a run config")
    if not saved:  # not an edit to report key by key: the file lost its contents
        raise ConfigError("resume", str(value), f"{target}/config.yaml is empty (damaged)")
    OmegaConf.set_struct(saved, True)
    return saved


def load_resume(
    resume: Any, run_dir: Path
) -> tuple[DictConfig, Path, dict[str, Any] | None, list[str]]:
    """`resume=<run dir>` (or `resume=true` in the Hydra run dir): its saved config, the dir,
    its last checkpoint (None when it stopped before writing one), and the edits made to
    config.yaml by hand since that checkpoint, as `key=value` texts (edit_changes). Only
    the value of `resume` is read: the rest of the config given is the caller's."""
    target = saved_config_path(resume, run_dir)
    checkpoint.remove_orphans(target)  # temp files of writes a kill -9 cut short
    saved = read_saved_config(target, resume)
    if not (target / checkpoint.LAST).exists() and not (target / checkpoint.BEST).exists():
        log.info(f"{target} has no checkpoint yet (stopped in its first epoch): starting over")
        return with_later_keys(saved), target, None, []
    state = checkpoint.load(target / checkpoint.LAST)
    changes = edit_changes(saved, state, target)
    return with_later_keys(saved), target, state, changes


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
    old = _leaves(plain(trained_cfg))
    new = _leaves(plain(saved))
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
    "name",  # names a new run's dir; a resumed run stays in its own
    "trainer.progress",
    "trainer.checkpoint_interval_s",
    "trainer.log_every_n_steps",
    "trainer.keep_epochs",  # more epochs kept to branch from, e.g. with a longer trunk
    "logger",
)
_ABSENT = object()


def _override_keys(overrides: Sequence[str]) -> dict[str, str]:
    """The config keys (or groups) the overrides set -> the value as given; resume= and
    hydra.* left out."""
    try:
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


def _first_overrides(run_dir: Path) -> list[str]:
    """The overrides the run was launched with (its .hydra/overrides.yaml, which a resume
    keeps): a sweep job of a preset continued by its sweep gives its `+experiment=` again,
    a group choice no config key holds."""
    try:
        found = OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")
    except Exception:  # missing or damaged: no launch to match
        return []
    if not OmegaConf.is_list(found):
        return []
    # as written: an override like +model.classes=${data.num_classes} is text, not resolved
    return [str(o) for o in OmegaConf.to_container(found, resolve=False)]


def swa_extend_blocker(trainer: Any) -> tuple[str, str] | None:
    """trainer.average=swa with swa_start null starts SWA at 3/4 of the run (and
    trainer.swa_lr with it): more epochs would move a start the run may have passed."""
    if trainer.get("average") == "swa" and trainer.get("swa_start") is None:
        return "trainer.swa_start", "trainer.swa_start is null: SWA starts at 3/4 of the run"
    return None


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
    first = _override_keys(_first_overrides(run_dir))
    for key, text in texts.items():
        new = plain(OmegaConf.select(given, key, default=_ABSENT))
        old = plain(OmegaConf.select(saved, key, default=_ABSENT))
        if new is not _ABSENT and new == old:
            continue
        if new is _ABSENT and old is _ABSENT and first.get(key, _ABSENT) == text:
            continue  # a group choice the run was launched with (+experiment=...)
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
    blocker = extend_blocker(saved.scheduler) or swa_extend_blocker(saved.trainer)
    if blocker is not None:
        key, why = blocker
        how = (
            "use a schedule with explicit lengths"
            if key == "scheduler"
            else f"set {key}"
            if key.startswith("trainer.")
            else f"set {key} (in units of scheduler.interval)"
        )
        raise ConfigError(
            "epochs",
            new,
            f"cannot extend {run_dir} from {old} epochs: {why}, so more epochs would stretch "
            f"a schedule the run has already followed; {how} in a run you mean to extend, or "
            f"start a new run with epochs={new}",
        )


def finished(status: dict[str, Any] | None, epochs: int) -> dict[str, Any] | None:
    """A run dir's status.json record (None: it has none) if it says the run completed all
    `epochs`, else None. The caller reads the file once for every question it asks."""
    if status is None or status.get("status") != "completed":
        return None
    done = status.get("epochs_done")
    return status if isinstance(done, int) and done >= epochs else None


def diverged_from(status: dict[str, Any] | None, epoch: int) -> dict[str, Any] | None:
    """A run dir's status.json record if it says the run diverged in epoch `epoch`, the one
    its last.pt continues from (None if it did not): the same config from the same
    checkpoint only diverges again, so the same command run again trains nothing (resume=
    with changes does)."""
    if status is None or status.get("status") != "diverged":
        return None
    return status if status.get("epochs_done") == epoch + 1 else None


def nothing_to_do(run_dir: Path, status: dict[str, Any], cfg: DictConfig) -> str:
    """The line for a run with nothing left to train. Its way to more epochs is resume= only
    where the run can be extended (the default cosine cannot: T_max null)."""
    if status.get("status") == "diverged":
        return (
            f"{run_dir} diverged in epoch {status['epochs_done'] - 1} ({scores(status)}): "
            "nothing to do, the same config "
            "diverges again from its last.pt; try a smaller optimizer.lr in a new run"
        )
    done = f"{run_dir} is already complete ({status['epochs_done']} epochs, {scores(status)})"
    blocker = extend_blocker(cfg.scheduler) or swa_extend_blocker(cfg.trainer)
    if blocker is not None:
        return (
            f"{done}: nothing to do; it cannot be extended ({blocker[1]}): to train longer, "
            "start a new run with epochs=<more>"
        )
    return f"{done}: nothing to do; to train longer: resume={run_dir} epochs=<more>"


# -- one run per run dir -------------------------------------------------------------------------
def same_run_on_disk(cfg: DictConfig, run_dir: Path) -> bool:
    """run_dir holds a checkpoint of this very config: a run to continue, not to redo."""
    return (run_dir / checkpoint.LAST).exists() and _same_config(run_dir, cfg)


def _same_config(run_dir: Path, cfg: DictConfig) -> bool:
    """run_dir/config.yaml is this config's. With optimizer.lr=find it holds the lr the range
    test found (and onecycle/cyclic's max_lr/base_lr reset): compared as given. One written
    before data paths were made absolute (fingerprint.absolute_roots) is compared with its
    relative paths as this cwd reads them: the same command from the same cwd continues it."""
    try:
        saved_text = (run_dir / "config.yaml").read_text()
    except (OSError, UnicodeDecodeError):
        return False
    wanted = OmegaConf.to_yaml(cfg, resolve=True)
    if saved_text == wanted:
        return True
    find = OmegaConf.select(cfg, "optimizer.lr") == "find"
    try:
        saved = OmegaConf.create(saved_text)
        old = isinstance(saved.get("data"), DictConfig)
        made = old and absolute_roots(saved)
        filled = old and fill_inferred(saved)  # a config.yaml from before it was recorded
        if not (made or filled or find):
            return False  # no relative data path, no found lr: the text says it all
        if find:
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
    new = flat(plain(cfg))
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


# the key that names a run's dir, and so the way out: a sweep job's dir comes from the sweep's
RUN_DIR_KEY, SWEEP_DIR_KEY = "hydra.run.dir", "hydra.sweep.dir"


def refuse_other_run(run_dir: Path, cfg: DictConfig, key: str = RUN_DIR_KEY) -> None:
    why = other_run_in(run_dir, cfg)
    if why is not None:
        raise RunDirRefused(
            key,
            str(run_dir),
            f"{why}; a new run would mix its files with that one's. To continue that run: "
            f"resume={run_dir}; for a new run: another {key} (or none: a new dated dir)",
        )


def busy(err: files.RunDirBusy, key: str = RUN_DIR_KEY) -> DirInUse:
    """`key`: what named the dir (hydra.run.dir, hydra.sweep.dir, or resume=<dir>)."""
    who = f"another run (pid {err.pid})" if err.pid else "another run"
    way_out = (
        "wait for it to end, then run this again"
        if key == "resume"
        else f"wait for it to end (resume={err.run_dir} then continues it), or give another {key}"
    )
    refused = DirInUse(key, str(err.run_dir), f"{who} is writing into it; {way_out}")
    refused.pid = err.pid
    return refused


def hold(run_dir: Path, held: ExitStack, key: str = RUN_DIR_KEY) -> files.RunDirLock:
    """run_dir made and its lock held in `held` (until the run ends), as a single run and
    each fused member (runner/sweep/fused.py) hold theirs; DirInUse naming `key` when
    another process holds it. The caller claims the lock once the run passed its checks."""
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        return held.enter_context(files.hold_run_dir(run_dir))
    except files.RunDirBusy as err:
        raise busy(err, key) from None


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
    else:
        absolute_roots(given)  # as the run makes them: config.yaml has them so
        fill_inferred(given)  # data.num_classes: null, read from the data, likewise
        if not same_run_on_disk(given, run_dir):
            refuse_other_run(run_dir, given)
            return None
        saved = given
    if not last.exists():
        return None  # a run that stopped before its first checkpoint: started over
    # as the run itself would: a damaged last.pt is refused, and it is the last epoch's
    state = state if state is not None else checkpoint.load(last)
    status = finished(files.read_json(run_dir / "status.json"), saved.epochs)
    if status is not None and state["progress"]["epoch"] >= saved.epochs:
        return nothing_to_do(run_dir, status, saved)
    check_same_data(state, plain(saved.data))  # a run to continue: on the data it trained on
    return None


def keep_rows_before(metrics: Path, epoch: int) -> None:
    """Rows logged after the checkpoint was written are redone by the resumed run; a line
    torn by a kill or a full disk is dropped (read_jsonl warns about it)."""
    if metrics.exists():
        kept = [r for r in files.read_jsonl(metrics) if isinstance(r.get("epoch"), int)]
        lines = [json.dumps(r) + "\n" for r in kept if r["epoch"] < epoch]
        files.write_text_atomic(metrics, "".join(lines))


@dataclass
class Start:
    """How a run starts, as rank 0 read it from the run dir (`decide`); under DDP the
    other ranks receive it whole, the loaded last.pt included."""

    cfg: DictConfig | None  # the resumed run's saved config (None: the config given)
    run_dir: Path
    checked: Checked | None = None  # what validating the resumed config found (None: as given)
    resuming: bool = False
    state: dict[str, Any] | None = None
    changes: list[str] = field(default_factory=list)
    done: Result | None = None  # nothing left to train


def decide(
    cfg: DictConfig,
    run_dir: Path,
    overrides: Sequence[str],
    dist: Any,
    held: ExitStack,
    dir_key: str = RUN_DIR_KEY,
) -> Start:
    """Rank 0's (or a single process's) look at the run dir, its lock held in `held` for
    the rest of the run: the same config in the same dir continues from last.pt (a requeued
    job, or the same command run again), another run's files are refused, naming `dir_key`
    (hydra.sweep.dir for a sweep's job)."""
    resuming = bool(cfg.resume)
    if resuming:
        run_dir = saved_config_path(cfg.resume, run_dir)  # nothing is created for a missing run
    lock = None
    if dist.is_main:  # only rank 0 writes, so only rank 0 holds the run dir
        named = isinstance(cfg.resume, str) and cfg.resume.lower() != "true"  # resume=<dir>
        lock = hold(run_dir, held, "resume" if named else dir_key)
    if not resuming and same_run_on_disk(cfg, run_dir):
        # a requeued job (Slurm time-out/preemption) or the same command run again into
        # the same dir: continue instead of starting over
        log.info(f"{run_dir} holds a checkpoint of this same config: resuming it")
        cfg.resume, resuming = True, True
    elif not resuming:
        refuse_other_run(run_dir, cfg, dir_key)
    if not resuming:
        if lock is not None:
            lock.claim()
        return Start(None, run_dir)
    given = cfg
    cfg, run_dir, state, changes = load_resume(given.resume, run_dir)
    status = files.read_json(run_dir / "status.json")  # read once, asked three things
    if state is not None:
        if not state.get("rows_sent", True):
            # a fused member's checkpoint; its status.json says whether the launcher has
            # sent its rows since (then a resume, e.g. one that extends it, must not send
            # them again)
            state["rows_sent"] = (status or {}).get("rows_sent") is True
        elif checkpoint.rows_lost(state, status):
            log.info(
                "the process that wrote its last.pt did not end cleanly (killed?), so "
                "W&B/TensorBoard may lack its rows: sending the kept rows again"
            )
            state["rows_sent"] = False
    changes += apply_resume_overrides(cfg, given, overrides, run_dir)
    checked = validate(cfg, trunk=state is None)  # a branch with a last.pt needs no trunk
    start_epoch = state["progress"]["epoch"] if state else 0
    ended = finished(status, cfg.epochs) if start_epoch >= cfg.epochs else None
    if ended is None and not changes:
        ended = diverged_from(status, start_epoch)
    if ended is not None:  # nothing to train: no W&B run, no file touched
        log.info(nothing_to_do(run_dir, ended, cfg))
        diverged = ended["status"] == "diverged"
        epochs_done = ended["epochs_done"] if diverged else start_epoch
        done = Result(ended["status"], ended.get("best_val_acc", 0.0), epochs_done)
        return Start(cfg, run_dir, checked, True, state=state, done=done)
    if state is not None:  # other data than the checkpoint's: refused, every file as it was
        check_same_data(state, plain(cfg.data))
    if lock is not None:
        lock.claim()
    return Start(cfg, run_dir, checked, True, state, changes)
