"""One sweep at a time per sweep dir, the jobs refused in it, and how the sweep ended.

- A sweep (or race) holds `<sweep dir>/.lock` for its whole life (an exclusive flock, as a
  run holds its run dir: runner/io/files.py; the kernel drops it when the process ends,
  however it ends). It is taken before Hydra writes multirun.yaml: by the CLI for a
  `hydra.sweep.dir=<dir>` given on the command line, else as the sweep starts (the sweep
  report's on_multirun_start, the race sweeper). A second sweep into a held dir is refused,
  one line naming hydra.sweep.dir, exit 2, writing nothing there: it would otherwise read
  the first one's jobs while they train (a race counted such a job as a loss, and its
  race.json and report.md replaced the first one's).
- A job refused because another process writes its dir (a `resume=` of it, a run with
  hydra.run.dir=<it>) is pending, never a loss: nothing is written into that dir, and the
  job is named in `<sweep dir>/refused.jsonl`, which the report and the race read. The
  next sweep to take the dir starts that record afresh.
- A sweep ends with an exit status as a single run would (`exit_status`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from runner.io import files
from runner.sweep.jobs import load_jobs
from schedulers import ConfigError

SWEEP_DIR_KEY = "hydra.sweep.dir"
REFUSED_FILE = "refused.jsonl"
EXIT_CONFIG, EXIT_CRASHED, EXIT_DIVERGED = 2, 1, 3

_TAKEN: dict[Path, files.RunDirLock] = {}  # the sweep dirs this process took, newest last


def take(sweep_dir: Path | str) -> None:
    """Hold the sweep dir for this process's sweep (again: nothing); a ConfigError naming
    hydra.sweep.dir if another process holds it, or if it cannot be made. A write error of
    a full or read-only disk (files.WRITE_ERRNOS) is left to the caller: Hydra's own write
    of multirun.yaml reports it in one line."""
    path = Path(sweep_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        lock = files.keep_run_dir(path)
    except files.RunDirBusy as err:
        who = f"another sweep (pid {err.pid})" if err.pid else "another sweep or run"
        raise ConfigError(
            SWEEP_DIR_KEY,
            str(path),
            f"{who} is writing into it; wait for it "
            f"to end (the same command then continues this sweep there), or "
            f"give another {SWEEP_DIR_KEY}",
        ) from None
    except OSError as err:
        if err.errno in files.WRITE_ERRNOS:
            raise
        raise ConfigError(SWEEP_DIR_KEY, str(path), f"cannot be made ({err.strerror})") from None
    if _TAKEN.get(path.resolve()) is lock:
        return  # taken already (by the CLI, before Hydra started this sweep)
    lock.claim()
    (path / REFUSED_FILE).unlink(missing_ok=True)  # this sweep's refusals, not the last one's
    _TAKEN.pop(path.resolve(), None)
    _TAKEN[path.resolve()] = lock


def held() -> Path | None:
    """The sweep dir this process holds (the newest it took), if any."""
    return list(_TAKEN)[-1] if _TAKEN else None


def take_or_exit(sweep_dir: Path | str) -> None:
    """`take`, for the hooks inside Hydra: a refusal is one line and exit 2, as before Hydra
    starts (an exception there would be Hydra's error and hint, exit 1)."""
    try:
        take(sweep_dir)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)


def record_refused(sweep_dir: Path | str, run_dir: Path | str, pid: int | None) -> None:
    """Name a job refused because another process (`pid`) writes its dir: pending. Best
    effort: a disk that cannot take the line costs a warning, the job is still not a loss
    (its dir holds no result of its own)."""
    line = {"dir": _name(Path(sweep_dir), Path(run_dir)), "pid": pid}
    try:
        files.append_line(Path(sweep_dir) / REFUSED_FILE, json.dumps(line))
    except (files.WriteFailed, OSError) as err:
        print(f"warning: could not record {run_dir} as pending ({err})", file=sys.stderr)


def _name(sweep_dir: Path, run_dir: Path) -> str:
    try:
        return str(run_dir.resolve().relative_to(sweep_dir.resolve()))
    except ValueError:  # hydra.sweep.subdir leads out of the sweep dir
        return str(run_dir)


def refused(sweep_dir: Path | str) -> list[dict[str, Any]]:
    """The jobs of the sweep's last start that were refused, each named once (`dir`, `pid`)."""
    seen: dict[str, dict[str, Any]] = {}
    for row in files.read_jsonl(Path(sweep_dir) / REFUSED_FILE):
        if isinstance(row.get("dir"), str):
            seen.setdefault(row["dir"], row)
    return list(seen.values())


def describe_refused(rows: list[dict[str, Any]]) -> str:
    names = ", ".join(
        f"`{r['dir']}`" + (f" (pid {r['pid']})" if r.get("pid") else "") for r in rows
    )
    return (
        f"{len(rows)} job(s) refused because another process was writing into their "
        f"dir: {names}; pending, not a loss: run the same command again once it "
        "ends"
    )


def exit_status(sweep_dir: Path | str) -> tuple[int, str] | None:
    """How a sweep that ran to its end exits, as a single run would: None (0) when a job
    completed and none is pending; 2 with jobs refused as pending; when no job completed,
    2 if every job failed its config check, 3 if every job diverged, else 1. With the
    line to print."""
    sweep_dir = Path(sweep_dir)
    pending = refused(sweep_dir)
    where = f"{SWEEP_DIR_KEY}={str(sweep_dir)!r}"  # as a ConfigError names it
    if pending:
        return EXIT_CONFIG, f"config error: {where}: {describe_refused(pending)}"
    jobs = load_jobs(sweep_dir)
    if not jobs or any(j.status == "completed" and j.readable for j in jobs):
        return None
    n = f"all {len(jobs)} job(s)"
    if all(j.config_error for j in jobs):
        first = (jobs[0].error or "").removeprefix("config error: ")
        return EXIT_CONFIG, f"config error: {where}: {n} failed their config check ({first})"
    if all(j.status == "diverged" for j in jobs):
        return EXIT_DIVERGED, f"error: {where}: {n} diverged (a smaller optimizer.lr?)"
    return EXIT_CRASHED, f"error: {where}: no job completed ({_counts(jobs)}; see report.md)"


def _counts(jobs: list[Any]) -> str:
    counts: dict[str, int] = {}
    for j in jobs:
        counts[j.status] = counts.get(j.status, 0) + 1
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))


def end() -> None:
    """At the end of a sweep this process held: exit as `exit_status` says (its line on
    stderr), or return (exit 0)."""
    if not _TAKEN:
        return  # a sweep whose dir no hook took (its sweep report callback removed)
    status = exit_status(list(_TAKEN)[-1])
    if status is not None:
        code, line = status
        print(line, file=sys.stderr)
        sys.exit(code)
