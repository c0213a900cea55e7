"""torchrun DDP on CPU (gloo): two ranks on global batch B train like one process on B."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner.core.config import validate
from runner.run.train import train
from schedulers import ConfigError
from tests.conftest import make_cfg, one_torch_thread, read_metrics

TORCHRUN = Path(sys.executable).parent / "torchrun"


def test_two_ranks_match_one_process_and_write_one_run(tmp_path):
    args = ["epochs=3", "scheduler=step", "scheduler.step_size=1", "scheduler.gamma=0.5",
            "data.batch_size=64", "trainer.progress=line"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env["OMP_NUM_THREADS"] = "1"
    ddp = subprocess.run(
        [str(TORCHRUN), "--standalone", "--nproc_per_node=2", "-m", "runner",
         "trainer.strategy=ddp", *args, f"hydra.run.dir={tmp_path / 'ddp'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    # one process on the whole batch: the job `python -m runner <args>` runs, in this process
    with one_torch_thread():
        one = train(make_cfg(*args, "logger=none"), tmp_path / "one", overrides=args)
    assert one.status == "completed"
    a, b = read_metrics(tmp_path / "ddp"), read_metrics(tmp_path / "one")
    assert [r["epoch"] for r in a] == [0, 1, 2]  # one metrics.jsonl, written once
    for ra, rb in zip(a, b, strict=True):
        assert ra["lr/group0"] == rb["lr/group0"]  # same schedule, stepped identically
        for key in ("train/loss", "train/acc", "val/loss", "val/acc"):
            assert ra[key] == pytest.approx(rb[key], abs=1e-4), key
    assert len(list((tmp_path / "ddp").glob("wandb/offline-run-*"))) == 1  # one W&B run


def test_ddp_outside_torchrun_is_a_config_error():
    with pytest.raises(ConfigError, match="torchrun"):
        validate(make_cfg("trainer.strategy=ddp"))


@pytest.mark.parametrize(
    ("env", "strategy", "joins"),
    [
        ({"LOCAL_RANK": "0", "WORLD_SIZE": "1"}, "ddp", True),  # torchrun, one process: asked
        ({"LOCAL_RANK": "0", "WORLD_SIZE": "1"}, "auto", False),  # nobody to join
        ({"LOCAL_RANK": "1", "WORLD_SIZE": "2"}, "auto", True),
        ({"LOCAL_RANK": "0", "WORLD_SIZE": "2"}, "single", False),
    ],
)
def test_which_launches_join_a_process_group(monkeypatch, env, strategy, joins):
    """`--nproc_per_node=1 ... trainer.strategy=ddp` joins (nccl + DDP on one GPU: the
    smoke run of benchmarks/gpu_smoke.sh); auto joins only with several ranks."""
    from runner.core.distributed import wanted

    for key in ("LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert wanted(strategy) is joins
