"""schedulers/: config -> torch scheduler, checked against closed forms and bad values."""

from __future__ import annotations

import math

import pytest
import torch

from schedulers import ConfigError, build_scheduler, validate_scheduler


def _lrs(cfg: dict, epochs: int, base_lr: float = 0.1) -> list[float]:
    """The lr in use at each epoch when the scheduler steps once per epoch."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base_lr, momentum=0.9)
    sched = build_scheduler(cfg, opt, epochs=epochs)
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize(("t_max", "eta_min"), [(None, 0.0), (7, 0.001), (20, 0.01)])
def test_cosine_matches_the_lecture_formula(t_max, eta_min):
    epochs, base = 20, 0.1
    got = _lrs({"name": "cosine", "T_max": t_max, "eta_min": eta_min}, epochs, base)
    period = t_max or epochs
    for t, lr in enumerate(got):
        if (
            t > period
        ):  # past T_max torch continues the cosine recursively; the formula is for t <= T_max
            break
        expected = eta_min + 0.5 * (base - eta_min) * (1 + math.cos(math.pi * t / period))
        assert lr == pytest.approx(expected, abs=1e-12)


def test_step_matches_its_closed_form():
    got = _lrs({"name": "step", "step_size": 3, "gamma": 0.1}, 12)
    for t, lr in enumerate(got):
        assert lr == pytest.approx(0.1 * 0.1 ** (t // 3), abs=1e-12)


@pytest.mark.parametrize(
    ("cfg", "key"),
    [
        ({"name": "step", "step_size": 0, "gamma": 0.1}, "scheduler.step_size"),
        ({"name": "step", "step_size": 2.5, "gamma": 0.1}, "scheduler.step_size"),
        ({"name": "step", "step_size": 5, "gamma": 0.0}, "scheduler.gamma"),
        ({"name": "step", "step_size": 5, "gamma": 1.5}, "scheduler.gamma"),
        ({"name": "step", "step_size": 5}, "scheduler.gamma"),
        ({"name": "step", "step_size": 5, "gamma": 0.1, "gama": 0.1}, "scheduler.gama"),
        ({"name": "cosine", "T_max": 0, "eta_min": 0.0}, "scheduler.T_max"),
        ({"name": "cosine", "T_max": None, "eta_min": 0.5}, "scheduler.eta_min"),
        ({"name": "cosine", "T_max": None, "eta_min": -1.0}, "scheduler.eta_min"),
        ({"name": "nope"}, "scheduler.name"),
    ],
)
def test_bad_scheduler_values_name_the_key(cfg, key):
    with pytest.raises(ConfigError) as err:
        validate_scheduler(cfg, epochs=10, base_lr=0.1)
    assert err.value.key == key
    assert key in str(err.value)


def test_unknown_name_lists_the_choices():
    with pytest.raises(ConfigError, match=r"\['cosine', 'none', 'step'\]"):
        validate_scheduler({"name": "nope"}, epochs=10, base_lr=0.1)


def test_unknown_key_lists_the_allowed_keys():
    with pytest.raises(ConfigError, match=r"allowed keys: \['step_size', 'gamma'\]"):
        validate_scheduler(
            {"name": "step", "step_size": 1, "gamma": 0.1, "x": 1}, epochs=10, base_lr=0.1
        )
