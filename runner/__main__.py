"""`python -m runner [overrides]`: the Hydra entry point. Heavy imports wait until a run starts,
so `--help` and config errors come back quickly.

Exit codes of a single run: 0 completed, 1 crashed (or an output could not be written:
one line names the file and the cause), 2 bad config, 3 diverged, 130/143
interrupted (SIGINT/SIGTERM). In a multirun every job catches its own failure, records
it in `status.json` and returns, so one bad job never stops the sweep (and the sweep
report still gets written); an interrupt stops the sweep. A sweep then exits as a single
run would when no job completed: 2 if every job failed its config check, 3 if every job
diverged, else 1; and 2 when a job was refused because another process writes its dir
(pending: the same command runs it once that process ends). A second sweep into a sweep
dir another one holds is refused, exit 2 (runner/sweep/sweepdir.py).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any, NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from runner import hints
from runner.cli import (
    EXIT_CONFIG,
    NO_COMPOSE,
    check_composition,
    config_dirs,
    config_error,
    make_run_dir,
    quote_run_dirs,
)
from runner.cli import given as given_overrides
from runner.config.compose import options_first, searched_first
from runner.dist.ddp import launch_rank, launched_by_torchrun, not_rank_0
from runner.io.files import (
    WRITE_ERRNOS,
    RunDirBusy,
    WriteFailed,
    holds_record,
    keep_run_dir,
    no_run_to_resume,
    read_json,
    run_dir_holder,
    write_json_atomic,
)
from runner.sweep import sweepdir
from runner.sweep.sweepdir import record_refused
from runner.train.stopping import SIGNALS, exit_on_signals, stop_on_signals
from schedulers import ConfigError

EXIT_DIVERGED = 3
EXIT_WRITE = 1  # an output file could not be written (disk full, read-only, I/O error)
log = logging.getLogger("schedlab")


def _mark_failed(run_dir: Path, error: str, config_error: bool = False) -> None:
    """Record a failed job in its status.json, unless that would lose a record: a completed
    run's status is never overwritten, and a config error (e.g. a resume refused for a
    damaged last.pt) leaves a dir that already holds a run as it was (files.holds_record:
    a failed start's status.json alone is replaced by the new error). Best effort: a disk
    that cannot take status.json costs a warning, not a second error. Only rank 0 (of
    torchrun, or of a multi-task submitit job) writes it: another rank fails too when rank 0
    stops (its collectives lose their peer), and must not overwrite how rank 0 ended."""
    if launch_rank() != 0:
        return
    path = run_dir / "status.json"
    current = read_json(path)
    if current is not None and current.get("status") == "completed":
        return
    if config_error and holds_record(run_dir):
        return
    try:
        write_json_atomic(path, {"status": "failed", "error": error})
    except (WriteFailed, FileNotFoundError) as err:
        log.warning(f"could not mark {run_dir} failed ({err})")


_CLI_STOP = None  # the signal flag `cli` installed for a single run, before Hydra starts

# What a failed or diverged job of a sweep returns. Not NaN: the Optuna sweeper
# (hydra-optuna-sweeper 1.3, _impl.py) passes a job's float to study.tell(state=COMPLETE);
# Optuna 2.10 rejects a NaN there (ValueError), and the sweeper's fallback,
# tell(state=FAIL, values=[nan]), raises "Values cannot be specified when state is ...
# FAIL", ending the study. Raising optuna.TrialPruned (or any exception) instead would be
# a FAIL that the sweeper counts against max_failure_rate (0.0 by default: the study stops
# too), with a traceback. So a failed or diverged trial is a COMPLETE one with the worst
# value the maximised objective (best val accuracy) can have: the study records it
# (status.json says failed or diverged), the sampler learns that region is bad, and
# study.best_trial is one of the others. Other sweepers ignore the value.
WORST_OBJECTIVE = 0.0


def _stop_with(signum: int | None, chain: bool) -> NoReturn:
    """End the process as the signal asked: through the handler it replaced when that one
    acts on it (e.g. submitit's SIGUSR2 handler requeues the job, which resumes), else with
    128 + the signal's number, which also stops a sweep."""
    if chain and signum is not None:
        signal.raise_signal(signum)
    sys.exit(128 + (signum or 0))


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """Returns the best val accuracy, the objective a Hydra sweeper (e.g. Optuna) maximises."""
    global _CLI_STOP
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    outer, _CLI_STOP = _CLI_STOP, None
    if outer is not None and multirun:  # a sweep after all (its preset says so): per job
        outer.restore()
        outer = None
    # the handlers are in place before torch is imported: a signal during start-up
    # leaves status.json `interrupted` (runner/train/stopping.py), not a traceback
    with contextlib.nullcontext(outer) if outer is not None else stop_on_signals() as stop:
        result = _run_job(cfg, hc, run_dir, multirun, stop)
        stop.restore()  # sets stop.chain
    failed = isinstance(result, float)  # a job of a sweep that failed (NaN)
    if not failed and result.status == "interrupted":
        if not multirun:
            say_how_to_resume(run_dir)
        _stop_with(result.signum, stop.chain)
    if multirun and stop.signum is not None:
        # the signal came after the job's last check (its last epoch, status.json): the job
        # is complete as recorded, and the sweep stops here as asked rather than losing it
        _stop_with(stop.signum, stop.chain)
    if failed:
        return WORST_OBJECTIVE
    if result.status == "diverged":
        if not multirun:
            sys.exit(EXIT_DIVERGED)
        return WORST_OBJECTIVE  # its best epoch came before the blow-up: not a candidate
    return result.best_val_acc


def say_how_to_resume(run_dir: Path) -> None:
    """An interrupted single run: the command that continues it (on rank 0, which holds
    the run dir). Stopped before its config.yaml was written, nothing of it was trained
    and resume= would have nothing to read: the same command starts it again."""
    if launch_rank() != 0:
        return
    if (run_dir / "config.yaml").is_file():
        how = hints.resume_run(run_dir, torchrun=launched_by_torchrun())
        print(f"continue it with: {how}", file=sys.stderr)
    else:
        print("nothing of it was trained yet: the same command starts it again", file=sys.stderr)


def say_how_to_continue_sweep(argv: list[str]) -> None:
    """An interrupted sweep: its own command into its own sweep dir (the one it held),
    which keeps the finished jobs and resumes the interrupted one."""
    held = sweepdir.held()
    if held is None:  # no hook took the dir (the sweep report callback removed)
        print("the same command with hydra.sweep.dir=<its sweep dir> continues it", file=sys.stderr)
        return
    print(f"continue the sweep with: {hints.continue_sweep(argv, held)}", file=sys.stderr)


def _run_job(cfg: DictConfig, hc: Any, run_dir: Path, multirun: bool, stop: Any) -> Any:
    """The run's Result, or (a job of a sweep that failed) NaN for the sweeper."""
    from runner.run.rundir import DirInUse, RunDirRefused  # these import torch: not for --help
    from runner.run.train import train

    try:
        return train(
            cfg,
            run_dir,
            overrides=list(hc.overrides.task),
            sweep_name="_".join(Path(hc.sweep.dir).parts[-2:]) if multirun else None,
            stop=stop,
        )
    except RunDirRefused as err:  # the dir is another run's: leave it exactly as it is
        print(f"config error: {err}", file=sys.stderr)
        if multirun:
            if isinstance(err, DirInUse):  # pending, not a loss: the sweep dir names it
                holder = run_dir_holder(run_dir)
                record_refused(hc.sweep.dir, run_dir, holder.pid if holder else None)
            return float("nan")
        sys.exit(EXIT_CONFIG)
    except ConfigError as err:
        # Hydra has already made the run dir; mark it so it is not mistaken for a run.
        _mark_failed(run_dir, f"config error: {err}", config_error=True)
        print(f"config error: {err}", file=sys.stderr)
        if multirun:
            return float("nan")
        sys.exit(EXIT_CONFIG)
    except WriteFailed as err:  # disk full, read-only, I/O error: one line, no traceback
        _mark_failed(run_dir, f"error: {err}")
        print(f"error: {err}", file=sys.stderr)
        if multirun:
            return float("nan")
        sys.exit(EXIT_WRITE)
    except Exception as err:
        if not multirun:
            _mark_failed(run_dir, repr(err))
            raise
        log.exception(f"job {hc.job.num} failed; the sweep goes on")
        _mark_failed(run_dir, repr(err))
        return float("nan")


def check_resume_dir(argv: list[str]) -> None:
    """`resume=<dir>` naming a dir that holds no run is a config error before Hydra starts:
    Hydra would otherwise create that dir (it is the run dir) only for the run to refuse it."""
    if NO_COMPOSE & set(argv) or "-m" in argv or "--multirun" in argv:
        return
    given = given_overrides(argv)
    value = given.get("resume", "")
    if "resume" in given and not value.strip():  # the run dir would be the working dir
        config_error(
            ConfigError(
                "resume",
                value,
                "give the run dir to continue (resume=<dir>), or true with hydra.run.dir=<dir>",
            )
        )
    if value.lower() in ("", "null", "none", "false"):
        return
    if value.lower() == "true" and not given.get("hydra.run.dir"):  # else a new dated dir
        why = "true continues the run in hydra.run.dir: give hydra.run.dir=<dir> too"
        config_error(ConfigError("resume", value, f"{why}, or resume=<dir>"))
    target = given.get("hydra.run.dir") if value.lower() == "true" else value
    if target and not (Path(target) / "config.yaml").is_file():
        config_error(ConfigError("resume", value, no_run_to_resume(target)))
    run_dir = given.get("hydra.run.dir")
    if value.lower() != "true" and run_dir and Path(run_dir).resolve() != Path(value).resolve():
        # the run goes on in <dir>; Hydra would put its train.log in the other dir
        config_error(
            ConfigError(
                "hydra.run.dir",
                run_dir,
                f"resume={value} continues the run in its own dir: drop hydra.run.dir",
            )
        )


def check_run_dir(argv: list[str]) -> None:
    """A single run into a dir that exists (hydra.run.dir=<dir>, or resume=<dir>) is checked
    before Hydra writes its .hydra/ and train.log there: another run writing into it, or
    (for a new run) another run's results in it, or (with resume=) an override the resume
    cannot apply, is a config error (exit 2) that leaves every file as it was; a complete
    run asked for nothing more says so and exits 0 (no W&B run, no file touched)."""
    if NO_COMPOSE & set(argv) or "-m" in argv or "--multirun" in argv:
        return
    if not_rank_0():
        return  # torchrun: rank 0 holds the run dir; the other ranks write nothing there
    given = given_overrides(argv)
    resume = given.get("resume", "")
    resuming = resume.lower() not in ("", "null", "none", "false")
    target = resume if resuming and resume.lower() != "true" else given.get("hydra.run.dir")
    if not target or "${" in target:
        # a new dated dir (microseconds in its name: no other run shares it), or a path made
        # from the config (hydra.run.dir=runs/${optimizer.lr}): the run's own lock guards it
        return
    existed = Path(target).is_dir()
    if (Path(target) / "multirun.yaml").is_file():  # a run's files would mix with the sweep's
        config_error(
            ConfigError(
                "resume" if target == resume else "hydra.run.dir",
                target,
                "is a sweep dir (it holds multirun.yaml): give the run a dir of its own",
            )
        )
    # runner.run.rundir imports torch (checkpoints): only for a run into a named dir
    from runner.run.rundir import busy
    from runner.run.rundir import check_run_dir as check

    if not make_run_dir(target):
        return  # a full or read-only disk: Hydra's write says so, in one line (exit 1)
    try:  # held from before Hydra writes .hydra/ there; the run takes it over
        keep_run_dir(target)
    except RunDirBusy as err:
        config_error(busy(err, "resume" if target == resume else "hydra.run.dir"))
    except OSError as err:
        if err.errno in WRITE_ERRNOS:
            return  # as above: Hydra's write of .hydra/ says so
        config_error(ConfigError("hydra.run.dir", target, f"cannot be written ({err.strerror})"))
    if not existed:
        return  # nothing in it to check
    dirs = config_dirs(argv)
    overrides = [a for a in argv if not a.startswith("-") and "=" in a and a not in dirs]
    try:
        done = check(Path(target), overrides, resuming, config_dirs=dirs)
    except ConfigError as err:
        config_error(err)
    if done is not None:
        print(done)
        sys.exit(0)


def check_sweep_dir(argv: list[str]) -> None:
    """A sweep into a named dir (hydra.sweep.dir=<dir>) takes that dir before Hydra writes
    multirun.yaml there, and holds it to its end: another sweep or race writing into it is
    a config error (exit 2) that leaves every file there as it was. A dir made from the
    config (the default's ${now:...}, a preset's) is taken as the sweep starts (the sweep
    report's on_multirun_start, the race sweeper): runner/sweep/sweepdir.py."""
    if NO_COMPOSE & set(argv) or not ("-m" in argv or "--multirun" in argv):
        return
    if {"--cfg", "-c", "--info", "-i"} & set(argv):
        return  # Hydra prints and runs nothing
    target = given_overrides(argv).get("hydra.sweep.dir")
    if not target or "${" in target:
        return
    try:
        sweepdir.take(target)
    except ConfigError as err:
        config_error(err)
    except OSError:
        return  # a full or read-only disk: Hydra's write of multirun.yaml says so (exit 1)


def _write_error(err: BaseException | None) -> OSError | None:
    """The disk-full/read-only OSError behind err, if any: logging's dictConfig wraps the one
    from opening train.log in a ValueError ("Unable to configure handler 'file'")."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError) and err.errno in WRITE_ERRNOS:
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _failed_file(err: OSError) -> str:
    """The file a failed write was writing. Only open() names it in the OSError; a write or
    close that fails (a disk that fills up: Hydra's `.hydra/config.yaml` opens, then its
    write fails) names none, so the open file in the innermost frame that held one does."""
    if err.filename:
        return str(err.filename)
    found, tb = "?", err.__traceback__
    while tb is not None:  # outermost frame first: the innermost one's file wins
        for value in tb.tb_frame.f_locals.values():
            if isinstance(value, io.IOBase) and isinstance(getattr(value, "name", None), str):
                found = value.name
        tb = tb.tb_next
    return found


def cli() -> None:
    global _CLI_STOP
    with exit_on_signals():  # checks that write nothing: a signal ends the command at once
        sys.argv[1:] = quote_run_dirs(options_first(sys.argv[1:]))
        note = check_composition(sys.argv[1:])  # None: a test's stand-in that checks nothing
        if note:
            print(note, file=sys.stderr)
        check_resume_dir(sys.argv[1:])
    multirun = "-m" in sys.argv or "--multirun" in sys.argv
    with ExitStack() as held:
        if not multirun:  # from before the run dir is made: a signal then is start-up's
            _CLI_STOP = held.enter_context(stop_on_signals())
        check_run_dir(sys.argv[1:])
        check_sweep_dir(sys.argv[1:])
        _launch(multirun)


def _launch(multirun: bool) -> None:
    """Hydra, with its errors told in one line (a single run's signal handlers are already
    in place: `cli`)."""
    # Hydra's own writes (.hydra/, the sweep dir) failing on a full or read-only disk: one
    # line, as for the runner's files. Hydra re-raises (instead of printing a trace and
    # exiting) only with HYDRA_FULL_ERROR set; every error of a job is handled in main().
    full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"  # the user asked for traces
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        with searched_first(config_dirs(sys.argv[1:])):  # the user's files win over conf/'s
            if multirun:
                try:
                    main()  # each job installs its handlers as it starts (a launcher may)
                except SystemExit as exit_:
                    if exit_.code in {128 + s for s in SIGNALS}:  # interrupted
                        say_how_to_continue_sweep(sys.argv[1:])
                    raise
                sweepdir.end()  # non-zero when no job completed or some are pending
                return
            main()
    except KeyboardInterrupt:  # Ctrl-C between two jobs of a sweep, where no job's handler is
        print("interrupted between two jobs of the sweep", file=sys.stderr)
        say_how_to_continue_sweep(sys.argv[1:])
        sys.exit(128 + signal.SIGINT)
    except Exception as err:
        cause = _write_error(err)
        if cause is not None:
            print(f"error: {WriteFailed(_failed_file(cause), cause)}", file=sys.stderr)
            sys.exit(EXIT_WRITE)
        if full_error:
            raise
        # what Hydra itself prints without HYDRA_FULL_ERROR: the error, not the trace
        print(
            f"{err}\n\nSet the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace.",
            file=sys.stderr,
        )
        sys.exit(1)


if __name__ == "__main__":
    cli()
