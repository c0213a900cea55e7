"""What a run at scale writes and what reaches W&B (session 19's QA of fused sweeps, DDP and
the loggers): the numbers a user reads there are the ones one process would give."""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from runner.run.check import validate
from runner.run.train import train
from runner.sweep.fused import Member, train_group
from schedulers import ConfigError
from tests.helpers import (
    make_cfg,
    one_torch_thread,
    read_metrics,
    torchrun,
    train_members,
    wandb_records,
)

# two epochs of the digits MLP with a step row every 5 optimizer steps; two micro-batches
# per step (each rank's share of a micro-batch is sliced from the global one)
STEP_ROWS = ["epochs=2", "trainer.log_every_n_steps=5", "data.batch_size=32",
             "trainer.accumulate=2", "trainer.checkpoint_interval_s=0"]  # fmt: skip


@pytest.mark.slow
def test_two_ranks_log_the_step_loss_one_process_logs(tmp_path):
    """train/step_loss under DDP is the global batch's mean loss, as train/loss is (the
    ranks' sums all-reduced): it was rank 0's own share's loss, 5 % off one process's."""
    ddp = torchrun(
        ["trainer.strategy=ddp", *STEP_ROWS, "logger=none", f"hydra.run.dir={tmp_path / 'ddp'}"],
        cwd=tmp_path,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    with one_torch_thread():
        one = train(make_cfg(*STEP_ROWS, "logger=none"), tmp_path / "one", overrides=STEP_ROWS)
    assert one.status == "completed"
    got, want = read_metrics(tmp_path / "ddp", "step"), read_metrics(tmp_path / "one", "step")
    assert [r["trainer/global_step"] for r in got] == [r["trainer/global_step"] for r in want]
    assert len(got) == 9  # 46 steps: 2 epochs of 45 batches of 32 (the last 29) in pairs
    for a, b in zip(got, want, strict=True):
        assert a["train/step_loss"] == pytest.approx(b["train/step_loss"], rel=1e-4)


def chart_axis(key: str, metrics: list[dict]) -> str | None:
    """The step metric W&B charts `key` against: an exact define_metric name first, else the
    first glob matching it (W&B's `*` matches `/` as fnmatch's does); None: its own _step."""
    exact = [m for m in metrics if m.get("name") == key]
    globbed = [m for m in metrics if fnmatch.fnmatchcase(key, m.get("glob_name", "\0"))]
    found = (exact or globbed or [{}])[0]
    return found.get("step_metric")


@pytest.mark.slow
def test_every_key_a_run_logs_is_charted_against_its_epoch_or_its_step_in_w_and_b(tmp_path):
    """momentum (onecycle), the EMA model's val_avg/* and momentum_step/* had no step metric:
    W&B charted them against its count of log calls (step rows included), so val_avg/acc
    sat at x = 23, 47 beside val/acc at epochs 0, 1."""
    overrides = ["epochs=2", "scheduler=onecycle", "trainer.average=ema",
                 "trainer.grad_clip_norm=1.0", "trainer.log_every_n_steps=10"]  # fmt: skip
    with one_torch_thread():
        assert train(make_cfg(*overrides), tmp_path, overrides=overrides).status == "completed"
    records = wandb_records(tmp_path)
    metrics = [r["metric"] for r in records if r["type"] == "metric"]
    epoch_keys, step_keys = set(), set()
    for row in read_metrics(tmp_path) + read_metrics(tmp_path, "step"):
        keys = step_keys if row.get("kind") == "step" else epoch_keys
        keys.update(k for k in row if k not in ("kind", "epoch", "trainer/global_step"))
    assert {"momentum/group0", "val_avg/acc", "val_avg/loss"} <= epoch_keys
    assert {"momentum_step/group0", "train/step_loss"} <= step_keys
    assert {k: chart_axis(k, metrics) for k in epoch_keys} == dict.fromkeys(epoch_keys, "epoch")
    assert {k: chart_axis(k, metrics) for k in step_keys} == dict.fromkeys(
        step_keys, "trainer/global_step"
    )


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def test_a_jobs_num_threads_ends_with_the_job_and_fused_group(tmp_path):
    """An in-process sweep's next job with trainer.num_threads=auto trains on the process's
    count: a job or fused group with num_threads=1 before it left the process on 1 thread."""
    job = ["epochs=1", "logger=none", "model.hidden=[8]", "trainer.num_threads=1"]
    with torch_threads(2):  # the process's own count, as `python -m runner` started it
        assert train(make_cfg(*job), tmp_path / "single").status == "completed"
        assert torch.get_num_threads() == 2
        group = train_members(tmp_path, [[*job, "seed=0"], [*job, "seed=1"]])
        assert [m.result.status for m in group] == ["completed", "completed"]
        assert torch.get_num_threads() == 2


def test_a_param_group_keyed_by_a_number_that_matches_nothing_is_a_config_error():
    """`{0: 0.5}` (YAML reads 0 as an int) named no parameter: a KeyError traceback, now the
    config error a typo'd name gets."""
    with pytest.raises(ConfigError, match="matches no parameter"):
        validate(make_cfg("optimizer.param_groups={0: 0.5}"))


def test_a_fused_members_warning_shown_during_training_names_its_job(tmp_path, caplog):
    """A member's warnings show while the group trains (its train.log gets them later): from
    K members, `loss 2.857 at epoch 0: run diverged` did not say which job diverged."""
    common = ["epochs=2", "logger=none", "model.hidden=[8]", "trainer.diverge_loss=2.45"]
    group = [
        Member(make_cfg(*common, f"optimizer.lr={lr}"), tmp_path / f"optimizer.lr={lr}", [], None)
        for lr in (0.05, 5.0)
    ]
    with caplog.at_level(logging.WARNING, logger="schedlab"):
        train_group(group)
    assert [m.result.status for m in group] == ["completed", "diverged"]
    (line,) = [r.getMessage() for r in caplog.records if "diverged" in r.getMessage()]
    assert line.startswith("optimizer.lr=5.0: loss "), line


def test_the_fused_page_names_every_model_the_launcher_stacks():
    """docs/fused.md lists the models that fuse: the registry's `fusable` ones, all of them."""
    from runner.train.models import MODELS

    page = (Path(__file__).resolve().parents[1] / "docs" / "fused.md").read_text()
    line = next(x for x in page.splitlines() if "fuse; other models" in x)
    named = set(re.findall(r"`(\w+)`", line.split("fuse;")[0]))
    assert named == {n for n, spec in MODELS.items() if spec.fusable}


def test_wandb_mode_disabled_in_the_environment_turns_w_and_b_off(tmp_path, monkeypatch):
    """WANDB_MODE=disabled is W&B's own off switch; the run's explicit mode= (offline) would
    override it inside wandb.init, so the runner reads it: no W&B run, no wandb/ dir,
    metrics.jsonl as ever. Any other value leaves logger.wandb.mode in charge."""
    from runner.io.loggers import wandb_wanted

    monkeypatch.setenv("WANDB_MODE", "disabled")
    small = ("logger=wandb", "epochs=1", "model.hidden=[16]", "data=fake")
    cfg = make_cfg(*small, "data.train_size=64", "data.val_size=32")
    assert train(cfg, tmp_path / "off").status == "completed"
    assert not (tmp_path / "off" / "wandb").exists()
    assert len(read_metrics(tmp_path / "off")) == 1
    assert not wandb_wanted("offline") and not wandb_wanted("disabled")
    monkeypatch.setenv("WANDB_MODE", "online")  # never turns a run online
    assert wandb_wanted("offline")
    monkeypatch.delenv("WANDB_MODE")
    assert wandb_wanted("offline") and not wandb_wanted("disabled")
