"""The transformer propbench probes: ``depth`` blocks of multi-head self-attention and an MLP
on token sequences ``(batch, tokens, width)``.

A block has two residual sublayers, attention (sublayer 1) and, unless ``mlp_ratio = 0``,
the MLP (sublayer 2). Each is, with ``s`` = 1 if ``residual`` else 0,

- pre-LN (``order=pre``; GPT-2): ``x -> s x + alpha * branch(LN(x))``,
- post-LN (``order=post``; Vaswani et al. 2017): ``x -> LN(s x + alpha * branch(x))``,

and ``norm=none`` drops the LayerNorms. With ``final_norm`` a LayerNorm follows the last
block (GPT-2's ``ln_f``); it is the output, not a probed row. Attention is written with
``nn.Linear`` layers (``query``, ``key``, ``value``, ``out``) so that the probe sees every
projection (Vaswani et al. 2017, eq. 1):

    softmax(Q K^T / sqrt(width / heads) [+ causal mask]) V, per head, then ``out``.

Module paths: ``blocks.<i>.<k>.{norm, branch}``, ``branch.{query, key, value, weights,
out}`` for attention and ``branch.{fc, act, proj}`` for the MLP. Every probed module carries
its ``probe_position`` (block i + 1, sublayer k + 1); a block's output is its ``block`` row
(the residual stream), a branch's output (before alpha) its ``branch`` row, and the
attention probabilities (``weights``) give the ``attention_entropy`` rows.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn


class AttentionWeights(nn.Module):
    """``softmax(q k^T / sqrt(d_head))`` over the keys, future keys masked when ``causal``:
    ``(batch, heads, tokens, d_head)`` twice -> ``(batch, heads, tokens, tokens)``, each row a
    probability distribution (the probe's ``attention`` site)."""

    probe_site = "attention"

    def __init__(self, causal: bool = False):
        super().__init__()
        self.causal = causal

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        if self.causal:
            n = scores.shape[-1]
            future = torch.ones(n, n, dtype=torch.bool, device=scores.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        return scores.softmax(-1)


class SelfAttention(nn.Module):
    """Multi-head self-attention on ``(batch, tokens, width)`` with ``heads`` heads of
    ``width / heads`` units each; the same function as
    ``torch.nn.functional.scaled_dot_product_attention`` between its projections."""

    def __init__(self, width: int, heads: int, causal: bool = False, bias: bool = True,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = (nn.Linear(width, width, bias=bias, dtype=dtype)
                                            for _ in range(3))
        self.weights = AttentionWeights(causal)
        self.out = nn.Linear(width, width, bias=bias, dtype=dtype)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(-1, (self.heads, -1)).transpose(-3, -2)  # (B, H, N, d_head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        mixed = self.weights(q, k) @ v  # (B, H, N, d_head)
        return self.out(mixed.transpose(-3, -2).flatten(-2))


class ResidualSublayer(nn.Module):
    """One residual unit of a block: ``s x + alpha * branch(norm(x))`` (pre) or
    ``norm(s x + alpha * branch(x))`` (post), ``s`` = 1 with the skip connection, else 0."""

    def __init__(self, branch: nn.Module, norm: nn.Module | None, alpha: float, pre: bool,
                 residual: bool):
        super().__init__()
        self.norm, self.branch = norm, branch
        self.branch.probe_site = "branch"
        self.alpha, self.pre, self.residual = alpha, pre, residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inner = x if self.norm is None or not self.pre else self.norm(x)
        out = self.alpha * self.branch(inner)
        if self.residual:
            out = x + out
        return out if self.norm is None or self.pre else self.norm(out)

    def probed_modules(self) -> list[nn.Module]:
        leaves = [m for m in self.branch.modules() if not list(m.children())]
        norm = [] if self.norm is None else [self.norm]
        return (norm if self.pre else []) + leaves + [self.branch] + ([] if self.pre else norm)


class TransformerBlock(nn.Sequential):
    """Attention then [MLP], each a :class:`ResidualSublayer`; its output is the ``block``
    site (the residual stream between blocks)."""

    probe_site = "block"


class Transformer(nn.Module):
    """``blocks`` then an optional final LayerNorm; input ``(batch, tokens, width)``.

    It runs one trial per pass: ``trials``, :meth:`merge` and :meth:`split` are those of a
    :class:`propbench.stacked.TrialStack` of one network."""

    trials = 1
    token_dim = 1  # the probe's token_similarity reads the tokens on this axis

    def __init__(self, blocks: Sequence[TransformerBlock], final_norm: nn.Module | None,
                 input_shape: tuple[int, int]):
        super().__init__()
        self.blocks = nn.Sequential(*blocks)
        self.final_norm = final_norm
        self.input_shape = input_shape  # (tokens, width), without the batch dimension
        for i, block in enumerate(self.blocks, 1):
            block.probe_position = (i, None)
            for k, sublayer in enumerate(block, 1):
                for m in sublayer.probed_modules():
                    m.probe_position = (i, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(x)
        return x if self.final_norm is None else self.final_norm(x)

    def probed_modules(self) -> list[nn.Module]:
        """Per block, each sublayer's norm, branch leaves and branch, then the block."""
        return [m for block in self.blocks
                for m in [*(m for sub in block for m in sub.probed_modules()), block]]

    def attention(self) -> list[SelfAttention]:
        """Every block's attention module, in order."""
        return [block[0].branch for block in self.blocks]

    def merge(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        (x,) = tensors
        return x

    def split(self, t: torch.Tensor, weight: bool = False) -> torch.Tensor:
        return t.unsqueeze(0)


def mlp_branch(width: int, ratio: int, act: nn.Module, bias: bool, dtype: torch.dtype) -> nn.Sequential:
    """Linear(width, ratio * width) -> act -> Linear(ratio * width, width)."""
    hidden = ratio * width
    return nn.Sequential(OrderedDict([
        ("fc", nn.Linear(width, hidden, bias=bias, dtype=dtype)),
        ("act", act),
        ("proj", nn.Linear(hidden, width, bias=bias, dtype=dtype)),
    ]))
