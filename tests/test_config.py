"""The composed config: every group option composes and validates; bad values name their key."""

from __future__ import annotations

import pytest

from runner.run.check import validate
from schedulers import ConfigError
from tests.helpers import CONF, make_cfg

OPTIONS = {
    group: sorted(p.stem for p in (CONF / group).glob("*.yaml"))
    for group in ("model", "optimizer", "scheduler", "data", "logger", "trainer")
}
FILE_DATASETS = {"mnist", "fashion_mnist", "cifar10"}
# the `target` options name no class until the user gives one
TARGETS = {
    "model=target": ["model._target_=tests.user_models.TinyNet"],
    "optimizer=target": ["optimizer._target_=torch.optim.RMSprop"],
    "scheduler=target": [
        "scheduler._target_=torch.optim.lr_scheduler.ExponentialLR",
        "+scheduler.gamma=0.9",
    ],
}
# the 1-D models need 1-D data; text (token windows [B, T]) needs a language model
NEEDS = {f"model={m}": ["data=mnist1d", "data.num_samples=200"] for m in ("cnn1d", "gru")}
NEEDS["data=text"] = ["model=gpt", "data.source_tokens=65536"]
# and a language model token windows: data=text's, or the user's Dataset of them
NEEDS["model=gpt"] = [
    "data=dataset",
    "data.train={_target_:tests.user_datasets.MarkovTokens,size:64}",
    "data.val={_target_:tests.user_datasets.MarkovTokens,size:8,seed:1}",
]


# full-size data: 12-40 s each to make and check (the 1-D models' small mnist1d stays fast)
SLOW_OPTIONS = {"data=mnist1d", "data=dataset", "data=fake"}


@pytest.mark.parametrize(
    "override",
    [
        pytest.param(o, marks=pytest.mark.slow) if o in SLOW_OPTIONS else o
        for o in (f"{g}={o}" for g, opts in OPTIONS.items() for o in opts)
        if o.split("=")[1] not in FILE_DATASETS
    ],
)
def test_every_group_option_composes_and_validates(override):
    validate(make_cfg(override, *TARGETS.get(override, []), *NEEDS.get(override, [])))


@pytest.mark.parametrize(
    "override", [t for t in sorted(TARGETS) if t.split("=")[1] in OPTIONS[t.split("=")[0]]]
)
def test_a_target_option_without_its_target_is_a_config_error(override):
    group = override.split("=")[0]
    with pytest.raises(ConfigError) as err:
        validate(make_cfg(override))
    assert err.value.key == f"{group}._target_"


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("epochs=0", "epochs"),
        ("seed=-1", "seed"),
        ("optimizer.lr=0", "optimizer.lr"),
        ("optimizer.lr=-0.1", "optimizer.lr"),
        ("optimizer.momentum=1.0", "optimizer.momentum"),
        ("optimizer.weight_decay=-1", "optimizer.weight_decay"),
        ("data.batch_size=0", "data.batch_size"),
        ("data.val_fraction=1.0", "data.val_fraction"),
        ("trainer.device=tpu", "trainer.device"),
        ("trainer.amp=maybe", "trainer.amp"),
        ("trainer.log_every_n_steps=-1", "trainer.log_every_n_steps"),
        ("trainer.progress=fancy", "trainer.progress"),
        ("logger.wandb.mode=sometimes", "logger.wandb.mode"),
        ("scheduler.eta_min=1.0", "scheduler.eta_min"),
        ("model.dropout=-0.5", "model.dropout"),
    ],
)
def test_bad_values_fail_validation_naming_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        validate(make_cfg(override))
    assert err.value.key == key


def test_unknown_key_is_rejected_by_struct_mode():
    """A ConfigError naming the key (tests/test_qa_docs.py: the key it meant)."""
    with pytest.raises(ConfigError, match="lrr"):
        make_cfg("optimizer.lrr=0.1")
