"""Fixtures and hooks only: the helpers the tests share are in tests/helpers.py."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import WSD_TRUNK, make_cfg

# The tests' runs are W&B-offline whatever the shell says: WANDB_MODE=disabled (W&B's off
# switch, which the runner honours: runner/io/loggers.py wandb_wanted) would turn off the
# runs whose offline files the tests read back. Children get quiet_env, without it too.
os.environ.pop("WANDB_MODE", None)

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist runs one worker per core: one torch thread each avoids oversubscription,
    # in the worker and in the `python -m runner` children its tests start (the lecture's
    # sweeps took 3x their time alone on two threads each beside the other worker). A test
    # of the thread settings themselves passes its own environment.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)


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


@pytest.fixture(autouse=True)
def _schedlab_log_is_enabled() -> Iterator[None]:
    """Each test starts with the `schedlab` logger enabled and propagating to caplog's root
    handler: a logging set-up made by an earlier test in this worker's process (a Hydra run
    in process) can leave it disabled, and caplog then reads nothing (two flaky tests under
    xdist). Hydra's `hydra/job_logging=disabled` also leaves the root logger at ERROR,
    which drops the `schedlab` warnings before they reach caplog: the root is put back
    to logging's default, WARNING, and `schedlab` to inherit it."""
    log, root = logging.getLogger("schedlab"), logging.getLogger()
    before = log.disabled, log.propagate, log.level, root.level
    log.disabled, log.propagate = False, True
    log.setLevel(logging.NOTSET)
    root.setLevel(min(root.level, logging.WARNING))
    yield
    log.disabled, log.propagate = before[:2]
    log.setLevel(before[2])
    root.setLevel(before[3])


@pytest.fixture(scope="module")
def trunk(tmp_path_factory) -> Path:
    """A WSD trunk's run dir (tests/helpers.py WSD_TRUNK: epochs 3 and 5 kept), trained once
    per test module that branches from it; tests copy it before they change it."""
    from runner.run.train import train

    run_dir = tmp_path_factory.mktemp("trunk") / "run"
    assert train(make_cfg(*WSD_TRUNK), run_dir).status == "completed"
    return run_dir


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
