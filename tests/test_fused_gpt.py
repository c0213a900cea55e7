"""Fused sweeps of GPTs (runner/sweep/stacked_gpt.py): K stacked GPTs compute what each one
computes, a fused group's jobs end as separate runs end (rows and checkpoints), and a fused
sweep's jobs equal the basic launcher's, without the "runs on its own" notice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from runner.run.train import train
from runner.sweep.fused import why_not_fusable
from runner.sweep.stacked_gpt import StackedGPT
from runner.train.gpt import GPT
from tests.helpers import (
    GPT_ON_TOKENS,
    assert_same_rows,
    job_dirs,
    make_cfg,
    one_torch_thread,
    read_metrics,
    run_cli,
    train_members,
)

ROOT = Path(__file__).resolve().parents[1]


def gpts(seeds: list[int], bias: bool) -> list[GPT]:
    out = []
    for seed in seeds:
        torch.manual_seed(seed)
        out.append(GPT(16, 8, 2, 2, 16, 0.0, bias))
    return out


@pytest.mark.parametrize("bias", [False, True])
def test_stacked_gpts_compute_what_each_gpt_computes(bias):
    """Logits and every gradient (the tied head's included) equal each member's own, up to
    rounding: batched matmuls may sum in another order than nn.Linear."""
    members = gpts([0, 1, 2], bias)
    net = StackedGPT(members)
    x, y = torch.randint(0, 16, (3, 4, 8)), torch.randint(0, 16, (3, 4, 8))
    out = net(x)
    assert out.shape == (3, 4, 8, 16)
    torch.testing.assert_close(out, torch.stack([m(x[i]) for i, m in enumerate(members)]))
    shared = torch.stack([m(x[0]) for m in members])  # one batch for all (validation)
    torch.testing.assert_close(net(x[0]), shared)
    torch.testing.assert_close(net(x[:1]), shared)
    four = StackedGPT(gpts([0, 1, 2, 3], bias))  # members 0, 1 read batch 0; 2, 3 batch 1
    pairs = torch.stack([m(x[i // 2]) for i, m in enumerate(gpts([0, 1, 2, 3], bias))])
    torch.testing.assert_close(four(x[:2]), pairs)
    with pytest.raises(ValueError, match="must divide"):
        four(x)

    for i, m in enumerate(members):
        F.cross_entropy(m(x[i]).flatten(0, -2), y[i].flatten()).backward()
    loss = F.cross_entropy(out.flatten(0, -2), y.flatten(), reduction="none").view(3, -1)
    loss.mean(1).sum().backward()
    for p, (stacked, sources) in enumerate(zip(net.stacked_params(), net.sources, strict=True)):
        for k, source in enumerate(sources):
            grad = net.as_member(p, stacked.grad[k])
            torch.testing.assert_close(grad, source.grad, rtol=1e-5, atol=1e-7)

    with torch.no_grad():  # a checkpoint's weights: the member's own, its head still tied
        for stacked in net.stacked_params():
            stacked.add_(1.0)
    net.unstack_into(1)
    torch.testing.assert_close(net(x[1])[1], members[1](x[1]))
    assert members[1].lm_head.weight is members[1].wte.weight


def test_a_gpt_job_fuses_unless_its_dropout_draws_from_the_global_rng():
    assert why_not_fusable(make_cfg(*GPT_ON_TOKENS)) is None
    assert "dropout" in why_not_fusable(make_cfg(*GPT_ON_TOKENS, "model.dropout=0.1"))


def tensors(state: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    """A checkpoint's tensors by path (nested dicts and lists flattened)."""
    out = {}
    items = state.items() if isinstance(state, dict) else enumerate(state)
    for key, value in items:
        if isinstance(value, torch.Tensor):
            out[f"{prefix}{key}"] = value
        elif isinstance(value, (dict, list, tuple)):
            out.update(tensors(value, f"{prefix}{key}."))
    return out


@pytest.mark.slow
def test_fused_gpts_end_as_separate_runs_rows_and_checkpoints(tmp_path):
    """Three GPTs with AdamW's decay/no-decay groups, two seeds (members of seed 1 share
    their batches), a schedule, gradient clipping, step rows and EMA: each member's rows
    equal its separate run's, and its last.pt holds what the separate run's does (same
    keys: the ordinary runner resumes it), weights, AdamW state and average alike."""
    common = [*GPT_ON_TOKENS, "epochs=3", "optimizer.weight_decay=0.1", "trainer.average=ema"]
    jobs = [
        [*common, "seed=0"],
        [*common, "seed=1", "scheduler=cosine", "optimizer.lr=0.003"],
        [*common, "seed=1", "trainer.grad_clip_norm=0.5", "trainer.log_every_n_steps=3"],
    ]
    members = train_members(tmp_path, jobs)
    for i, (member, overrides) in enumerate(zip(members, jobs, strict=True)):
        separate = tmp_path / "separate" / str(i)
        assert train(make_cfg(*overrides), separate).status == "completed"
        assert_same_rows(member.run_dir, separate)
        row = read_metrics(member.run_dir)[-1]
        assert {"val/bpb", "val_avg/loss", "lr/decay", "lr/no_decay"} <= row.keys()
        assert json.loads((member.run_dir / "status.json").read_text())["fused_jobs"] == 3
        fused, ref = (
            tensors(torch.load(d / "last.pt", weights_only=False))
            for d in (member.run_dir, separate)
        )
        assert fused.keys() == ref.keys()
        assert "model.lm_head.weight" in fused and "average.module.lm_head.weight" in fused
        for key, value in ref.items():
            if not key.startswith("rng"):  # the data order's generator: compared by rows
                torch.testing.assert_close(fused[key], value, rtol=1e-4, atol=1e-6, msg=key)


@pytest.mark.slow
def test_fused_gpts_on_text_draw_their_windows_as_separate_runs_do(tmp_path):
    """data=text draws each batch's window offsets from the run's generator as it goes
    (not a permutation): each member's stream draws them as its separate run would."""
    common = [
        "model=gpt", "data=text", f"data.cache_dir={tmp_path / 'cache'}",
        "data.source_tokens=65536", "data.block_size=32", "data.batch_size=8",
        "data.tokens_per_epoch=2048", "data.val_tokens=1024", "model.n_layer=1",
        "model.n_embd=32", "model.n_head=2", "optimizer=adamw", "scheduler=cosine",
        "trainer.num_threads=1", "logger=none", "epochs=2",
    ]  # fmt: skip
    jobs = [[*common, "seed=0"], [*common, "seed=1", "optimizer.lr=0.01"]]
    members = train_members(tmp_path, jobs)
    for i, (member, overrides) in enumerate(zip(members, jobs, strict=True)):
        separate = tmp_path / "separate" / str(i)
        assert train(make_cfg(*overrides), separate).status == "completed"
        assert_same_rows(member.run_dir, separate)
        assert "val/gap" in read_metrics(member.run_dir)[-1]


@pytest.mark.slow
def test_a_fused_gpt_sweep_equals_the_basic_launcher_job_by_job(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the jobs import tests.user_datasets
    args = ["-m", *GPT_ON_TOKENS, "epochs=2", "seed=0,1"]
    fused = tmp_path / "fused"
    proc = run_cli(*args, "hydra/launcher=fused", f"hydra.sweep.dir={fused}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    assert "Training 2 jobs as one fused model" in out
    assert "runs on its own" not in out
    fused_jobs = job_dirs(fused)
    assert sorted(o.split()[-1] for o in fused_jobs) == ["seed=0", "seed=1"]  # the sweep's jobs
    for overrides, job in fused_jobs.items():
        # the basic launcher's job: train() on the job's config, which the basic launcher
        # calls for each job in its one process (runner/__main__.py _run_job); here in
        # this process, on one torch thread as run_cli's sweep (no second interpreter)
        basic = tmp_path / "basic" / overrides.split()[-1]  # seed=0, seed=1
        with one_torch_thread():
            assert train(make_cfg(*overrides.split()), basic).status == "completed"
        assert_same_rows(job, basic)
        assert json.loads((job / "status.json").read_text())["fused_jobs"] == 2
        assert "val/bpb" in read_metrics(job)[-1]
    assert "final val loss" in (fused / "report.md").read_text()
