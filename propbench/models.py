"""The deep stacks propbench probes: an MLP and a CNN made of identical blocks.

A block is ``weight layer -> [BatchNorm] -> activation [-> pool]``. Module paths are
``blocks.<i>.linear`` / ``blocks.<i>.conv``, ``blocks.<i>.norm``, ``blocks.<i>.act``
(i from 0), which is what the ``module`` column of the frame shows; the frame's ``layer``
is i + 1.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import nn

from propbench.activations import make_activation
from propbench.config import DType, Norm, Order, Pool, PropbenchConfig, branch_scale, settings
from propbench.errors import choose
from propbench.inits import init_model
from propbench.seeds import trial_seeds
from propbench.transformer import (ResidualSublayer, SelfAttention, Transformer, TransformerBlock,
                                   mlp_branch)


class Block(nn.Module):
    def __init__(self, weight_name: str, weight: nn.Module, norm: nn.Module | None,
                 act: nn.Module, pool: nn.Module | None = None):
        super().__init__()
        self.weight_name = weight_name
        self.add_module(weight_name, weight)
        self.norm = norm
        self.act = act
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = getattr(self, self.weight_name)(x)
        if self.norm is not None:
            x = self.norm(x)
        x = self.act(x)
        return x if self.pool is None else self.pool(x)


class DeepStack(nn.Module):
    """``blocks`` then an optional ``head``; knows the shape of its input."""

    def __init__(self, blocks: list[Block], head: nn.Module | None, input_shape: tuple[int, ...]):
        super().__init__()
        self.blocks = nn.Sequential(*blocks)
        self.head = head
        self.input_shape = input_shape  # without the batch dimension

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(x)
        return x if self.head is None else self.head(x)

    def probed_modules(self) -> list[nn.Module]:
        """The modules whose outputs make the frame's rows: every block's leaves but pools."""
        return [
            m for block in self.blocks for name, m in block.named_children() if name != "pool"
        ]


def mlp(s: PropbenchConfig, dtype: torch.dtype) -> DeepStack:
    def block() -> Block:
        return Block(
            "linear",
            nn.Linear(s.width, s.width, bias=s.bias, dtype=dtype),
            nn.BatchNorm1d(s.width, dtype=dtype) if s.model.norm == Norm.batchnorm else None,
            make_activation(s.act.name, s.act.slope).to(dtype),
        )

    return DeepStack([block() for _ in range(s.depth)], None, (s.width,))


def cnn(s: PropbenchConfig, dtype: torch.dtype) -> DeepStack:
    """Conv blocks starting at ``width`` channels, in stages of ``stage_every`` blocks (see
    CNNConfig): a stage's last block pools, the next stage's first block widens."""
    model = s.model
    pools = {Pool.max: nn.MaxPool2d, Pool.avg: nn.AvgPool2d}
    blocks, size, channels, widen = [], model.image_size, model.in_channels, False
    for i in range(s.depth):
        out = s.width if i == 0 else channels * (model.channel_growth if widen else 1)
        stage_end = model.stage_every > 0 and (i + 1) % model.stage_every == 0
        pooled = stage_end and model.pool in pools and size > 1
        blocks.append(
            Block(
                "conv",
                nn.Conv2d(channels, out, model.kernel_size, padding="same", bias=s.bias, dtype=dtype),
                nn.BatchNorm2d(out, dtype=dtype) if model.norm == Norm.batchnorm else None,
                make_activation(s.act.name, s.act.slope).to(dtype),
                pools[model.pool](2) if pooled else None,
            )
        )
        channels, widen = out, stage_end
        size = size // 2 if pooled else size
    head = nn.Sequential(
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, model.num_classes, dtype=dtype)
    )
    return DeepStack(blocks, head, (model.in_channels, model.image_size, model.image_size))


def transformer(s: PropbenchConfig, dtype: torch.dtype) -> Transformer:
    """``depth`` transformer blocks (see TransformerConfig and propbench.transformer)."""
    model, width = s.model, s.width
    alpha = branch_scale(model.alpha, s.depth)

    def norm() -> Optional[nn.Module]:
        return nn.LayerNorm(width, dtype=dtype) if model.norm == Norm.layernorm else None

    def sublayer(branch: nn.Module) -> ResidualSublayer:
        return ResidualSublayer(branch, norm(), alpha, model.order == Order.pre, model.residual)

    blocks = []
    for _ in range(s.depth):
        parts = [sublayer(SelfAttention(width, model.heads, model.causal, s.bias, dtype))]
        if model.mlp_ratio > 0:
            act = make_activation(s.act.name, s.act.slope).to(dtype)
            parts.append(sublayer(mlp_branch(width, model.mlp_ratio, act, s.bias, dtype)))
        blocks.append(TransformerBlock(*parts))
    final = nn.LayerNorm(width, dtype=dtype) if model.final_norm else None
    return Transformer(blocks, final, (model.tokens, width))


# model name (a key of propbench.config.MODELS) -> the function that builds it
BUILDERS: dict[str, Callable[[PropbenchConfig, torch.dtype], nn.Module]] = {
    "mlp": mlp, "cnn": cnn, "transformer": transformer}
DTYPES = {DType.float32: torch.float32, DType.float64: torch.float64}


def build_model(cfg: Any, seed: Optional[int] = None) -> DeepStack:
    """Build and initialize the network ``cfg`` describes, on the CPU.

    Construction and init draw from torch's global generator seeded with ``seed`` (default:
    the config's weight stream for trial 0) inside ``torch.random.fork_rng``, so the
    caller's RNG state is untouched and the same seed gives the same weights on any device.
    ``cfg`` is what :func:`propbench.config.settings` takes: a composed config
    (:func:`propbench.compose`) or a :class:`propbench.PropbenchConfig`.
    """
    s = settings(cfg)
    if seed is None:
        seed = trial_seeds(s.seed, 0).weights
    build = choose(BUILDERS, s.model.name, "model")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build(s, DTYPES[s.dtype])
        init_model(model, s.init, s.act.name, s.act.slope)
    return model
