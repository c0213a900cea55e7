"""Backends side by side: TensorBoard and W&B get the same keys and values as metrics.jsonl."""

from __future__ import annotations

import pytest

from runner.run.train import train
from tests.helpers import make_cfg, read_metrics, tensorboard_scalars, wandb_records


def test_tensorboard_events_hold_the_metrics_jsonl_values(tmp_path):
    cfg = make_cfg(
        "logger=tensorboard",
        "scheduler=onecycle",
        "epochs=2",
        "trainer.log_every_n_steps=10",
        "trainer.progress=line",
    )
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


@pytest.mark.slow
def test_two_loggers_at_once_get_the_same_rows(tmp_path):
    cfg = make_cfg("logger=[wandb,tensorboard]", "epochs=2", "trainer.progress=line")
    assert set(cfg.logger) == {"wandb", "tensorboard"}
    train(cfg, tmp_path)
    history = [r["history"]["item"] for r in wandb_records(tmp_path) if r["type"] == "history"]
    wandb_acc = [h["val/acc"] for h in history if "val/acc" in h]
    tb_acc = [v for _, v in tensorboard_scalars(tmp_path)["val/acc"]]
    jsonl_acc = [r["val/acc"] for r in read_metrics(tmp_path)]
    assert wandb_acc == pytest.approx(jsonl_acc) and tb_acc == pytest.approx(jsonl_acc, rel=1e-6)


class Recorder:
    """Stands in for a W&B run: records what reaches it, in order."""

    id = "recorder"

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.summary: dict = {}  # run.summary.update(...) is a dict update

    def log(self, row: dict) -> None:
        self.rows.append(row)


def test_backend_rows_go_out_in_batches_in_order_and_all_by_the_end(tmp_path):
    """Short epochs: rows wait (at most send_every_s) and go as one batch; metrics.jsonl
    gets each at once. The summary and the end of the run send whatever still waits."""
    from runner.io.background import Background
    from runner.io.loggers import RunLogger

    run = Recorder()
    with Background() as background:
        logger = RunLogger(tmp_path, wandb_run=run, background=background, send_every_s=60)
        for epoch in range(3):
            logger.log_step({"trainer/global_step": epoch, "epoch": epoch, "train/step_loss": 1.0})
            logger.log_epoch({"epoch": epoch, "val/acc": epoch / 10})
        background.flush()
        assert run.rows == []  # waiting: less than send_every_s has passed
        assert [r["epoch"] for r in read_metrics(tmp_path)] == [0, 1, 2]  # the record is written
        logger.summary({"best/val_acc": 0.2})
        background.flush()
        assert [r["epoch"] for r in run.rows] == [0, 0, 1, 1, 2, 2]  # step row, epoch row, ...
        assert "kind" not in run.rows[0] and run.rows[0]["train/step_loss"] == 1.0
        assert run.summary == {"best/val_acc": 0.2}  # after the rows

        logger.send_every_s = 0  # long epochs: each row goes as it is logged
        logger.log_epoch({"epoch": 3, "val/acc": 0.3})
        background.flush()
        assert run.rows[-1] == {"epoch": 3, "val/acc": 0.3}
        logger.log_epoch({"epoch": 4, "val/acc": 0.4})
        logger.flush()
        assert [r["epoch"] for r in run.rows[-2:]] == [3, 4]
