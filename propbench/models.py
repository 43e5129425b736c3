"""The deep stacks propbench probes: an MLP and a CNN made of identical blocks, their
residual versions ``resmlp`` and ``resnet``, and the ``transformer``
(:mod:`propbench.transformer`, whose module paths and rows are described there).

A plain block is ``weight layer -> [norm] -> activation [-> pool]``. Module paths are
``blocks.<i>.linear`` / ``blocks.<i>.conv``, ``blocks.<i>.norm``, ``blocks.<i>.act``
(i from 0), which is what the ``module`` column of the frame shows; the frame's ``layer``
is i + 1. A residual block (:class:`propbench.residual.ResidualBlock`) has
``blocks.<i>.branch.<k>.{norm,act,linear|conv}`` (k from 0; the frame's ``sublayer`` is
k + 1) and, where the shape changes, ``blocks.<i>.shortcut``; its ``layer`` is i + 1 for
every row of the block.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Optional

import torch
from torch import nn

from propbench.activations import make_activation
from propbench.config import DType, Norm, Order, Pool, PropbenchConfig, settings
from propbench.errors import choose, one_line
from propbench.inits import init_model
from propbench.residual import (Branch, ResidualBlock, WSConv2d, WSLinear, nf_betas,
                                nf_gamma)
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
        """The modules whose outputs make the frame's rows: every plain block's leaves but
        pools; of a residual block, its branch's leaves, the branch and the block itself
        (the stream), not the shortcut."""
        modules = []
        for block in self.blocks:
            if isinstance(block, ResidualBlock):
                modules += [m for sublayer in block.branch for m in sublayer]
                modules += [block.branch, block]
            else:
                modules += [m for name, m in block.named_children() if name != "pool"]
        return modules

    def branches(self) -> list[list[nn.Module]]:
        """Per residual block, its branch's weight layers in order (none for a plain stack)."""
        return [[m for sublayer in block.branch for name, m in sublayer.named_children()
                 if name in ("linear", "conv")]
                for block in self.blocks if isinstance(block, ResidualBlock)]


def make_norm(norm: Norm, features: int, conv: bool, dtype: torch.dtype) -> Optional[nn.Module]:
    """The normalization layer ``norm`` names for ``features`` units or channels: BatchNorm
    (per unit / channel over the batch [and positions]), LayerNorm (per example over its
    units; for convolutions GroupNorm with one group: over channels and positions), or
    None."""
    if norm == Norm.batchnorm:
        return (nn.BatchNorm2d if conv else nn.BatchNorm1d)(features, dtype=dtype)
    if norm == Norm.layernorm:
        return nn.GroupNorm(1, features, dtype=dtype) if conv else nn.LayerNorm(features, dtype=dtype)
    return None


def mlp(s: PropbenchConfig, dtype: torch.dtype) -> DeepStack:
    def block() -> Block:
        return Block(
            "linear",
            nn.Linear(s.width, s.width, bias=s.bias, dtype=dtype),
            make_norm(s.model.norm, s.width, False, dtype),
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
                make_norm(model.norm, out, True, dtype),
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


def _residual_block(s: PropbenchConfig, dtype: torch.dtype, layer: int, channels: int, out: int,
                    beta: Optional[float], pool: Optional[nn.Module] = None) -> ResidualBlock:
    """Block ``layer`` (from 1) from ``channels`` to ``out`` units/channels: a branch of
    ``branch_layers`` sublayers in the model's order, a 1x1 conv shortcut if the two differ;
    every probed module is told its (layer, sublayer) in ``probe_position``."""
    model, conv = s.model, s.model.name == "resnet"
    pre = model.order == Order.pre
    gamma = nf_gamma(s.act.name, s.act.slope) if model.nf else None

    def weight(fan_in: int, fan_out: int, kernel: int, gain: Optional[float]) -> nn.Module:
        if conv:
            conv_type, kwargs = (nn.Conv2d, {}) if gain is None else (WSConv2d, {"ws_gain": gain})
            return conv_type(fan_in, fan_out, kernel, padding="same", bias=s.bias, dtype=dtype,
                             **kwargs)
        if gain is None:
            return nn.Linear(fan_in, fan_out, bias=s.bias, dtype=dtype)
        return WSLinear(fan_in, fan_out, bias=s.bias, dtype=dtype, ws_gain=gain)

    sublayers = []
    for k in range(model.branch_layers):
        fan_in = channels if k == 0 else out
        last = k == model.branch_layers - 1
        parts = [("conv" if conv else "linear", weight(fan_in, out, model.kernel_size if conv else 1, gamma)),
                 ("norm", make_norm(model.norm, fan_in if pre else out, conv, dtype)),
                 ("act", None if last and not pre else make_activation(s.act.name, s.act.slope).to(dtype))]
        if pre:  # norm -> act -> weight
            parts = parts[1:] + parts[:1]
        sublayer = nn.Sequential(OrderedDict((name, m) for name, m in parts if m is not None))
        for m in sublayer:
            m.probe_position = (layer, k + 1)
        sublayers.append(sublayer)
    shortcut = None
    if channels != out:
        parts = [("conv", weight(channels, out, 1, None if gamma is None else 1.0))]
        if not pre:  # torchvision's projection: conv1x1 -> norm
            parts.append(("norm", make_norm(model.norm, out, conv, dtype)))
        shortcut = nn.Sequential(OrderedDict((name, m) for name, m in parts if m is not None))
    after = None if pre else make_activation(s.act.name, s.act.slope).to(dtype)
    block = ResidualBlock(Branch(*sublayers), model.branch_scale(s.depth), shortcut, after,
                          beta, pool)
    block.probe_position = block.branch.probe_position = (layer, None)
    return block


def resmlp(s: PropbenchConfig, dtype: torch.dtype) -> DeepStack:
    """``depth`` residual blocks of width ``width`` (see ResMLPConfig)."""
    betas = (nf_betas([False] * s.depth, s.model.branch_scale(s.depth)) if s.model.nf
             else [None] * s.depth)
    blocks = [_residual_block(s, dtype, i + 1, s.width, s.width, betas[i]) for i in range(s.depth)]
    return DeepStack(blocks, None, (s.width,))


def resnet(s: PropbenchConfig, dtype: torch.dtype) -> DeepStack:
    """Residual conv blocks in the CNN's stages (see ResNetConfig): the first block maps
    ``in_channels`` to ``width``; a new stage's first block pools its input and widens the
    channels by ``channel_growth``."""
    model = s.model
    pools = {Pool.max: nn.MaxPool2d, Pool.avg: nn.AvgPool2d}
    shapes, size, channels = [], model.image_size, model.in_channels
    for i in range(s.depth):
        new_stage = model.stage_every > 0 and i > 0 and i % model.stage_every == 0
        out = s.width if i == 0 else channels * (model.channel_growth if new_stage else 1)
        pooled = new_stage and model.pool in pools and size > 1
        shapes.append((channels, out, pooled))
        channels, size = out, size // 2 if pooled else size
    betas = (nf_betas([c != o for c, o, _ in shapes], model.branch_scale(s.depth)) if model.nf
             else [None] * s.depth)
    blocks = [_residual_block(s, dtype, i + 1, c, o, betas[i], pools[model.pool](2) if p else None)
              for i, (c, o, p) in enumerate(shapes)]
    head = nn.Sequential(
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, model.num_classes, dtype=dtype)
    )
    return DeepStack(blocks, head, (model.in_channels, model.image_size, model.image_size))


