"""Models adapt to the data's channels, image size and class count."""

from __future__ import annotations

import pytest
import torch

from runner.train.models import LeNet, build_model, validate_model
from schedulers import ConfigError
from tests.helpers import make_cfg, make_values


@pytest.mark.parametrize("model", ["mlp", "lenet", "resnet18"])
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_models_map_images_to_class_logits(model, shape):
    net = build_model(make_cfg(f"model={model}").model, shape, num_classes=7)
    assert net(torch.randn(2, *shape)).shape == (2, 7)


def test_lenet_is_the_lecture_architecture_on_32px():
    net = build_model(make_cfg("model=lenet").model, (3, 32, 32), num_classes=2)
    assert isinstance(net, LeNet)
    convs = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in net.classifier if isinstance(m, torch.nn.Linear)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (3, 6, (5, 5)),
        (6, 16, (5, 5)),
    ]
    assert [(m.in_features, m.out_features) for m in linears] == [(400, 120), (120, 84), (84, 2)]


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("model.dropout=1.0", "model.dropout"),
        ("model.hidden=[64,0]", "model.hidden"),
    ],
)
def test_bad_mlp_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        validate_model(make_values(override)["model"])
    assert err.value.key == key


def test_bad_lenet_and_resnet_values_name_the_key():
    with pytest.raises(ConfigError, match="model.min_input_size"):
        validate_model(make_values("model=lenet", "model.min_input_size=8")["model"])
    with pytest.raises(ConfigError, match="model.small_input_stem"):
        validate_model(make_values("model=resnet18", "model.small_input_stem=maybe")["model"])
