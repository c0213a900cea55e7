"""Param groups with their own weight decay, and optimizer.no_decay (issue #33): the decay
reaches torch's param groups, exactly the biases, norm weights and embedding tables go
without it, the groups log under their names, resume exactly and fuse."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from runner.config.schema import run_spec
from runner.run.check import planned_groups, validate
from runner.run.train import train
from runner.sweep.fused import group_key
from runner.train.builders import build_training_parts
from schedulers import ConfigError
from tests.helpers import (
    assert_same_rows,
    make_cfg,
    read_metrics,
    resumed_and_straight,
    tensorboard_scalars,
    train_members,
    train_separate,
    train_stopped_at_step,
    wandb_records,
)

EMBED = ("model=target", "model._target_=tests.user_models.EmbedNet")
DECAYED = "optimizer.param_groups={hidden:{lr:0.5,weight_decay:0.1},head:1.0}"


def groups_of(cfg) -> dict[str, tuple[float, float, set[int]]]:
    """Torch's param groups of the optimizer the run builds: name -> (lr, wd, param ids)."""
    validate(cfg)
    *_, opt = build_training_parts(run_spec(cfg))
    return {
        g.get("name"): (g["lr"], g["weight_decay"], {id(p) for p in g["params"]})
        for g in opt.param_groups
    }


def exempt_by_module(model: nn.Module) -> set[int]:
    """What no_decay should exempt, told by module type: biases, norm scales/shifts and
    embedding tables."""
    kinds = (nn.BatchNorm2d, nn.LayerNorm, nn.Embedding)
    out = set()
    for m in model.modules():
        if isinstance(m, kinds):
            out |= {id(p) for p in m.parameters(recurse=False)}
        elif getattr(m, "bias", None) is not None:
            out.add(id(m.bias))
    return out


def test_a_groups_weight_decay_reaches_torchs_param_groups():
    cfg = make_cfg("optimizer.lr=0.1", "optimizer.weight_decay=0.01", DECAYED)
    groups = groups_of(cfg)
    assert {k: v[:2] for k, v in groups.items()} == {"hidden": (0.05, 0.1), "head": (0.1, 0.01)}
    cfg = make_cfg("optimizer.param_groups={hidden:{weight_decay:0.0},head:{}}")
    assert {k: v[:2] for k, v in groups_of(cfg).items()} == {
        "hidden": (0.05, 0.0),
        "head": (0.05, 0.0),
    }
    rmsprop = ("optimizer=target", "optimizer._target_=torch.optim.RMSprop")
    cfg = make_cfg(*rmsprop, "+optimizer.weight_decay=0.2", "optimizer.param_groups={head:{lr:2}}")
    groups = groups_of(cfg)
    assert groups["head"][:2] == (0.02, 0.2) and groups["hidden"][:2] == (0.01, 0.2)


@pytest.mark.parametrize(
    "overrides", [("model=resnet18", "data=fake"), EMBED], ids=["resnet18", "embedding"]
)
def test_no_decay_puts_exactly_biases_norms_and_embeddings_at_weight_decay_0(overrides):
    cfg = make_cfg(*overrides, "optimizer=adamw", "optimizer.no_decay=true")
    validate(cfg)
    *_, model, opt = build_training_parts(run_spec(cfg))
    groups = {g["name"]: g for g in opt.param_groups}
    assert list(groups) == ["decay", "no_decay"]
    assert [name for name, _ in planned_groups(cfg)] == ["decay", "no_decay"]
    exempt = exempt_by_module(model)
    assert {id(p) for p in groups["no_decay"]["params"]} == exempt
    assert {id(p) for p in groups["decay"]["params"]} == {
        id(p) for p in model.parameters() if id(p) not in exempt
    }
    assert (groups["decay"]["weight_decay"], groups["no_decay"]["weight_decay"]) == (0.01, 0.0)


def test_no_decay_splits_each_part_and_start_up_knows_the_groups():
    groups = "optimizer.param_groups={backbone:{lr:0.1}}"
    cfg = make_cfg(
        "model=resnet18",
        "data=fake",
        "optimizer.no_decay=true",
        "optimizer.weight_decay=0.1",
        groups,
    )
    names = ["backbone", "backbone/no_decay", "head", "head/no_decay"]
    assert planned_groups(cfg) == list(zip(names, [0.1, 0.1, 1.0, 1.0], strict=True))
    built = groups_of(cfg)
    assert list(built) == names
    assert [built[n][1] for n in names] == [0.1, 0.0, 0.1, 0.0]


WD = "optimizer.param_groups.head.weight_decay"
BAD = [
    ("optimizer.param_groups={head:{momentum:0.5}}", "optimizer.param_groups.head.momentum"),
    ("optimizer.param_groups={head:{lr:0}}", "optimizer.param_groups.head.lr"),
    ("optimizer.param_groups={head:{weight_decay:-1}}", "optimizer.param_groups.head.weight_decay"),
    (
        "optimizer.param_groups={head:{weight_decay:abc}}",
        "optimizer.param_groups.head.weight_decay",
    ),
    ("optimizer.no_decay=3", "optimizer.no_decay"),
]


