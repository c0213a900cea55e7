"""Shared helpers: compose configs in-process, run the CLI, read back what a run wrote."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from omegaconf import DictConfig

from runner.core.compose import CONF as CONF  # re-exported for the tests
from runner.core.compose import compose_config

WANDB_CLI = Path(sys.executable).parent / "wandb"

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist runs one worker per core: one torch thread each avoids oversubscription
    import torch

    torch.set_num_threads(1)


def make_cfg(*overrides: str) -> DictConfig:
    """The config `python -m runner <overrides>` would run, composed by Hydra's compose API."""
    return compose_config(list(overrides))


def read_metrics(run_dir: Path, kind: str = "epoch") -> list[dict]:
    """The epoch rows of a run's metrics.jsonl (or its step rows, kind="step")."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("kind", "epoch") == kind]


def run_cli(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    if os.environ.get("PYTEST_XDIST_WORKER"):
        env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class _ReachedHydra(BaseException):
    """cli_in_process: the command got past every check made before Hydra starts (not an
    Exception: cli() reports those as a failed run)."""


def cli_in_process(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m runner <args>` for a command that ends before Hydra starts (a config error,
    a refused or already complete run dir): runner.__main__.cli() itself, in this process,
    with its exit status and output as run_cli returns them, without a new interpreter's
    ~6 s of imports. A command that gets past those checks is run by run_cli instead, so
    the result is always what the real command gives."""
    import io

    import runner.__main__ as entry

    def reached_hydra() -> None:
        raise _ReachedHydra

    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        # cli() sets it for Hydra once the checks pass; "" reads as unset and is undone
        mp.setenv("HYDRA_FULL_ERROR", os.environ.get("HYDRA_FULL_ERROR", ""))
        mp.setattr(sys, "argv", ["runner", *args])
        mp.setattr(entry, "main", reached_hydra)
        mp.setattr(entry, "_CLI_STOP", None)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                entry.cli()
            code = 0
        except _ReachedHydra:
            code = None
        except SystemExit as exit_:  # as the interpreter turns it into an exit status
            code = exit_.code
            if code is None:
                code = 0
            elif not isinstance(code, int):
                print(code, file=err)
                code = 1
        finally:  # the run dir lock cli() took for the run it would start: not this process's
            release_kept_locks()
    if code is None:
        return run_cli(*args, cwd=cwd)
    return subprocess.CompletedProcess(["runner", *args], code, out.getvalue(), err.getvalue())


@pytest.fixture(autouse=True)
def _hydra_full_error_is_not_left_set() -> Iterator[None]:
    """runner.__main__.cli() sets HYDRA_FULL_ERROR=1 for the Hydra it starts; a test that
    calls it in this process must not leave it set for the next test's subprocesses (with
    it, Hydra's errors print their stack trace and Ctrl-C in a sweep is re-raised)."""
    before = os.environ.get("HYDRA_FULL_ERROR")
    yield
    if before is None:
        os.environ.pop("HYDRA_FULL_ERROR", None)
    else:
        os.environ["HYDRA_FULL_ERROR"] = before


def release_kept_locks() -> None:
    """Drop the run-dir locks the CLI took for a run (files.keep_run_dir) that this test
    process will not start."""
    from runner.core import files

    for lock in files._KEPT.values():
        os.close(lock.fd)
    files._KEPT.clear()


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """torch on one CPU thread, as in a `python -m runner` started with OMP_NUM_THREADS=1 (what
    run_cli gives its processes under xdist): the same float sums, so the same metrics."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def wandb_records(run_dir: Path, newest: bool = False, index: int | None = None) -> list[dict]:
    """Every record of the run's offline .wandb file, decoded by W&B's own CLI (`newest`:
    of its newest, when a resume has written another; `index`: of the index-th, oldest
    first; else there must be one)."""
    found = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"), key=lambda p: p.stat().st_mtime)
    if index is not None:
        found = [found[index]]
    (wandb_file,) = found[-1:] if newest else found
    out = subprocess.run(
        [str(WANDB_CLI), "leet", "inspect", "--json", str(wandb_file)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.fixture
def cfg_factory():
    return make_cfg


# Module-scoped fixtures that several tests share, the most expensive first (the lecture
# page: a minute of training). Their tests run before all others, each fixture's together:
# pytest-xdist gives each worker a first share of consecutive tests, so a fixture's tests
# are not spread over two workers that would each build it, and the longest set-up starts
# at once instead of holding the run up at its end. Otherwise the order is the file order.
SHARED_FIXTURES_FIRST = ("page", "basic_race", "full_disk", "finished_run", "cosine_run")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def group(item: pytest.Item) -> int:
        used = getattr(item, "fixturenames", ())
        return next(
            (i for i, name in enumerate(SHARED_FIXTURES_FIRST) if name in used),
            len(SHARED_FIXTURES_FIRST),
        )

    items.sort(key=group)  # stable


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """`-n N` (xdist's --dist load) by work stealing (--dist worksteal): each worker starts on
    an equal share of the tests in order, and one that runs out takes half of what another
    has not started. These tests last from milliseconds to a minute, so handing them out in
    fixed batches can leave one worker idle at the end while the other still has a queue."""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import WorkStealingScheduling

    return WorkStealingScheduling(config, log)
