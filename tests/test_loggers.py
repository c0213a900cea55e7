"""Backends side by side: TensorBoard and W&B get the same keys and values as metrics.jsonl."""

from __future__ import annotations

import pytest

from runner.train import train
from tests.conftest import make_cfg, read_metrics, wandb_records


def tensorboard_scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_events_hold_the_metrics_jsonl_values(tmp_path):
    cfg = make_cfg(
        "logger=tensorboard", "scheduler=onecycle", "epochs=2", "trainer.log_every_n_steps=10",
        "trainer.progress=line",
    )  # fmt: skip
    train(cfg, tmp_path)
    scalars = tensorboard_scalars(tmp_path)
    epochs, steps = read_metrics(tmp_path), read_metrics(tmp_path, kind="step")
    for key in ("lr/group0", "train/loss", "train/acc", "val/loss", "val/acc"):
        # TensorBoard stores float32
        assert scalars[key] == [(r["epoch"], pytest.approx(r[key], rel=1e-6)) for r in epochs]
    assert scalars["lr_step/group0"] == [
        (s["trainer/global_step"], pytest.approx(s["lr_step/group0"], rel=1e-6)) for s in steps
    ]
    assert len(steps) == 46  # one-cycle: every optimizer step (2 epochs x 23 batches)
    assert [s for s, _ in scalars["train/step_loss"]] == [10, 20, 30, 40]


def test_two_loggers_at_once_get_the_same_rows(tmp_path):
    cfg = make_cfg("logger=[wandb,tensorboard]", "epochs=2", "trainer.progress=line")
    assert set(cfg.logger) == {"wandb", "tensorboard"}
    train(cfg, tmp_path)
    history = [r["history"]["item"] for r in wandb_records(tmp_path) if r["type"] == "history"]
    wandb_acc = [h["val/acc"] for h in history if "val/acc" in h]
    tb_acc = [v for _, v in tensorboard_scalars(tmp_path)["val/acc"]]
    jsonl_acc = [r["val/acc"] for r in read_metrics(tmp_path)]
    assert wandb_acc == pytest.approx(jsonl_acc) and tb_acc == pytest.approx(jsonl_acc, rel=1e-6)
