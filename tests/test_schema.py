"""One schema: every built-in option's keys, defaults and checks declared once, equal to the
YAML users read, and enforced in one pass with one helper per kind of check."""

from __future__ import annotations

import pytest
import yaml

from runner.config.schema import GROUPS, SCHEMAS, Run, Trainer, check_node, defaults
from runner.run.check import validate
from runner.train.models import MODELS
from runner.train.optimizers import OPTIMIZERS
from schedulers import ConfigError
from tests.helpers import CONF, make_cfg, read_metrics

OPTIONS = [
    *(("model", name, spec.schema) for name, spec in MODELS.items()),
    *(("optimizer", name, spec.schema) for name, spec in OPTIMIZERS.items()),
    *((group, name, schema) for group in ("data", "trainer", "lr_find")
      for name, schema in SCHEMAS[group].items()),
    *(("logger", name, schema) for name, schema in SCHEMAS["logger"].items()),
]  # fmt: skip


@pytest.mark.parametrize(
    ("group", "option", "schema"), OPTIONS, ids=[f"{g}/{o}" for g, o, _ in OPTIONS]
)
def test_every_yaml_option_holds_exactly_its_schemas_defaults(group, option, schema):
    values = yaml.safe_load((CONF / group / f"{option}.yaml").read_text())
    if group == "logger":  # the logger node holds one sub-node per backend
        values = values[option]
    assert values == defaults(schema)


def test_every_built_in_option_has_a_schema():
    for group in ("model", "optimizer", "data", "trainer", "lr_find"):
        files = {p.stem for p in (CONF / group).glob("*.yaml")} - {"target"}
        assert files == {o for g, o, _ in OPTIONS if g == group}, group


def test_top_level_keys_are_declared_in_the_run_schema():
    cfg = make_cfg()
    assert set(cfg) - set(GROUPS) == set(defaults(Run))
    assert {k: cfg[k] for k in defaults(Run)} == defaults(Run)


@pytest.mark.parametrize(
    ("node", "key", "rule"),
    [
        ({"amp": 1}, "trainer.amp", "true or false"),  # 1 is not a bool
        ({"log_every_n_steps": True}, "trainer.log_every_n_steps", "integer"),  # nor True an int
        ({"log_every_n_steps": 2.0}, "trainer.log_every_n_steps", "integer"),
        ({"checkpoint_interval_s": float("nan")}, "trainer.checkpoint_interval_s", "number"),
        ({"diverge_loss": float("inf")}, "trainer.diverge_loss", "number"),
        ({"diverge_loss": 0}, "trainer.diverge_loss", "> 0"),
        ({"channels_last": "yes"}, "trainer.channels_last", "one of"),
        ({"device": "cuda:x"}, "trainer.device", "cuda:N"),
        ({"monitor": "val/f1"}, "trainer.monitor", "one of"),
        ({"monitor_mode": "up"}, "trainer.monitor_mode", "one of"),
        ({"monitor": "val/acc", "monitor_mode": "min"}, "trainer.monitor_mode", "contradicts"),
        ({"monitor": "val/loss", "monitor_mode": "max"}, "trainer.monitor_mode", "contradicts"),
        ({"colour": "red"}, "trainer.colour", "unknown key"),
    ],
)
def test_check_node_names_the_key_and_the_rule(node, key, rule):
    base = defaults(Trainer)
    with pytest.raises(ConfigError) as err:
        check_node("trainer", {**base, **node}, Trainer)
    assert err.value.key == key and rule in err.value.rule


def test_a_missing_key_is_named_with_its_default():
    node = defaults(Trainer)
    del node["progress"]
    with pytest.raises(ConfigError, match="trainer.progress.*missing; its default is 'auto'"):
        check_node("trainer", node, Trainer)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("trainer.amp=yes", "trainer.amp"),  # OmegaConf's bool would coerce it: caught here
        ("data.num_classes=5", "data.num_classes"),
        ("data=fake data.image_size=[3,32]", "data.image_size"),
        ("optimizer=adam optimizer.betas=[0.9]", "optimizer.betas"),
        ("optimizer=adam optimizer.eps=0", "optimizer.eps"),
        ("optimizer.nesterov=1", "optimizer.nesterov"),
        ("lr_find.end_lr=1e-7", "lr_find.end_lr"),
        ("lr_find.mode=log", "lr_find.mode"),
        ("logger.wandb.project=''", "logger.wandb.project"),
        ("+logger.wandb.colour=red", "logger.wandb.colour"),
        ("+model.depth=3", "model.depth"),
        ("epochs=2.5", "epochs"),
    ],
)
def test_validation_rejects_through_the_schema(override, key):
    with pytest.raises(ConfigError) as err:
        validate(make_cfg(*override.split()))
    assert err.value.key == key


def test_monitor_mode_auto_follows_the_metric_and_agreeing_modes_pass():
    from runner.io.checkpoint import Progress
    from schedulers.checks import mode_for

    assert defaults(Trainer)["monitor_mode"] == "auto"
    for monitor, mode in [("val/acc", "auto"), ("val/acc", "max"), ("train/loss", "min")]:
        check_node(
            "trainer", {**defaults(Trainer), "monitor": monitor, "monitor_mode": mode}, Trainer
        )
    assert [mode_for(m, "auto") for m in ("val/acc", "train/acc", "val/loss", "train/loss")] == [
        "max",
        "max",
        "min",
        "min",
    ]
    p = Progress()
    assert [p.end_epoch(e, v, "auto", "val/loss") for e, v in enumerate([1.0, 0.5, 0.7])] == [
        True,
        True,
        False,
    ]


def test_best_pt_by_val_loss_with_mode_auto_is_the_lowest_loss(tmp_path):
    import torch

    from runner.run.train import train

    cfg = make_cfg(
        "logger=none", "epochs=4", "trainer.checkpoint_interval_s=0", "trainer.monitor=val/loss"
    )
    train(cfg, tmp_path)
    rows = read_metrics(tmp_path)
    best_epoch = min(range(4), key=lambda e: (rows[e]["val/loss"], e))
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert best["progress"]["best_metric"] == rows[best_epoch]["val/loss"]