def transformer(s: PropbenchConfig, dtype: torch.dtype) -> Transformer:
    """``depth`` transformer blocks (see TransformerConfig and propbench.transformer)."""
    model, width = s.model, s.width
    alpha = model.branch_scale(s.depth)

    def sublayer(branch: nn.Module) -> ResidualSublayer:
        return ResidualSublayer(branch, make_norm(model.norm, width, False, dtype), alpha,
                                model.order == Order.pre, model.residual)

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
    "mlp": mlp, "cnn": cnn, "resmlp": resmlp, "resnet": resnet, "transformer": transformer}
DTYPES = {DType.float32: torch.float32, DType.float64: torch.float64}


def draw_inputs(s: PropbenchConfig, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Standard-normal inputs; with ``correlation=c0``, interleaved pairs (rows 2i, 2i+1)
    x_b = c0 x_a + sqrt(1 - c0^2) n, so that each pair has correlation c0."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((s.batch_size, *shape), generator=generator, dtype=DTYPES[s.dtype])
    if s.correlation is not None:
        c0 = s.correlation
        x[1::2] = c0 * x[0::2] + (1 - c0**2) ** 0.5 * x[1::2]
    return x


def build_model(cfg: Any, seed: Optional[int] = None, input_seed: Optional[int] = None) -> DeepStack:
    """Build and initialize the network ``cfg`` describes, on the CPU.

    A data-dependent scheme (``init=lsuv``) is then calibrated on the inputs a run probes
    with, :func:`draw_inputs` with ``input_seed`` (default: the config's input stream for
    trial 0); its record (iterations and reached variances per layer) is the model's
    ``calibration`` attribute.

    Construction and init draw from torch's global generator seeded with ``seed`` (default:
    the config's weight stream for trial 0) inside ``torch.random.fork_rng``, so the
    caller's RNG state is untouched and the same seed gives the same weights on any device.
    ``cfg`` is what :func:`propbench.config.settings` takes: a composed config
    (:func:`propbench.compose`) or a :class:`propbench.PropbenchConfig`.
    """
    s = settings(cfg)
    if seed is None:
        seed = trial_seeds(s.seed, 0).weights
    if s.model.name == "custom":
        return build_custom(s, seed)
    build = choose(BUILDERS, s.model.name, "model")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build(s, DTYPES[s.dtype])
        init_model(model, s.init, s.act.name, s.act.slope)
    if s.init.data_dependent:
        seed = trial_seeds(s.seed, 0).inputs if input_seed is None else input_seed
        model.calibration = s.init.calibrate(model, draw_inputs(s, model.input_shape, seed))
    return model


def build_custom(s: PropbenchConfig, seed: int) -> nn.Module:
    """``model=custom``: the factory ``model._target_`` called with the further keys of
    ``model`` by Hydra's ``instantiate``, drawing from torch's global generator seeded with
    ``seed`` (inside ``fork_rng``), so a factory that initializes its own weights (every
    ``torch.nn`` layer, ``transformers``' ``_init_weights``) is reproducible; then cast to
    ``dtype``. ConfigError with one line if the factory fails or builds no ``nn.Module``."""
    from hydra.utils import instantiate

    from propbench.errors import ConfigError

    target = s.model._target_
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = instantiate({"_target_": target, **s.model.kwargs}, _convert_="all")
        except Exception as err:  # noqa: BLE001 -- the factory's failure is the config's
            cause = err.__cause__ or err
            raise ConfigError(f"model._target_={target}: building it failed: "
                              f"{type(cause).__name__}: {one_line(cause)}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model._target_={target}: built a {type(model).__name__}, not an nn.Module")
    return model.to(DTYPES[s.dtype]) if s.dtype == DType.float64 else model
