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

import copy
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.lazy import LazyModuleMixin

from runner.data.sets import TensorData
from runner.data.stream import sample_batch as streamed_batch
from runner.data.text import is_text
from schedulers import ConfigError

SAMPLES = 2  # a batch of two: BatchNorm in training mode needs more than one value a channel
# a model on meta up to this many elements (parameters and buffers: 40 MB in float32) is
# first run on the CPU, its storage allocated uninitialised (`_quick_probe`)
QUICK_PROBE_MAX = 10_000_000


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


def check_scores(model: nn.Module, data: Any, device: torch.device, named: tuple[str, Any]) -> None:
    """Raise a ConfigError when the built model's scores cannot train as the loop trains
    them: they carry no gradient (a forward under torch.no_grad(), a .detach(), a NumPy
    round trip: the first backward crashed), or they are already probabilities (a softmax
    at the end of forward(): every row in [0, 1], summing to 1). The loss is cross_entropy,
    which applies log-softmax itself: on probabilities it trains, slowly and badly, and the
    run ends with exit 0 (digits, 3 epochs: val/acc 0.32 against 0.94). Start-up's models
    hold no values (meta, or uninitialised storage) and run without gradients, so this
    runs on the built model, once, in eval mode, every RNG as it was (log-probabilities are
    fine: log-softmax leaves them as they are)."""
    training = model.training
    model.eval()
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.enable_grad(), torch.random.fork_rng(devices=cuda):
        out = model(sample_batch(data).to(device))
    model.train(training)
    if torch.is_tensor(out) and not out.requires_grad:
        raise ConfigError(
            *named,
            "returns scores that carry no gradient (a forward under torch.no_grad(), a "
            ".detach(), a NumPy round trip): the loss could not train it",
        )
    if _probabilities(out.detach() if torch.is_tensor(out) else out):
        raise ConfigError(
            *named,
            "outputs probabilities (each row in [0, 1], summing to 1: a softmax); the loss is "
            "cross_entropy, which takes raw class scores (logits) and applies log-softmax "
            "itself: return the scores before the softmax",
        )


def _probabilities(out: Any) -> bool:
    if not torch.is_tensor(out) or not out.is_floating_point() or out.numel() == 0:
        return False
    if out.dim() < 2 or out.shape[-1] < 2:
        return False
    out = out.float()
    return bool((out >= 0).all()) and bool(((out.sum(-1) - 1).abs() < 1e-3).all())


def check_batch_norm(
    model: nn.Module | None, data: Any, batch_size: int, named: tuple[str, Any]
) -> None:
    """Raise a ConfigError naming data.batch_size when an epoch holds a batch of one sample
    (batch size 1, or n_train = k * batch_size + 1: the last batch is kept) and the model's
    BatchNorm cannot train on it (one value per channel): torch raises that only when the
    epoch reaches the batch, after the epoch's work. `model`: start-up's (on meta, or on
    the CPU), run on one sample in training mode."""
    n = data.n_train
    if model is None or min(batch_size, n % batch_size or batch_size) != 1:
        return
    if not any(isinstance(m, _BatchNorm) for m in model.modules()):
        return
    x = sample_batch(data, 1)
    x = x.to("meta") if _on_meta(model) else x
    model.train()
    try:
        with torch.no_grad():
            model(x)
        return
    except Exception as err:  # only BatchNorm's own refusal is this check's
        if "more than 1 value per channel" not in str(err):
            return  # an op without a meta kernel, say: the forward pass checked the rest
    if n == 1 or batch_size == 1:
        why = "every batch holds 1 sample"
        fix = "more training samples" if n == 1 else "data.batch_size >= 2"
    else:
        why = f"the epoch's last batch holds 1 sample ({n} = {n // batch_size} x {batch_size} + 1)"
        fit = next(b for b in range(batch_size + 1, n + 1) if n % b != 1)  # n itself fits
        fix = f"a batch size that leaves 0 or 2+ (e.g. data.batch_size={fit})"
    raise ConfigError(
        "data.batch_size",
        batch_size,
        f"{why}, and the model's BatchNorm cannot train on one sample "
        f"({named[0]}={named[1]}: more than 1 value per channel needed): use {fix}",
    )


