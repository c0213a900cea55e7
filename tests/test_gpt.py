"""model=gpt and the language-model plumbing (issue #35): the model's shapes, causality, tied
weights and init; its parts and no-decay groups; the per-token loss everywhere the runner
computes one; an LM run's rows (val/bpb, tokens/s, val/gap, MFU); the report's ranking of
LM runs by val/loss; the range test and a fused sweep on a GPT. The data is a test-only
token-window dataset (tests/user_datasets.py MarkovTokens) through data=dataset."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.nn import functional as F

from runner.config.schema import run_spec
from runner.run.check import planned_groups, validate
from runner.run.train import train
from runner.sweep.report import write_report
from runner.train import gpt, lm
from runner.train.builders import build_training_parts
from runner.train.models import build_model, validate_model
from runner.train.range_test import find_lr
from runner.train.steps import backward, evaluate, hits, loss_of
from schedulers import ConfigError
from tests.helpers import (
    GPT_ON_TOKENS,
    make_cfg,
    read_metrics,
    report_rows,
    write_job,
)

ROOT = Path(__file__).resolve().parents[1]

TOKENS = GPT_ON_TOKENS
SMALL = {"name": "gpt", "n_layer": 2, "n_head": 2, "n_embd": 32, "dropout": 0.0, "bias": False}


def small_gpt(**changes) -> gpt.GPT:
    torch.manual_seed(0)
    return build_model({**SMALL, **changes}, (16,), 16)


# -- the model --------------------------------------------------------------------------------
def test_logits_are_one_score_per_token_and_vocabulary_entry():
    model = small_gpt()
    x = torch.randint(16, (3, 16))
    assert model(x).shape == (3, 16, 16)
    assert model(x[:, :5]).shape == (3, 5, 16)  # shorter windows than block_size too


def test_a_future_token_changes_no_earlier_logit():
    model = small_gpt().eval()
    x = torch.randint(16, (2, 16))
    changed = x.clone()
    changed[:, 9] = (x[:, 9] + 1) % 16
    a, b = model(x), model(changed)
    assert torch.equal(a[:, :9], b[:, :9])
    assert not torch.allclose(a[:, 9:], b[:, 9:])


def test_the_head_is_the_token_embedding_counted_once():
    model = small_gpt()
    assert model.lm_head.weight is model.wte.weight
    names = [n for n, _ in model.named_parameters()]
    assert "wte.weight" in names and "lm_head.weight" not in names


def test_gpt2_init_residual_projections_scaled_by_depth():
    model = small_gpt(n_layer=4, n_embd=256, n_head=4, bias=True)
    block = model.blocks[0]
    assert block.attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.wte.weight.std().item() == pytest.approx(0.02, rel=0.05)
    for proj in (block.attn.c_proj.weight, block.mlp.c_proj.weight):
        assert proj.std().item() == pytest.approx(0.02 / math.sqrt(8), rel=0.05)
    assert torch.all(block.attn.c_attn.bias == 0)
    assert torch.all(block.ln_1.weight == 1)


def test_gpt_wants_token_windows_and_heads_that_divide_the_width():
    with pytest.raises(ConfigError, match=r"model.name='gpt': takes token windows \[T\]"):
        validate_model(SMALL, (1, 8, 8), 10)  # digits: images
    with pytest.raises(ConfigError, match="model.n_head=3: must divide model.n_embd=32"):
        validate_model({**SMALL, "n_head": 3}, (16,), 16)


# -- parts and weight decay ---------------------------------------------------------------------
def test_parts_cover_the_model_and_no_decay_is_gpts_default():
    cfg = make_cfg(*TOKENS)
    validate(cfg)
    *_, model, opt = build_training_parts(run_spec(cfg))
    groups = {g["name"]: g for g in opt.param_groups}
    assert set(groups) == {"decay", "no_decay"}
    flat = {id(p) for p in groups["no_decay"]["params"]}
    expected = {id(p) for p in model.parameters() if p.ndim == 1}
    expected |= {id(model.wte.weight), id(model.wpe.weight)}  # the tied head's too
    assert flat == expected and groups["no_decay"]["weight_decay"] == 0.0
    assert groups["decay"]["weight_decay"] == 0.01
    assert all(p.ndim == 2 for p in groups["decay"]["params"])
    # off when asked; and a classifier's default stays one group
    assert planned_groups(make_cfg(*TOKENS, "optimizer.no_decay=false")) == [("group0", 1.0)]
    assert planned_groups(make_cfg("optimizer=adamw")) == [("group0", 1.0)]


def test_parts_embed_blocks_head_take_their_own_lr():
    parts = "optimizer.param_groups={embed:0.1,blocks:1.0,head:0.5}"
    assert planned_groups(make_cfg(*TOKENS, parts)) == [
        ("embed/no_decay", 0.1),
        ("blocks", 1.0),
        ("blocks/no_decay", 1.0),
        ("head/no_decay", 0.5),
    ]


# -- the per-token loss -------------------------------------------------------------------------
def test_the_lm_loss_and_accuracy_are_per_token_and_classification_is_untouched():
    torch.manual_seed(0)
    logits, y = torch.randn(4, 6, 10), torch.randint(10, (4, 6))
    flat = F.cross_entropy(logits.reshape(-1, 10), y.reshape(-1))
    assert torch.equal(loss_of(logits, y), flat)
    per_token = (logits.argmax(-1) == y).float().mean()
    assert hits(logits, y).item() / 4 == pytest.approx(per_token.item())
    losses, accs = evaluate(lambda x: x, [(logits[:3], y[:3]), (logits[3:], y[3:])])
    assert losses[0] == pytest.approx(flat.item(), rel=1e-6)
    assert accs[0] == pytest.approx(per_token.item())
    stacked, _ = evaluate(lambda x: torch.stack([x, 2 * x]), [(logits, y)])
    assert stacked[1] == pytest.approx(
        F.cross_entropy(2 * logits.reshape(-1, 10), y.reshape(-1)).item(), rel=1e-6
    )
    scores, labels = torch.randn(5, 3), torch.randint(3, (5,))
    assert torch.equal(loss_of(scores, labels), F.cross_entropy(scores, labels))
    model = small_gpt()
    x = torch.randint(16, (2, 16))
    loss, out = backward(model, x, x, torch.autocast("cpu", enabled=False), None)
    assert torch.equal(loss, F.cross_entropy(out.reshape(-1, 16), x.reshape(-1)))


# -- a run's rows -------------------------------------------------------------------------------
def test_a_short_cpu_run_learns_the_chain_and_logs_bpb_and_tokens_per_s(tmp_path):
    result = train(make_cfg(*TOKENS, "epochs=3", "trainer.checkpoint=false"), tmp_path)
    assert result.status == "completed"
    rows = read_metrics(tmp_path)
    # uniform over 16 symbols is ln 16 = 2.77; the chain's entropy is about ln 2 = 0.69
    assert rows[0]["train/loss"] > 1.8 and rows[-1]["val/loss"] < 1.1
    for row in rows:
        assert row["val/bpb"] == pytest.approx(row["val/loss"] / math.log(2))
        assert row["train/tokens_per_s"] > 0
        assert "val/gap" not in row and "train/mfu" not in row  # no source loss; the CPU


def test_gap_and_mfu_when_the_data_and_the_card_give_them():
    stats = lm.TokenStats(
        tokens_per_epoch=1000, source_loss=0.5, flops_per_token=6e6, peak_flops=1e12
    )
    row = lm.row(stats, val_loss=0.75, train_s=2.0)
    assert row["val/gap"] == pytest.approx(0.25)
    assert row["train/tokens_per_s"] == 500
    assert row["train/mfu"] == pytest.approx(6e6 * 500 / 1e12)
    assert lm.peak_flops(torch.device("cpu")) is None


def test_flops_per_token_are_six_n_plus_attention():
    model = small_gpt()
    n = sum(p.numel() for p in model.parameters()) - model.wpe.weight.numel()
    assert gpt.flops_per_token(model, 16) == 6 * n + 12 * 2 * 32 * 16
    # a run's stats: gpt's count for the GPT built (its depth and width read off it), 6 N else
    windows = SimpleNamespace(tokens=True, image_shape=(16,), n_train=4)
    cpu = torch.device("cpu")
    assert lm.token_stats(windows, model, cpu).flops_per_token == 6 * n + 12 * 2 * 32 * 16
    other = torch.nn.Linear(4, 4)
    assert lm.token_stats(windows, other, cpu).flops_per_token == 6 * 20


def test_a_report_of_lm_runs_ranks_by_final_val_loss_lowest_first(tmp_path):
    # accuracy would rank them a, c, b: the report must not
    runs = {"a": ([1.5, 1.2], 0.9), "b": ([1.4, 0.9], 0.5), "c": ([1.6, 1.4], 0.7)}
    for name, (losses, acc) in runs.items():
        for seed in (0, 1):
            rows = [
                {
                    "epoch": e,
                    "lr/group0": 0.1,
                    "val/acc": acc,
                    "val/loss": v + seed / 100,
                    "val/bpb": v / math.log(2),
                }
                for e, v in enumerate(losses)
            ]
            write_job(
                tmp_path / f"{name}{seed}", [f"x={name}", f"seed={seed}"], seed, "completed", rows
            )
    text = write_report(tmp_path)
    assert "final val loss" in text
    order = list(report_rows(tmp_path))
    assert order == ["x=b", "x=a", "x=c"]


def test_a_report_of_classifiers_still_ranks_by_best_val_acc(tmp_path):
    for name, acc in {"a": 0.7, "b": 0.9}.items():
        rows = [{"epoch": 0, "lr/group0": 0.1, "val/acc": acc, "val/loss": acc}]
        write_job(tmp_path / name, [f"x={name}", "seed=0"], 0, "completed", rows)
    assert "best val acc" in write_report(tmp_path)
    assert list(report_rows(tmp_path)) == ["x=b", "x=a"]


# -- range test (fused sweeps of GPTs: tests/test_fused_gpt.py) ------------------------------------
def test_the_range_test_runs_on_a_gpt(tmp_path):
    cfg = make_cfg(*TOKENS, "lr_find.num_iters=12", "lr_find.start_lr=1e-4", "lr_find.end_lr=1")
    validate(cfg)
    lr, result = find_lr(run_spec(cfg), tmp_path / "lr_find")
    assert len(result.lrs) >= 10 and math.isfinite(lr) and 1e-5 < lr < 1
    assert (tmp_path / "lr_find" / "lr_find.csv").exists()


# -- token windows through data=dataset and a `_target_` model ------------------------------------
def test_a_target_model_on_token_windows_is_offered_vocab_size_and_block_size():
    target = "model._target_=runner.train.gpt.GPT"
    keys = ["+model.n_layer=1", "+model.n_head=2", "+model.n_embd=16", "+model.dropout=0.0"]
    data = [o for o in TOKENS if not o.startswith("model")]
    cfg = make_cfg(*data, "model=target", target, *keys, "+model.bias=false")
    validate(cfg)
    *_, model, _ = build_training_parts(run_spec(cfg))
    assert model.wte.num_embeddings == 16 and model.block_size == 16


def test_a_next_token_target_outside_the_vocabulary_is_a_config_error():
    with pytest.raises(ConfigError, match=r"data.train\[0\].*outside \[0, 8\)"):
        validate(make_cfg(*TOKENS, "data.num_classes=8"))
