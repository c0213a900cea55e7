"""Shared helpers: compose configs in-process, run the CLI, read back what a run wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import DictConfig

from runner.compose import CONF as CONF  # re-exported for the tests
from runner.compose import compose_config

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


def wandb_records(run_dir: Path) -> list[dict]:
    """Every record of the run's offline .wandb file, decoded by W&B's own CLI."""
    (wandb_file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
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
