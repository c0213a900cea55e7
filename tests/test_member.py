"""One start-up for single runs and fused members (#36, "no mirror left"): the same
build (threads, seed, model, optimizer, schedule), checkpointer and evaluation."""

from __future__ import annotations

import pytest
import torch

from runner.sweep import fused
from runner.sweep.fused import Member, train_group
from tests.helpers import make_cfg, one_torch_thread


def test_trainer_num_threads_holds_under_the_fused_launcher(tmp_path, monkeypatch):
    """A fused member builds as a single run does, trainer.num_threads included: its group
    trains on that many torch threads (it used to keep the launcher process's count)."""
    seen = []
    real = fused.StackedModels.train_batch

    def train_batch(self, batch):
        seen.append(torch.get_num_threads())
        return real(self, batch)

    monkeypatch.setattr(fused.StackedModels, "train_batch", train_batch)
    jobs = [["epochs=1", "logger=none", "trainer.num_threads=2", f"seed={s}"] for s in (0, 1)]
    group = [Member(make_cfg(*o), tmp_path / str(i), o, None) for i, o in enumerate(jobs)]
    with one_torch_thread():  # the launcher's own count; restored afterwards
        train_group(group)
    assert [m.result.status for m in group] == ["completed", "completed"]
    assert seen and set(seen) == {2}


def test_one_evaluate_gives_each_stacked_member_what_it_gives_the_model_alone():
    """runner/train/steps.py `evaluate` serves single runs ([N, classes] logits) and fused
    groups ([K, N, classes]): member k's numbers are its model's own."""
    from runner.data.sets import batches
    from runner.sweep.stacked import StackedNet
    from runner.train.models import MLP
    from runner.train.steps import evaluate

    torch.manual_seed(0)
    x, y = torch.randn(300, 1, 8, 8), torch.randint(0, 10, (300,))  # digits-shaped
    alone = [MLP(64, [32], 10, dropout=0.0) for _ in range(3)]

    def val():
        return batches(x, y, 128)

    losses, accs = evaluate(StackedNet(alone, sample_rank=3).eval(), val())
    for k, model in enumerate(alone):
        (loss,), (acc,) = evaluate(model.eval(), val())
        assert losses[k] == pytest.approx(loss, rel=1e-6) and accs[k] == acc
