"""K copies of one small model trained as one: every parameter stacked along a leading K axis.

A fused sweep (hydra/launcher=fused) trains K jobs that differ only in schedule, optimizer
hyper-parameters and seed. Each job's model is first built exactly as a single run builds
it (same seed, same init), then its parameters are stacked: Linear layers become one
batched matmul over [K, B, features], Conv2d (Conv1d) layers one grouped convolution
over [B, K*C, H, W] ([B, K*C, L]). Every member sees only its own weights and its own
batch, so the K members compute what K separate runs compute, in one pass.

`FusedOptimizer` then does SGD(momentum)/Adam/AdamW over the stacked tensors with
per-member hyper-parameters, read from each member's own torch optimizer, which the
member's real torch scheduler drives (see runner/sweep/fused.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

FUSABLE_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.Flatten)
CONVS = (nn.Conv1d, nn.Conv2d)


def layers_of(model: nn.Module) -> list[nn.Module]:
    """The model's leaf modules in forward order (MLP and LeNet are plain chains)."""
    return [m for m in model.modules() if not list(m.children())]


class StackedNet(nn.Module):
    """K models of one chain of Linear/Conv1d/Conv2d/ReLU/MaxPool2d/Flatten layers, as one
    module. `sample_rank`: the dims of one sample (3 for images [C, H, W], 2 for signals
    [C, L]), which tells one batch for all from one batch per member.

    Input: see forward(); output logits [K, B, classes]."""

    def __init__(self, models: Sequence[nn.Module], sample_rank: int = 3) -> None:
        super().__init__()
        self.k = len(models)
        self.sample_rank = sample_rank
        chains = [layers_of(m) for m in models]
        self.kinds: list[nn.Module] = []  # the layer types, from member 0 (all share them)
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.sources: list[list[nn.Parameter]] = []  # member params behind each stacked one
        self.transposed: list[bool] = []  # stacked param p holds each member's param transposed
        for i, layer in enumerate(chains[0]):
            if not isinstance(layer, FUSABLE_LAYERS):
                raise TypeError(f"cannot stack a {type(layer).__name__}")
            self.kinds.append(layer)
            if isinstance(layer, (nn.Linear, *CONVS)):
                for name, out in (("weight", self.weights), ("bias", self.biases)):
                    members = [getattr(chain[i], name) for chain in chains]
                    # Linear weights are kept [K, in, out]: the batched matmul then needs no
                    # transpose, and its weight gradient arrives in the parameter's layout
                    # (no copy per step)
                    flip = name == "weight" and isinstance(layer, nn.Linear)
                    out.append(
                        nn.Parameter(
                            torch.stack(
                                [p.detach().T if flip else p.detach() for p in members]
                            ).contiguous()
                        )
                    )
                    self.sources.append(members)
                    self.transposed.append(flip)
        # ReLU then 2x2 max-pool equals pool then ReLU (max commutes with the monotone
        # ReLU), and pooling first does the ReLU on a quarter of the values
        for i in range(len(self.kinds) - 1):
            if isinstance(self.kinds[i], nn.ReLU) and isinstance(self.kinds[i + 1], nn.MaxPool2d):
                self.kinds[i], self.kinds[i + 1] = self.kinds[i + 1], self.kinds[i]

    def stacked_params(self) -> list[nn.Parameter]:
        """In the order of `sources` (weight, bias per layer)."""
        return [p for pair in zip(self.weights, self.biases, strict=True) for p in pair]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [D, B, *sample] (or [D, B, F]) with D dividing K, member k reading input
        k // (K // D): each member its own batch (D = K), or members that draw the same
        batches (same seed) sharing one (gathered once); or [N, *sample] / [N, F], one
        batch for all (D = 1)."""
        k = self.k
        conv_layout = isinstance(self.kinds[0], CONVS)
        images = isinstance(self.kinds[0], nn.Conv2d)  # channels-last applies to 4-D only
        if x.dim() in (2, self.sample_rank + 1):  # one batch for every member
            x = x.unsqueeze(0)
        m = x.shape[0]  # inputs along the member axis: becomes k at the first weighted layer
        if k % m:
            raise ValueError(f"{m} inputs for {k} members: the count must divide {k}")
        if conv_layout:
            # conv layout [B, M*C, H, W]: input block j feeds members j*K/M .. (j+1)*K/M - 1
            x = x.transpose(0, 1).flatten(1, 2)
            if images:  # grouped convolutions and max-pooling: several times faster so
                x = x.contiguous(memory_format=torch.channels_last)
        p = 0
        for layer in self.kinds:
            if isinstance(layer, (nn.Conv1d, nn.Conv2d)):
                two_d = isinstance(layer, nn.Conv2d)
                if m != k:  # one input per member: oneDNN's dense convolution of a shared
                    # one-channel input (LeNet's first) measured slower than the grouped one
                    x = x.unflatten(1, (m, -1)).repeat_interleave(k // m, 1).flatten(1, 2)
                    if two_d:
                        x = x.contiguous(memory_format=torch.channels_last)
                    m = k
                w = self.weights[p].flatten(0, 1)
                if two_d:
                    w = w.contiguous(memory_format=torch.channels_last)
                conv = F.conv2d if two_d else F.conv1d
                x = conv(
                    x,
                    w,
                    self.biases[p].flatten(),
                    layer.stride,
                    layer.padding,
                    layer.dilation,
                    groups=k * layer.groups,
                )
                p += 1
            elif isinstance(layer, nn.Linear):
                if m != k:
                    x = x.expand(k, *x.shape[1:]) if m == 1 else x.repeat_interleave(k // m, 0)
                    m = k
                x = torch.baddbmm(self.biases[p].unsqueeze(1), x, self.weights[p])
                p += 1
            elif isinstance(layer, nn.Flatten):
                if conv_layout:  # [B, M*C, *S] -> [M, B, C*prod(S)], in NC* order
                    x = x.contiguous().unflatten(1, (m, -1)).flatten(2).transpose(0, 1)
                    conv_layout = False
                else:
                    x = x.flatten(2)
            else:  # ReLU, MaxPool2d: per channel, so per member in either layout
                x = layer(x)
        return x

    def as_member(self, p: int, value: torch.Tensor) -> torch.Tensor:
        """One member's slice of stacked param p (or of its grad/optimizer state) in the
        layout of that member's own parameter."""
        return value.T if self.transposed[p] else value

    @torch.no_grad()
    def unstack_into(self, member: int) -> None:
        """Copy member's current weights back into its own model (e.g. to save it)."""
        for p, stacked in enumerate(self.stacked_params()):
            self.sources[p][member].copy_(self.as_member(p, stacked[member]))