@pytest.mark.parametrize(("override", "key"), BAD, ids=[b[0] for b in BAD])
def test_a_bad_group_entry_is_a_config_error_naming_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        validate(make_cfg(override))
    assert err.value.key == key, str(err.value)


def test_a_pattern_groups_unknown_key_and_an_optimizer_without_decay_are_named():
    tiny = ("model=target", "model._target_=tests.user_models.TinyNet")
    with pytest.raises(ConfigError) as err:
        validate(make_cfg(*tiny, "optimizer.param_groups={backbone.*:{wd:0},head.*:1}"))
    assert err.value.key == "optimizer.param_groups.backbone.*.wd"
    rprop = ("optimizer=target", "optimizer._target_=torch.optim.Rprop")
    for override, key in [
        ("optimizer.no_decay=true", "optimizer.no_decay"),
        ("optimizer.param_groups={head:{weight_decay:0.1}}", WD),
    ]:
        with pytest.raises(ConfigError, match="no weight_decay") as err:
            validate(make_cfg(*rprop, override))
        assert err.value.key == key


def test_group_names_reach_metrics_jsonl_and_tensorboard(tmp_path):
    cfg = make_cfg("epochs=1", "logger=tensorboard", "optimizer.no_decay=true", DECAYED)
    assert train(cfg, tmp_path).status == "completed"
    lr = cfg.optimizer.lr
    want = {"lr/hidden": 0.5 * lr, "lr/hidden/no_decay": 0.5 * lr, "lr/head": lr,
            "lr/head/no_decay": lr}  # fmt: skip
    first = read_metrics(tmp_path)[0]
    assert {k: v for k, v in first.items() if k.startswith("lr")} == pytest.approx(want)
    scalars = tensorboard_scalars(tmp_path)
    assert {k for k in scalars if k.startswith("lr")} == set(want)
    alone = make_cfg("epochs=1", "logger=none", "optimizer.no_decay=true")
    assert train(alone, tmp_path / "alone").status == "completed"
    assert {k for k in read_metrics(tmp_path / "alone")[0] if k.startswith("lr")} == {
        "lr/decay",
        "lr/no_decay",
    }


@pytest.mark.slow
def test_group_names_reach_wandb(tmp_path):
    cfg = make_cfg("epochs=1", "logger=wandb", "optimizer.no_decay=true", DECAYED)
    assert train(cfg, tmp_path).status == "completed"
    (row,) = [r["history"]["item"] for r in wandb_records(tmp_path) if r["type"] == "history"]
    assert {k for k in row if k.startswith("lr")} == {
        "lr/hidden",
        "lr/hidden/no_decay",
        "lr/head",
        "lr/head/no_decay",
    }


@pytest.mark.slow
def test_a_run_with_no_decay_killed_mid_epoch_resumes_exactly(tmp_path, monkeypatch):
    args = ("logger=none", "epochs=3", "optimizer=adamw", "optimizer.lr=0.01",
            "optimizer.no_decay=true", DECAYED)  # fmt: skip
    run_dir = tmp_path / "run"
    train_stopped_at_step(monkeypatch, args, run_dir, 30)  # in the middle of epoch 1
    assert len(read_metrics(run_dir)) == 1
    saved = torch.load(run_dir / "last.pt", weights_only=True)["optimizer"]["param_groups"]
    assert [(g["name"], g["weight_decay"]) for g in saved] == [
        ("hidden", 0.1),
        ("hidden/no_decay", 0.0),
        ("head", 0.01),
        ("head/no_decay", 0.0),
    ]
    rows, straight = resumed_and_straight(args, run_dir, tmp_path / "ref")
    assert rows == straight


@pytest.mark.slow
def test_a_fused_sweep_over_no_decay_equals_separate_runs(tmp_path):
    """no_decay is a member's own: members with and without it, and with a group's own
    weight decay, train as one stacked model, each bias in its own member's group."""
    common = ["epochs=2", "logger=none", "optimizer.weight_decay=0.05", "optimizer.lr=0.1"]
    jobs = [
        [*common, "optimizer.no_decay=false"],
        [*common, "optimizer.no_decay=true"],
        [*common, "optimizer.no_decay=true", DECAYED, "seed=1"],
    ]
    assert len({group_key(make_cfg(*job)) for job in jobs}) == 1
    members = train_members(tmp_path, jobs)
    assert "lr/no_decay" in read_metrics(members[1].run_dir)[0]
    for member, overrides in zip(members, jobs, strict=True):
        assert_same_rows(member.run_dir, train_separate(tmp_path, overrides))
