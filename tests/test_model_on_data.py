"""The model checked against the data at start-up (runner/train/model_check.py): a model
whose output is not one score per class of the data, inputs of another dtype, a model with
nothing to train, an optimizer the loop cannot step, lazy modules, and the data's inferred
num_classes reaching `${data.num_classes}`. Each of these trained silently wrong or crashed
after the run dir was made."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from runner.config.schema import run_spec
from runner.run.check import validate
from runner.train.builders import build_run
from schedulers import ConfigError
from tests.helpers import imported_by, make_cfg, read_metrics, run_cli

ROOT = Path(__file__).resolve().parents[1]
HERE = "tests.user_models"  # the user models these tests train
BLOBS = "{_target_:tests.user_datasets.Blobs,size:40}"
BLOBS_VAL = "{_target_:tests.user_datasets.Blobs,size:20,offset:40}"


def error_of(*overrides: str) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        validate(make_cfg(*overrides))
    return err.value


def test_a_torchvision_factory_is_offered_num_classes_through_its_kwargs() -> None:
    # resnet18(*, weights, progress, **kwargs): before, it was built with its 1000-way head
    # on 3 classes and trained (epoch-0 loss 6.66, exit 0)
    cfg = make_cfg(
        "data=fake",
        "data.num_classes=3",
        "data.train_size=8",
        "data.val_size=4",
        "model=target",
        "model._target_=torchvision.models.resnet18",
    )
    validate(cfg)
    run = build_run(run_spec(cfg))
    out = run.model(run.data.x_train[:2])
    assert out.shape == (2, 3)


def test_an_output_width_other_than_the_classes_is_a_config_error_naming_the_key() -> None:
    resnet = "model._target_=torchvision.models.resnet18"
    err = error_of(
        "data=fake", "data.num_classes=3", "model=target", resnet, "+model.num_classes=1000"
    )
    assert err.key == "model.num_classes"
    assert "outputs 1000 class scores" in str(err) and "3 classes" in str(err)


def test_an_output_that_is_not_class_scores_is_a_config_error() -> None:
    err = error_of("model=target", "model._target_=torch.nn.Flatten")
    assert err.key == "model._target_"
    assert "outputs [2, 64]" not in str(err)  # 64 features of 10 wanted: the width message
    assert "64 class scores" in str(err) and "10 classes" in str(err)
    err = error_of("model=target", "model._target_=torch.nn.Identity")
    assert "outputs [2, 1, 8, 8] for a batch of 2" in str(err)


def test_a_model_that_fails_on_the_data_is_a_config_error() -> None:
    # resnet18 takes 3 channels; digits have 1: today it failed in epoch 1, run dir left
    err = error_of("model=target", "model._target_=torchvision.models.resnet18")
    assert err.key == "model._target_"
    assert "fails on a batch of the data (inputs [2, 1, 8, 8], torch.float32)" in str(err)


def test_a_model_with_nothing_to_train_is_a_config_error() -> None:
    err = error_of("model=target", f"model._target_={HERE}.Frozen")
    assert "has no trainable parameters" in str(err)


def test_inputs_of_another_float_type_than_the_model_are_a_config_error() -> None:
    err = error_of("model=target", f"model._target_={HERE}.Double")
    assert err.key == "model._target_"
    assert "torch.float64 parameters" in str(err) and "torch.float32 samples" in str(err)


@pytest.mark.parametrize(
    ("target", "why"),
    [("torch.optim.LBFGS", "closure"), ("torch.optim.SparseAdam", "sparse gradients")],
)
def test_an_optimizer_the_loop_cannot_step_is_a_config_error(target: str, why: str) -> None:
    err = error_of("optimizer=target", f"optimizer._target_={target}")
    assert err.key == "optimizer._target_" and why in str(err)


def test_lazy_modules_are_materialised_before_the_optimizer_is_built() -> None:
    cfg = make_cfg("model=target", f"model._target_={HERE}.LazyNet")
    validate(cfg)
    run = build_run(run_spec(cfg))
    first = run.model.net[1].weight
    assert not isinstance(first, nn.parameter.UninitializedParameter)
    assert first.shape == (16, 64)
    stepped = {id(p) for g in run.optimizer.param_groups for p in g["params"]}
    assert id(first) in stepped
    # built twice with the same seed: the same weights (materialising draws from the seed)
    assert torch.equal(build_run(run_spec(cfg)).model.net[1].weight, first)


@pytest.mark.slow
def test_a_lazy_model_trains_end_to_end(tmp_path, monkeypatch) -> None:
    # before: "Attempted to use an uninitialized parameter" in epoch 1, exit 1
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    done = run_cli(
        "model=target",
        f"model._target_={HERE}.LazyNet",
        "epochs=2",
        "logger=none",
        f"hydra.run.dir={tmp_path}/run",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert len(read_metrics(tmp_path / "run")) == 2


def test_the_inferred_num_classes_reaches_interpolations_and_the_config() -> None:
    # Blobs have `classes` (3) and data.num_classes is null: ${data.num_classes} was None,
    # and the model failed with "empty(): argument 'size' ... NoneType"
    cfg = make_cfg(
        "data=dataset",
        f"data.train={BLOBS}",
        f"data.val={BLOBS_VAL}",
        "model=target",
        f"model._target_={HERE}.Classes",
        "+model.classes=${data.num_classes}",
    )
    validate(cfg)
    assert cfg.data.num_classes == 3
    assert cfg.model.classes == 3


def test_a_small_model_is_checked_without_torchs_meta_kernels():
    """Start-up's forward pass runs a small model on the CPU (a copy of the meta-built one,
    its storage uninitialised): torch's Python meta kernels import sympy and torch._dynamo
    on first use (~1.2 s of CPU), which a process that checks a config and trains nothing
    (a sweep's parent under submitit, a config error) need not pay."""
    code = "from runner.run.check import validate\nfrom tests.helpers import make_cfg\n"
    code += "validate(make_cfg('model=lenet'))\nvalidate(make_cfg())"
    assert imported_by(code, ("sympy",)) == []
