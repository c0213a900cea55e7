"""K GPTs (runner/train/gpt.py) trained as one: every parameter stacked along a leading K axis.

The fused launcher's stacked GPT, beside stacked.py's StackedNet (chains of Linear/Conv
layers) and with the same interface (`forward` on the members' batches, `stacked_params`
and `sources` for the fused optimizer's layout, `as_member`/`unstack_into` for checkpoints).
Each member is built as its single run builds it (its seed, its init), then stacked:

- the Linear layers run as one batched matmul over [K, B*T, features], their weights kept
  [K, in, out] (as StackedNet keeps them: no transpose or gradient copy per step);
- the token and position tables as one embedding lookup into the K tables laid end to end
  (member k's token ids offset by k * vocab); the output head, tied to the token table as
  in the GPT, is a batched matmul with it;
- LayerNorm normalises each member's rows alike and then applies its own weight and bias;
- attention is F.scaled_dot_product_attention over [K*B, heads, T, head width]: members and
  windows are one batch axis to it, so every device's fused kernel serves K members.

Written out rather than `torch.func.vmap` over `functional_call` (torch 2.14, measured on
this project's CPU VM): vmap has no batching rule for the CPU flash-attention kernel, so
it loops over the members (with a performance warning), and the K=4 step was slower than
four separate GPTs (80 ms against 59 ms for a 2-layer, 64-wide GPT, block 64, batch 16);
its meta-device recipe also dropped the tied head (wrong logits). Dropout is not stacked:
members would draw it from one global RNG, not each from its own run's
(runner/sweep/fused.py keeps gpt jobs with dropout > 0 on their own).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from runner.data.text import TextData, window_batches
from runner.train.gpt import GPT


def linear_names(model: GPT) -> set[str]:
    """Names of the Linear weights, stacked as [K, in, out]; the tied head is not among
    them (named_parameters lists it once, as wte.weight)."""
    return {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, nn.Linear)}


class StackedGPT(nn.Module):
    """K GPTs of one shape as one module; input [D, B, T] token windows (see forward),
    output logits [K, B, T, vocab]."""

    def __init__(self, models: Sequence[GPT]) -> None:
        super().__init__()
        first = models[0]
        self.k, self.n_layer = len(models), len(first.blocks)
        self.vocab, self.n_embd = first.wte.weight.shape
        self.n_head = first.blocks[0].attn.n_head if self.n_layer else 1
        flip = linear_names(first)
        named = [dict(m.named_parameters()) for m in models]
        self.names = list(named[0])
        self.index = {name: p for p, name in enumerate(self.names)}  # name -> stacked param p
        self.params = nn.ParameterList()
        self.sources: list[list[nn.Parameter]] = []  # member params behind each stacked one
        self.transposed: list[bool] = []  # stacked param p holds each member's param transposed
        for name in self.names:
            members = [own[name] for own in named]
            t = name in flip
            stacked = torch.stack([q.detach().T if t else q.detach() for q in members])
            self.params.append(nn.Parameter(stacked.contiguous()))
            self.sources.append(members)
            self.transposed.append(t)

    def stacked_params(self) -> list[nn.Parameter]:
        """In the order of `sources`: member 0's named_parameters()."""
        return list(self.params)

    def _p(self, name: str) -> torch.Tensor | None:
        p = self.index.get(name)
        return None if p is None else self.params[p]

    def _linear(self, x: torch.Tensor, prefix: str) -> torch.Tensor:
        """x [K, N, in] through member k's Linear `prefix` (weight [K, in, out])."""
        weight, bias = self._p(f"{prefix}.weight"), self._p(f"{prefix}.bias")
        if bias is None:
            return torch.bmm(x, weight)
        return torch.baddbmm(bias.unsqueeze(1), x, weight)

    def _norm(self, x: torch.Tensor, prefix: str) -> torch.Tensor:
        """Member k's LayerNorm `prefix` on x [K, N, C]: the normalisation is per row, the
        same for all; the affine part is each member's own."""
        x = F.layer_norm(x, (self.n_embd,))  # nn.LayerNorm's eps, 1e-5
        weight, bias = self._p(f"{prefix}.weight"), self._p(f"{prefix}.bias")
        if bias is None:
            return x * weight.unsqueeze(1)
        return torch.addcmul(bias.unsqueeze(1), x, weight.unsqueeze(1))

    def _attention(self, x: torch.Tensor, prefix: str, b: int, t: int) -> torch.Tensor:
        """Causal self-attention of member k's block on its windows, x [K, B*T, C]."""
        k, c, h = self.k, self.n_embd, self.n_head
        heads = (k * b, t, h, c // h)
        qkv = self._linear(x, f"{prefix}.c_attn").split(c, dim=2)
        q, key, v = (z.reshape(heads).transpose(1, 2) for z in qkv)
        y = F.scaled_dot_product_attention(q, key, v, is_causal=True)
        return self._linear(y.transpose(1, 2).reshape(k, b * t, c), f"{prefix}.c_proj")

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx: [D, B, T] token ids with D dividing K, member k reading windows k // (K // D)
        (each member its own batch, or members of one seed sharing theirs); or [N, T], one
        batch for all (validation)."""
        k = self.k
        if idx.dim() == 2:
            idx = idx.unsqueeze(0)
        d, b, t = idx.shape
        if k % d:
            raise ValueError(f"{d} inputs for {k} members: the count must divide {k}")
        if d != k:
            idx = idx.expand(k, b, t) if d == 1 else idx.repeat_interleave(k // d, 0)
        wte, wpe = self._p("wte.weight"), self._p("wpe.weight")
        offsets = torch.arange(k, device=idx.device).view(k, 1, 1) * self.vocab
        x = F.embedding(idx + offsets, wte.flatten(0, 1)) + wpe[:, :t].unsqueeze(1)
        x = x.view(k, b * t, self.n_embd)
        for i in range(self.n_layer):
            block = f"blocks.{i}"
            x = x + self._attention(self._norm(x, f"{block}.ln_1"), f"{block}.attn", b, t)
            hidden = F.gelu(self._linear(self._norm(x, f"{block}.ln_2"), f"{block}.mlp.c_fc"))
            x = x + self._linear(hidden, f"{block}.mlp.c_proj")
        x = self._norm(x, "ln_f")
        return torch.bmm(x, wte.transpose(1, 2)).view(k, b, t, self.vocab)  # the tied head

    def as_member(self, p: int, value: torch.Tensor) -> torch.Tensor:
        """One member's slice of stacked param p (or of its grad/optimizer state) in the
        layout of that member's own parameter."""
        return value.T if self.transposed[p] else value

    @torch.no_grad()
    def unstack_into(self, member: int) -> None:
        """Copy member's current weights back into its own model (e.g. to save it); the
        tied head follows its token table."""
        for p, stacked in enumerate(self.params):
            self.sources[p][member].copy_(self.as_member(p, stacked[member]))


def member_windows(
    data: TextData, micro: int, streams: Sequence[torch.Generator], per: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """data=text's training batches for a fused group: each data stream (a seed's
    generator) draws its windows' offsets batch by batch, exactly as a single run's
    generator draws them (runner/data/text.py `window_batches`). Inputs [D, B, T], one per
    stream; targets [K, B, T], each stream's repeated for its `per` members."""
    draws = [window_batches(data.x_train, data.y_train, micro, g) for g in streams]
    for parts in zip(*draws, strict=True):
        x = torch.stack([xb for xb, _ in parts]).to(device)
        y = torch.stack([yb for _, yb in parts]).to(device)
        yield x, y.repeat_interleave(per, 0)