def column(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """Per-member values shaped [K, 1, ...] to broadcast over a stacked tensor like `like`."""
    shape = (len(values),) + (1,) * (like.dim() - 1)
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(shape)


@torch.no_grad()
def clip_members(
    params: Sequence[torch.Tensor],
    max_norms: Sequence[float | None],
    max_values: Sequence[float | None],
) -> torch.Tensor:
    """Each member's gradients clipped as its own run's trainer.grad_clip_norm or
    trainer.grad_clip_value clips them (torch's clip_grad_norm_/clip_grad_value_ on member
    k's slice of every stacked gradient; None: that member does not clip so). Returns each
    member's gradient norm before clipping, [K]: torch's global norm, the norm of the
    per-parameter norms, per member."""
    grads = [p.grad for p in params if p.grad is not None]
    per_param = torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads])
    norms = torch.linalg.vector_norm(per_param, dim=0)
    inf = math.inf
    if any(v is not None for v in max_norms):
        limit = torch.tensor([inf if v is None else v for v in max_norms], device=norms.device)
        coef = (limit / (norms + 1e-6)).clamp_(max=1.0)  # torch's formula
        for g in grads:
            g.mul_(coef.view(-1, *[1] * (g.dim() - 1)))
    if any(v is not None for v in max_values):
        for g in grads:
            bound = column([inf if v is None else v for v in max_values], g)
            torch.clamp(g, -bound, bound, out=g)
    return norms


