"""The models a run can train, each shaped by the data it is given (channels, size, classes).

Images come as [C, H, W] samples, 1-D signals (data=mnist1d) as [C, L], token windows
(a language model's data) as [T] integer ids; each built-in says which it takes, so a
mismatch is a config error at start-up, not a shape error in the first forward pass.

Built-ins are one entry each in `MODELS` (name -> spec); any other `nn.Module` comes by
`_target_` (schedulers/binder.py), and is offered the data's `num_classes`, `in_channels`
and `image_size` when its constructor takes them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from runner.config import schema
from runner.train import gpt
from schedulers import ConfigError, binder


class MLP(nn.Module):
    def __init__(self, in_features: int, hidden: list[int], num_classes: int, dropout: float):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LeNet(nn.Module):
    """The lecture's LeNet; `features` and `classifier` are separate so they can get own lrs."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int, min_input_size: int):
        super().__init__()
        # LeNet's two 5x5 convs + pools need >= 16 px; the original was designed for 32x32.
        self.input_size = max(image_size, min_input_size)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        side = ((self.input_size - 4) // 2 - 4) // 2
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * side * side, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False)
        return self.classifier(self.features(x))


class CNN1d(nn.Module):
    """The MNIST-1D paper's 1-D conv net: Conv1d + ReLU layers (padding 1), then a linear
    head on the flattened features; `features` and `classifier` (LeNet's names, so the
    lecture's two-group LambdaLR applies as is) can get their own lrs."""

    def __init__(
        self,
        in_channels: int,
        length: int,
        num_classes: int,
        channels: int,
        kernel_sizes: list[int],
        stride: int,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_channels
        for k in kernel_sizes:
            length = (length + 2 - k) // stride + 1
            if length < 1:
                raise ConfigError(
                    "model.kernel_sizes", list(kernel_sizes), "leave nothing of the signal"
                )
            layers += [nn.Conv1d(width, channels, k, stride=stride, padding=1), nn.ReLU()]
            width = channels
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(width * length, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class GRU(nn.Module):
    """The MNIST-1D paper's GRU: the signal's points as time steps (channels as features),
    every step's hidden state flattened into a linear head."""

    def __init__(
        self,
        in_channels: int,
        length: int,
        num_classes: int,
        hidden_size: int,
        bidirectional: bool,
    ) -> None:
        super().__init__()
        self.gru = nn.GRU(in_channels, hidden_size, batch_first=True, bidirectional=bidirectional)
        directions = 2 if bidirectional else 1
        self.head = nn.Linear(hidden_size * directions * length, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps, _ = self.gru(x.transpose(1, 2))  # [B, C, L] -> [B, L, C]: L time steps
        return self.head(steps.flatten(1))


def _resnet18(in_channels: int, image_size: int, num_classes: int, small_stem: Any) -> nn.Module:
    from torchvision.models import resnet18  # seconds, cold: only for model=resnet18

    model = resnet18(weights=None, num_classes=num_classes)
    if small_stem is True or (small_stem == "auto" and image_size <= 64):
        # The ImageNet stem shrinks inputs 4x before the first block; on 32 px images that
        # throws away most of the picture, so use the usual CIFAR stem instead.
        model.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    return model


# -- the built-ins: build, named parts (for per-part lrs) and checks -------------------------
Shape = tuple[int, ...]  # one sample's: (channels, height, width), (channels, length) or (tokens,)
IMAGES, SIGNALS, TOKENS = 3, 2, 1  # the ranks of those shapes


def _build_mlp(cfg: Mapping[str, Any], shape: Shape, num_classes: int) -> nn.Module:
    return MLP(math.prod(shape), list(cfg["hidden"]), num_classes, cfg["dropout"])


def _build_logistic(cfg: Mapping[str, Any], shape: Shape, num_classes: int) -> nn.Module:
    return MLP(math.prod(shape), [], num_classes, 0.0)


def _build_cnn1d(cfg: Mapping[str, Any], shape: Shape, num_classes: int) -> nn.Module:
    channels, length = shape
    return CNN1d(
        channels, length, num_classes, cfg["channels"], list(cfg["kernel_sizes"]), cfg["stride"]
    )


def _build_gru(cfg: Mapping[str, Any], shape: Shape, num_classes: int) -> nn.Module:
    channels, length = shape
    return GRU(channels, length, num_classes, cfg["hidden_size"], cfg["bidirectional"])


def _two_parts(first: str, second: str) -> Callable[[nn.Module, Any], dict[str, list]]:
    """Parts read off two submodules of the same names (features/classifier, gru/head)."""
    return lambda model, cfg: {
        first: [*getattr(model, first).parameters()],
        second: [*getattr(model, second).parameters()],
    }


def _mlp_parts(model: nn.Module, cfg: Mapping[str, Any]) -> dict[str, list[nn.Parameter]]:
    *hidden, head = model.net
    parts = {"hidden": [p for m in hidden for p in m.parameters()], "head": [*head.parameters()]}
    return parts if cfg.get("hidden") else {"head": parts["head"]}  # logistic: no hidden


def _build_lenet(cfg: Mapping[str, Any], shape: Shape, num_classes: int) -> nn.Module:
    return LeNet(shape[0], min(shape[1:]), num_classes, cfg["min_input_size"])


def _lenet_parts(model: nn.Module, cfg: Mapping[str, Any]) -> dict[str, list[nn.Parameter]]:
    return {
        "features": [*model.features.parameters()],
        "classifier": [*model.classifier.parameters()],
    }


def _build_resnet18(cfg: Mapping[str, Any], shape: Shape, num_classes: int) -> nn.Module:
    return _resnet18(shape[0], min(shape[1:]), num_classes, cfg["small_input_stem"])


def _resnet18_parts(model: nn.Module, cfg: Mapping[str, Any]) -> dict[str, list[nn.Parameter]]:
    head_ids = {id(p) for p in model.fc.parameters()}
    return {
        "backbone": [p for p in model.parameters() if id(p) not in head_ids],
        "head": [*model.fc.parameters()],
    }


def _build_gpt(cfg: Mapping[str, Any], shape: Shape, num_classes: int) -> nn.Module:
    """block_size: the data's window length; the vocabulary: its num_classes (256 bytes)."""
    return gpt.GPT(
        num_classes,
        shape[0],
        cfg["n_layer"],
        cfg["n_head"],
        cfg["n_embd"],
        cfg["dropout"],
        cfg["bias"],
    )


@dataclass(frozen=True)
class ModelSpec:
    build: Callable[[Mapping[str, Any], Shape, int], nn.Module]
    # named parts in order; `optimizer.param_groups={part: multiplier}` picks from these
    parts: Callable[[nn.Module, Mapping[str, Any]], dict[str, list[nn.Parameter]]]
    part_names: Callable[[Mapping[str, Any]], tuple[str, ...]]
    schema: type  # its keys, types, defaults and checks (runner/config/schema.py)
    fusable: bool  # runner/sweep/stacked.py (stacked_gpt.py) can stack it (hydra/launcher=fused)
    inputs: tuple[int, ...] = (IMAGES, SIGNALS)  # the sample ranks it takes
    # optimizer.no_decay's value when it is null: a transformer's recipe exempts 1-D
    # parameters and embedding tables from weight decay (nanoGPT, GPT-3); the classifiers
    # here were tuned with decay on everything
    no_decay: bool = False


MODELS: dict[str, ModelSpec] = {
    "mlp": ModelSpec(
        _build_mlp,
        _mlp_parts,
        lambda cfg: ("hidden", "head") if cfg["hidden"] else ("head",),
        schema.Mlp,
        fusable=True,
    ),
    "logistic": ModelSpec(
        _build_logistic, _mlp_parts, lambda cfg: ("head",), schema.Logistic, fusable=True
    ),
    "lenet": ModelSpec(
        _build_lenet, _lenet_parts, lambda cfg: ("features", "classifier"), schema.LeNet, True,
        inputs=(IMAGES,),
    ),
    "resnet18": ModelSpec(
        _build_resnet18, _resnet18_parts, lambda cfg: ("backbone", "head"), schema.ResNet18,
        False, inputs=(IMAGES,),
    ),
    "cnn1d": ModelSpec(
        _build_cnn1d, _two_parts("features", "classifier"), lambda cfg: ("features", "classifier"),
        schema.Cnn1d, fusable=True, inputs=(SIGNALS,),
    ),
    "gru": ModelSpec(
        _build_gru, _two_parts("gru", "head"), lambda cfg: ("gru", "head"), schema.Gru,
        fusable=False, inputs=(SIGNALS,),
    ),
    # stacked by runner/sweep/stacked_gpt.py (without dropout: see runner/sweep/fused.py)
    "gpt": ModelSpec(
        _build_gpt, lambda model, cfg: gpt.parts(model), lambda cfg: ("embed", "blocks", "head"),
        schema.Gpt, fusable=True, inputs=(TOKENS,), no_decay=True,
    ),
}  # fmt: skip


def spec_of(cfg: Mapping[str, Any]) -> ModelSpec | None:
    """The built-in's spec, or None for a `_target_` model."""
    return binder.builtin_spec("model", cfg.get(binder.TARGET), cfg.get("name"), MODELS)


def model_named(cfg: Mapping[str, Any]) -> tuple[str, Any]:
    """The key that names the model and its value, for the errors of start-up's forward
    pass (runner/train/model_check.py): model.name for a built-in, model._target_ else."""
    if spec_of(cfg) is not None:
        return "model.name", cfg.get("name")
    return f"model.{binder.TARGET}", cfg.get(binder.TARGET)


def width_keys(cfg: Mapping[str, Any]) -> dict[str, int]:
    """The model's integer keys whose names say classes or outputs (num_classes, classes,
    n_out, ...), with their values: those that can set its output width, which start-up's
    forward pass names when the width is not the data's classes."""
    return {
        f"model.{key}": value
        for key, value in binder.kwargs_of(cfg).items()
        if any(word in key.lower() for word in ("class", "out", "label", "head"))
        and isinstance(value, int)
        and not isinstance(value, bool)
    }


def part_names(cfg: Mapping[str, Any]) -> tuple[str, ...]:
    """The named parts of a built-in model that `optimizer.param_groups` can give their own
    lr (a `_target_` model has none: its groups are parameter-name patterns)."""
    spec = spec_of(cfg)
    return () if spec is None else spec.part_names(cfg)


def model_parts(model: nn.Module, cfg: Mapping[str, Any]) -> dict[str, list[nn.Parameter]]:
    """Parameters of each part in `part_names` order; together they cover the whole model."""
    spec = spec_of(cfg)
    return {} if spec is None else spec.parts(model, cfg)


def default_no_decay(cfg: Mapping[str, Any]) -> bool:
    """optimizer.no_decay's value when it is null: the built-in model's choice
    (ModelSpec.no_decay, true for gpt as the transformer recipes have it), false for a
    `_target_` model (runner/train/optimizers.py `exempts_decay`)."""
    spec = spec_of(cfg)
    return spec is not None and spec.no_decay


# text (data=text) on the default MLP: the preset, not model=gpt alone, which would train
# the GPT with the default SGD and a per-epoch schedule
LM_HINT = (
    ": for text, +experiment=lm (model=gpt with AdamW, a per-step warmup and cosine, "
    "gradient clipping; docs/lm.md)"
)


# what the runner offers a `_target_` model's constructor, when it takes these arguments:
# images and signals the first three, token windows ([T]) num_classes (the vocabulary),
# vocab_size (the same) and block_size (T)
OFFERED = ("num_classes", "in_channels", "image_size", "vocab_size", "block_size")


def _offered(target: Any, cfg: Mapping[str, Any], shape: Shape, num_classes: int) -> dict:
    """What the target takes by name; and num_classes to a factory that takes it only
    through **kwargs, as torchvision's and timm's do (resnet18(**kwargs) -> ResNet(...,
    num_classes=1000)): left out, they build a 1000-way head whatever the data."""
    values: dict[str, int] = {"num_classes": num_classes}
    if len(shape) == TOKENS:
        values.update(vocab_size=num_classes, block_size=shape[0])
    else:
        values.update(in_channels=shape[0], image_size=min(shape[1:]))
    offered = {k: v for k, v in values.items() if k not in cfg and binder.accepts(target, k)}
    if "num_classes" not in cfg and binder.takes_any_keyword(target):
        offered["num_classes"] = num_classes
    return offered


def validate_model(
    cfg: Mapping[str, Any], shape: Shape | None = None, classes: int = 10
) -> nn.Module | None:
    """A built-in's checks, or for a `_target_`: importable, kwargs bound to its signature,
    and, given the data's `shape`, built on the meta device (no memory, no compute) so its
    own argument checks run: that model is returned (a `_target_` that cannot be built on
    meta: on the CPU), for start-up's forward pass (runner/train/model_check.py)."""
    spec = spec_of(cfg)
    if spec is not None:
        schema.check_node("model", cfg, spec.schema)
        if shape is not None:
            if len(shape) not in spec.inputs:
                kinds = {
                    IMAGES: "images [C, H, W]",
                    SIGNALS: "1-D signals [C, L]",
                    TOKENS: "token windows [T]",
                }
                wants = " or ".join(kinds[r] for r in spec.inputs)
                raise ConfigError(
                    "model.name",
                    cfg["name"],
                    f"takes {wants}; the data gives "
                    f"{kinds.get(len(shape), f'samples of shape {list(shape)}')}"
                    + (LM_HINT if len(shape) == TOKENS else ""),
                )
            with torch.device("meta"):  # its own shape checks (CNN1d's lengths), no memory
                return spec.build(cfg, shape, classes)
        return None
    target = binder.locate("model", cfg)
    kwargs = binder.kwargs_of(cfg)
    if shape is not None:
        kwargs.update(_offered(target, cfg, shape, classes))
    binder.need_call("model", target, kwargs)
    return None if shape is None else probe_model(cfg, shape, classes)


def probe_model(cfg: Mapping[str, Any], shape: Shape, num_classes: int) -> nn.Module:
    """The model built without memory (meta device), for its parameter names at start-up;
    on CPU if its constructor needs real values. A constructor error is a config error."""
    try:
        with torch.device("meta"):
            return build_model(cfg, shape, num_classes)
    except ConfigError:
        raise
    except Exception:
        pass
    try:
        return build_model(cfg, shape, num_classes)
    except ConfigError:
        raise
    except Exception as err:
        kwargs = binder.kwargs_of(cfg)
        if "weights" in kwargs and "num_classes" in str(err):  # torchvision's pretrained
            raise ConfigError("model.weights", kwargs["weights"], f"{err} {WEIGHTS_HINT}") from None
        key = binder.key_named_in("model", str(err), kwargs)
        value = cfg.get(key.split(".", 1)[1])
        raise ConfigError(key, value, f"building the model failed: {err}") from None


# torchvision's factories refuse pretrained weights with a head of another width; the runner
# offers the data's num_classes to every factory that takes **kwargs
WEIGHTS_HINT = (
    "(the runner offers data.num_classes to the factory): pretrained weights bring their own "
    "head; load them in a model of your own that then replaces its head with one of "
    "num_classes outputs (e.g. resnet18(weights=...), then .fc = nn.Linear(512, num_classes))"
)


def probe_parts(
    cfg: Mapping[str, Any], shape: Shape, num_classes: int
) -> tuple[nn.Module, dict[str, list[nn.Parameter]]]:
    """`probe_model` and its named parts (`model_parts`): what start-up plans the
    optimizer's param groups on (runner/train/optimizers.py `plan_groups`)."""
    model = probe_model(cfg, shape, num_classes)
    return model, model_parts(model, cfg)


def build_model(cfg: Mapping[str, Any], image_shape: Shape, num_classes: int) -> nn.Module:
    spec = spec_of(cfg)
    if spec is not None:
        return spec.build(cfg, image_shape, num_classes)
    target = binder.locate("model", cfg)
    offered = _offered(target, cfg, image_shape, num_classes)
    try:
        model = binder.instantiate(cfg, **offered)
    except TypeError as err:
        # a **kwargs that does not take num_classes after all: built without the offer,
        # and start-up's forward pass checks the output width (runner/train/model_check.py)
        if "num_classes" not in str(err) or binder.accepts(target, "num_classes"):
            raise
        model = binder.instantiate(cfg, **{k: v for k, v in offered.items() if k != "num_classes"})
    if not isinstance(model, nn.Module):
        raise ConfigError("model._target_", cfg["_target_"], "must build a torch.nn.Module")
    return model