def check_model_on_data(
    model: nn.Module,
    rebuild: Callable[[], nn.Module],
    data: Any,
    data_name: str,
    named: tuple[str, Any],
    widths: Mapping[str, int],
) -> None:
    """Raise a ConfigError when the model cannot train on this data as configured: its
    inputs' dtype is not the model's, its forward pass fails, its output is not one score
    per class, or nothing in it trains. `model`: the model as its check built it for this
    data (runner/train/models.py `validate_model`), on meta or else on the CPU; `rebuild`
    builds it on the CPU, where it cannot run on meta. The errors name `named`, the key
    that names the model and its value (`model_named`), or one of `widths`, its keys that
    can set its output width (`width_keys`)."""
    x = sample_batch(data)
    quick = _quick_probe(model, x)
    if quick is FAILED:  # on the CPU: built for real and run there, not on meta, whose
        model, quick = rebuild(), None  # kernels take a float64 layer's float32 input
    if quick is not None and _fits(quick[1], data.num_classes, x):
        model, out = quick
    else:  # as before, and every error from there
        model, out = _probe(model, rebuild, x, data_name, named)
    if not _fits(out, data.num_classes, x):
        raise _output_error(named, widths, out, data.num_classes, x)
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(
            *named,
            "has no trainable parameters (none, or every one "
            "has requires_grad=False): the optimizer would have nothing to train",
        )


# `_quick_probe`'s answer for a forward pass that raised on the CPU
FAILED: Any = object()


def _quick_probe(built: nn.Module, x: torch.Tensor) -> tuple[nn.Module, Any] | None:
    """A small model built on meta, run on the CPU: a copy, its storage allocated there
    uninitialised (no second build, no random draws), for the output's shape. On meta, the
    first forward pass goes through torch's Python meta kernels, whose first use imports
    sympy and torch._dynamo (~1.2 s of CPU): a process that checks a config and trains
    nothing (a sweep's parent under a submitit or joblib launcher, a job whose run is
    already complete, a config error) paid it for nothing; one that trains pays it when
    it builds the optimizer. None (then `_probe`, as before) for anything else: a large or
    lazy model, mixed dtypes. FAILED for a forward pass that raised: then the model is
    built for real on the CPU (`_probe`): it may have failed on values computed from
    garbage, or for real (a layer in float64 fed float32), which meta's kernels let pass,
    and the run then crashed at its first batch."""
    if not _on_meta(built) or has_lazy(built) or _mixed_dtypes(built, x) is not None:
        return None
    if sum(t.numel() for t in (*built.parameters(), *built.buffers())) > QUICK_PROBE_MAX:
        return None
    try:
        # as nn.Module.to_empty, by torch.empty: empty_like of a meta tensor is a Python
        # ref that imports sympy too
        model = copy.deepcopy(built)._apply(
            lambda t: torch.empty(t.shape, dtype=t.dtype, device="cpu")
        )
        return model, _forward(model, x)
    except Exception:
        return FAILED


def _probe(
    built: nn.Module,
    rebuild: Callable[[], nn.Module],
    x: torch.Tensor,
    data_name: str,
    named: tuple[str, Any],
) -> tuple[nn.Module, Any]:
    """The model and its output for `x`: `built` on meta run there first (else built again
    on the CPU and run there), `built` on the CPU run there."""
    if _on_meta(built):
        if (mixed := _mixed_dtypes(built, x)) is not None:
            raise _dtype_error(named, mixed, data_name)
        try:
            return built, _forward(built, x.to("meta"))
        except Exception:  # an op without a meta kernel, .item(), data-dependent shapes
            built = rebuild()
    if (mixed := _mixed_dtypes(built, x)) is not None:
        raise _dtype_error(named, mixed, data_name)
    try:
        return built, _forward(built, x)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            *named,
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
    named: tuple[str, Any], mixed: tuple[torch.dtype, torch.dtype], data_name: str
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
        *named,
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
    named: tuple[str, Any],
    widths: Mapping[str, int],
    out: Any,
    num_classes: int,
    x: torch.Tensor,
) -> ConfigError:
    """What is wrong with an output that does not `_fit`, naming the key that set it."""
    if not torch.is_tensor(out):
        return ConfigError(
            *named,
            f"returns {type(out).__name__} for a batch; the runner "
            f"needs a tensor of class scores [batch, {num_classes}] from forward()",
        )
    shape = list(out.shape)
    if len(shape) == 2 and shape[0] == x.shape[0]:
        # the key that set that width (its value), else the model's
        key = next((k for k, v in widths.items() if v == shape[1]), None)
        hint = (
            f"set {key}={num_classes} or ${{data.num_classes}}"
            if key is not None
            else "give it num_classes (e.g. model.num_classes=${data.num_classes})"
        )
        return ConfigError(
            *(named if key is None else (key, shape[1])),
            f"the model outputs {shape[1]} class scores "
            f"and the data has {num_classes} classes (data.num_classes): {hint}",
        )
    return ConfigError(
        *named,
        f"outputs {shape} for a batch of {x.shape[0]}; the runner "
        f"needs class scores [batch, {num_classes}]",
    )