class FusedOptimizer:
    """One optimizer step for all K members over stacked tensors.

    Hyper-parameters are per member and per param group: `groups[p][k]` is the index of
    the param group of member k's optimizer that stacked param p belongs to. `refresh()`
    reads lr (and momentum/betas, which OneCycleLR and CyclicLR cycle) from the members'
    torch optimizers, which their torch schedulers have just stepped. The update is
    torch's own SGD/Adam/AdamW arithmetic, applied to [K, ...] tensors.
    """

    def __init__(
        self,
        params: Sequence[torch.Tensor],
        members: Sequence[torch.optim.Optimizer],
        groups: Sequence[Sequence[int]],
        name: str,
    ) -> None:
        self.params, self.members, self.groups, self.name = list(params), members, groups, name
        self.k = len(members)
        self.active = torch.ones(self.k, dtype=torch.bool)
        self.steps = 0
        self.state: list[dict[str, torch.Tensor]] = [{} for _ in self.params]
        self.hyper: list[dict[str, Any]] = []
        self.refresh()

    def _per_member(self, p: int, key: str, pick: Any = None) -> list[float]:
        return [
            (pick or (lambda v: v))(opt.param_groups[self.groups[p][k]][key])
            for k, opt in enumerate(self.members)
        ]

    def refresh(self) -> None:
        """Re-read every member's hyper-parameters; call after its scheduler stepped."""
        self.hyper = [self._hyper(p, param) for p, param in enumerate(self.params)]

    def _hyper(self, p: int, param: torch.Tensor) -> dict[str, Any]:
        def col(values: list[float]) -> torch.Tensor:
            return column(values, param)

        on = self.active.tolist()
        lr = [v if active else 0.0 for v, active in zip(self._per_member(p, "lr"), on, strict=True)]
        wd = self._per_member(p, "weight_decay")
        h: dict[str, Any] = {"lr": lr, "wd": wd, "neg_lr": col([-v for v in lr])}
        if any(wd):
            h["wd_t"] = col(wd)
        if self.name == "sgd":
            h["momentum"] = col(self._per_member(p, "momentum"))
            h["nesterov"] = self.members[0].param_groups[0]["nesterov"]
        else:
            h["beta1"] = self._per_member(p, "betas", lambda b: b[0])
            h["beta2"] = self._per_member(p, "betas", lambda b: b[1])
            h["eps"] = col(self._per_member(p, "eps"))
            if self.name == "adamw":
                h["decay_t"] = col([1 - a * w for a, w in zip(lr, wd, strict=True)])
        return h

    @torch.no_grad()
    def freeze(self, member: int) -> None:
        """A diverged member: zero its weights and state, lr 0 from now on. Its NaNs never
        reach the others (each member's slice is computed on its own) and zeros keep the
        wasted arithmetic on finite numbers."""
        self.active[member] = False
        for p, param in enumerate(self.params):
            param[member] = 0
            for buf in self.state[p].values():
                buf[member] = 0
        self.refresh()

    def zero_grad(self) -> None:
        for param in self.params:
            param.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        step = self._sgd if self.name == "sgd" else self._adam
        for p, param in enumerate(self.params):
            if param.grad is not None:
                step(param, param.grad, self.state[p], self.hyper[p])

    def _sgd(self, param: torch.Tensor, grad: torch.Tensor, state: dict, h: dict) -> None:
        if "wd_t" in h:
            grad = grad.addcmul(param, h["wd_t"])
        buf = state.get("momentum_buffer")
        if buf is None:
            buf = state["momentum_buffer"] = grad.clone()
        else:
            buf.mul_(h["momentum"]).add_(grad)
        grad = grad.addcmul(buf, h["momentum"]) if h["nesterov"] else buf
        param.addcmul_(grad, h["neg_lr"])

    def _adam(self, param: torch.Tensor, grad: torch.Tensor, state: dict, h: dict) -> None:
        if not state:
            state["exp_avg"] = torch.zeros_like(param)
            state["exp_avg_sq"] = torch.zeros_like(param)
        if self.name == "adamw":
            if any(h["wd"]):
                param.mul_(h["decay_t"])
        elif "wd_t" in h:
            grad = grad.addcmul(param, h["wd_t"])
        t, b1, b2 = self.steps, h["beta1"], h["beta2"]
        state["exp_avg"].lerp_(grad, column([1 - b for b in b1], param))
        state["exp_avg_sq"].mul_(column(b2, param))
        state["exp_avg_sq"].addcmul_(grad.mul(grad), column([1 - b for b in b2], param))
        # torch computes these per step in Python floats; so do we, per member
        step_size = column([-lr / (1 - b**t) for lr, b in zip(h["lr"], b1, strict=True)], param)
        bc2_sqrt = column([(1 - b**t) ** 0.5 for b in b2], param)
        denom = (state["exp_avg_sq"].sqrt() / bc2_sqrt).add_(h["eps"])
        param.addcmul_(state["exp_avg"] / denom, step_size)
