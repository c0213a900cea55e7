"""The runner's per-step path stays lean (issue #36: the bare runner within 5 % of a hand loop
on the digits MLP, whose 0.4 ms steps make every Python call per step count), and its lean
one-batch step trains exactly as the general one."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from runner.config.schema import run_spec
from runner.run.train import SingleModel
from runner.train.builders import build_run
from tests.helpers import make_cfg

ROOT = Path(__file__).resolve().parents[1]
COUNTED = (str(ROOT / "runner"), str(ROOT / "schedulers"), sys.modules["contextlib"].__file__)
# what a one-batch step may run in the project's Python (and contextlib's, for the
# context managers it enters): train_batch, _train_one, share, prepare, train_step,
# backward, the model's forward, clip_and_step, amp_ctx's enter and exit. It was 15 (lists,
# generator sums and a nullcontext per micro-batch) before the lean path; 12 with loss_of and
# hits, the loss and right answers of classifiers and (per token) of language models.
STEP_CALLS = 12


def _models(*overrides: str) -> SingleModel:
    spec = run_spec(make_cfg("trainer.device=cpu", "logger=none", *overrides))
    return SingleModel(spec, build_run(spec), torch.Generator().manual_seed(0))


def test_a_one_batch_step_runs_few_python_calls():
    models = _models()
    group = next(iter(models.batches(0)))
    models.train_batch(group)  # first-call work (lazy imports, optimizer state) out
    calls: list[str] = []

    def count(frame, event, arg):
        code = frame.f_code
        if event == "call" and code.co_filename.startswith(COUNTED):
            calls.append(f"{Path(code.co_filename).name}:{code.co_name}")

    sys.setprofile(count)
    try:
        models.train_batch(group)
    finally:
        sys.setprofile(None)
    assert len(calls) <= STEP_CALLS, "\n".join(calls)


@pytest.mark.parametrize("overrides", [(), ("trainer.grad_clip_norm=1.0", "trainer.average=ema")])
def test_the_one_batch_step_trains_as_the_general_step(overrides):
    """Same weights, sums, step loss and gradient norms, bit for bit, after three steps."""
    lean, general = _models(*overrides), _models(*overrides)
    batches = iter(lean.batches(0))
    general.batches(0)  # the sums reset, train mode, as the engine starts an epoch
    for _ in range(3):
        (batch,) = next(batches)
        lean_loss = lean.train_batch([batch])()
        general_loss = general._train_group([batch])()
        assert lean_loss == general_loss
    for a, b in zip(lean.run.model.parameters(), general.run.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(lean.loss_sum, general.loss_sum)
    assert torch.equal(lean.correct, general.correct)
    assert lean.grad_norms() == general.grad_norms() and lean.steps == general.steps == 3


def test_the_benchmark_ratios_are_taken_round_by_round():
    """The median and min of each round's a / b (in the second case not the ratio of the
    medians, 2 / 1.5: a slow round of one variant is not set against a fast one of the
    other)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from common import paired

    times = {"runner": [1.1, 4.4, 2.2], "hand": [1.0, 4.0, 2.0]}
    assert paired(times, "runner", "hand") == pytest.approx((1.1, 1.1))
    assert paired({"a": [1.0, 3.0], "b": [2.0, 1.0]}, "a", "b") == (1.75, 0.5)
