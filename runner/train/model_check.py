"""The model checked against the data at start-up, before anything is written.

A model that trains without an error can still be the wrong one: torchvision's `resnet18`
(a factory taking `num_classes` only through `**kwargs`) trains its 1000-way head on three
classes, and the run ends with exit 0 and an accuracy that means nothing. The config cannot
say what a user's model outputs; one forward pass of real samples can. It runs on the meta
device (no memory, no compute), or on the CPU where a model cannot run on meta.

The same pass materialises lazy modules (`nn.LazyLinear`, ...) before the optimizer is
built: until then they hold no parameters an optimizer could step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin

from runner.data.sets import TensorData
from runner.data.stream import sample_batch as streamed_batch
from runner.data.text import is_text
from runner.train.models import build_model, spec_of
from schedulers import ConfigError, binder

SAMPLES = 2  # a batch of two: BatchNorm in training mode needs more than one value a channel


def sample_batch(data: Any, n: int = SAMPLES) -> torch.Tensor:
    """The first `n` training inputs as the model gets them (in memory, or fetched and
    collated as the loader does)."""
    if isinstance(data, TensorData) or is_text(data):  # text: its first windows, in order
        return data.x_train[:n]
    return streamed_batch(data, n)


def has_lazy(model: nn.Module) -> bool:
    lazy = (m for m in model.modules() if isinstance(m, LazyModuleMixin))
    return any(m.has_uninitialized_params() for m in lazy)


def materialise(model: nn.Module, data: Any, device: torch.device) -> None:
    """One forward pass of real samples gives lazy modules their shapes. In eval mode and
    without gradients: no running statistics moved, no dropout drawn (their own
    initialisation draws from the seeded RNG, the same in every run of the config)."""
    if not has_lazy(model):
        return
    training = model.training
    model.eval()
    with torch.no_grad():
        model(sample_batch(data).to(device))
    model.train(training)


def model_key(cfg: Mapping[str, Any]) -> str:
    return "model.name" if spec_of(cfg) is not None else f"model.{binder.TARGET}"


def check_model_on_data(
    cfg: Mapping[str, Any], data: Any, data_name: str, built: nn.Module | None = None
) -> None:
    """Raise a ConfigError when the model cannot train on this data as configured: its
    inputs' dtype is not the model's, its forward pass fails, its output is not one score
    per class, or nothing in it trains. `built`: the model as its check built it for this
    data (runner/train/models.py `validate_model`), not built again."""
    x = sample_batch(data)
    model, out = _probe(cfg, data, x, data_name, built)
    if not _fits(out, data.num_classes, x):
        raise _output_error(cfg, out, data.num_classes, x)
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(
            model_key(cfg),
            _value(cfg),
            "has no trainable parameters (none, or every one "
            "has requires_grad=False): the optimizer would have nothing to train",
        )


def _value(cfg: Mapping[str, Any]) -> Any:
    return cfg.get("name") if spec_of(cfg) is not None else cfg.get(binder.TARGET)


def _probe(
    cfg: Mapping[str, Any], data: Any, x: torch.Tensor, data_name: str, built: nn.Module | None
) -> tuple[nn.Module, Any]:
    """The model and its output for `x`: on meta first, else built and run on the CPU.
    `built`: the model its check built, on meta (run there first), or on the CPU where it
    could not be built on meta (run there)."""
    if built is None or _on_meta(built):
        try:
            if built is None:
                with torch.device("meta"):
                    built = build_model(cfg, data.image_shape, data.num_classes)
            if (mixed := _mixed_dtypes(built, x)) is not None:
                raise _dtype_error(cfg, mixed, data_name)
            return built, _forward(built, x.to("meta"))
        except ConfigError:
            raise
        except Exception:  # an op without a meta kernel, .item(), data-dependent shapes
            built = None
    model = built if built is not None else build_model(cfg, data.image_shape, data.num_classes)
    if (mixed := _mixed_dtypes(model, x)) is not None:
        raise _dtype_error(cfg, mixed, data_name)
    try:
        return model, _forward(model, x)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            model_key(cfg),
            _value(cfg),
            f"fails on a batch of the data (inputs {list(x.shape)}, {x.dtype}): {first}",
        ) from None


def _on_meta(model: nn.Module) -> bool:
    return any(t.is_meta for t in (*model.parameters(), *model.buffers()))


def _forward(model: nn.Module, x: torch.Tensor) -> Any:
    model.train(x.shape[0] > 1)  # as in training, unless one sample is all there is
    with torch.no_grad():
        return model(x)


def _mixed_dtypes(model: nn.Module, x: torch.Tensor) -> tuple[torch.dtype, torch.dtype] | None:
    """Float inputs in another float type than the model's parameters, as (the parameters',
    the inputs'): torch refuses the mix in the first matmul, or (float16 inputs to some
    ops) computes in the wrong one. None when they agree."""
    wanted = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    if wanted is None or not x.is_floating_point() or x.dtype == wanted:
        return None
    return wanted, x.dtype


def _dtype_error(
    cfg: Mapping[str, Any], mixed: tuple[torch.dtype, torch.dtype], data_name: str
) -> ConfigError:
    wanted, given = mixed
    if data_name == "dataset":
        return ConfigError(
            "data.train.transform",
            None,
            f"gives {given} samples and the model's "
            f"parameters are {wanted}: add v2.ToDtype(torch.{str(wanted).split('.')[-1]}, "
            "scale=True) to the transforms",
        )
    return ConfigError(
        model_key(cfg),
        _value(cfg),
        f"has {wanted} parameters and the data gives {given} samples: build it in {given}",
    )


def _fits(out: Any, num_classes: int, x: torch.Tensor) -> bool:
    """One score per class and sample: [batch, num_classes]; for token windows x [batch, T]
    (a language model's data), one per token: [batch, T, num_classes]."""
    if not torch.is_tensor(out):
        return False
    shape = list(out.shape)
    if len(shape) == 2 and shape[0] == x.shape[0] and shape[1] == num_classes:
        return True
    tokens = x.dim() == 2 and not x.is_floating_point()
    return tokens and shape == [*x.shape, num_classes]


def _output_error(
    cfg: Mapping[str, Any], out: Any, num_classes: int, x: torch.Tensor
) -> ConfigError:
    """What is wrong with an output that does not `_fit`, naming the key that set it."""
    if not torch.is_tensor(out):
        return ConfigError(
            model_key(cfg),
            _value(cfg),
            f"returns {type(out).__name__} for a batch; the runner "
            f"needs a tensor of class scores [batch, {num_classes}] from forward()",
        )
    shape = list(out.shape)
    if len(shape) == 2 and shape[0] == x.shape[0]:
        key = _width_key(cfg, shape[1])
        hint = (
            f"set {key}={num_classes} or ${{data.num_classes}}"
            if key != model_key(cfg)
            else "give it num_classes (e.g. model.num_classes=${data.num_classes})"
        )
        return ConfigError(
            key,
            cfg.get(key.split(".", 1)[1]),
            f"the model outputs {shape[1]} class scores "
            f"and the data has {num_classes} classes (data.num_classes): {hint}",
        )
    return ConfigError(
        model_key(cfg),
        _value(cfg),
        f"outputs {shape} for a batch of {x.shape[0]}; the runner "
        f"needs class scores [batch, {num_classes}]",
    )


def _width_key(cfg: Mapping[str, Any], width: int) -> str:
    """The model's key that set its output width (num_classes, classes, n_out, ...): one
    whose value is that width and whose name says classes or outputs; else the model."""
    for key, value in binder.kwargs_of(cfg).items():
        named = any(word in key.lower() for word in ("class", "out", "label", "head"))
        if named and isinstance(value, int) and not isinstance(value, bool) and value == width:
            return f"model.{key}"
    return model_key(cfg)
