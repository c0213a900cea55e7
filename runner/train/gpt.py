"""model=gpt: a decoder-only transformer in nanoGPT's style (karpathy/nanoGPT model.py).

Pre-norm blocks (LayerNorm, causal self-attention, LayerNorm, GELU MLP), learned
positions, the output head tied to the token embedding, GPT-2's initialisation: every
weight normal(0, 0.02), the residual projections (`c_proj`) scaled by 1/sqrt(2 n_layer) so
the residual stream's variance does not grow with depth. Attention is
F.scaled_dot_product_attention(is_causal=True): the fused kernel where the device has one.

It reads token windows x [B, T] (T <= block_size) and gives logits [B, T, vocab]: the
runner's loss flattens them to one prediction per token (runner/train/steps.py). The data
decides block_size (a sample's shape, (block_size,)) and vocab_size (its num_classes).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

INIT_STD = 0.02  # GPT-2's


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)
        self.n_head, self.dropout = n_head, dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        heads = (b, t, self.n_head, c // self.n_head)
        q, k, v = (z.view(heads).transpose(1, 2) for z in self.c_attn(x).split(c, dim=2))
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(b, t, c)))


class MLP(nn.Module):
    def __init__(self, n_embd: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, bias=bias)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout, bias)
        self.ln_2 = nn.LayerNorm(n_embd, bias=bias)
        self.mlp = MLP(n_embd, dropout, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Parts for param groups: `embed` (token and position tables: the token table is the
    head's weight too), `blocks`, `head` (the final LayerNorm; the tied output weight is
    counted once, in `embed`)."""

    def __init__(
        self,
        vocab_size: int,
        block_size: int,
        n_layer: int,
        n_head: int,
        n_embd: int,
        dropout: float,
        bias: bool,
    ) -> None:
        super().__init__()
        self.block_size = block_size
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, dropout, bias) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd, bias=bias)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied (Press & Wolf 2017), as GPT-2
        self.apply(_init)
        residual = INIT_STD / math.sqrt(2 * n_layer)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, 0.0, residual)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        pos = torch.arange(t, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def _init(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, 0.0, INIT_STD)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, 0.0, INIT_STD)


def parts(model: GPT) -> dict[str, list[nn.Parameter]]:
    """embed, blocks, head: together every parameter once (model.parameters() lists the
    tied weight once, as wte.weight)."""
    return {
        "embed": [model.wte.weight, model.wpe.weight],
        "blocks": [*model.blocks.parameters()],
        "head": [*model.ln_f.parameters()],
    }


def flops_per_token(model: GPT, block_size: int) -> float:
    """Training FLOPs per token, as nanoGPT's estimate_mfu (PaLM appendix B): 6 N for the
    matmuls' forward and backward, N the parameters less the position table, plus the
    attention's 12 L H Q T = 12 n_layer n_embd T (read off the model: its blocks, the
    width of its embedding)."""
    n = sum(p.numel() for p in model.parameters()) - model.wpe.weight.numel()
    return 6.0 * n + 12.0 * len(model.blocks) * model.wte.embedding_dim * block_size
