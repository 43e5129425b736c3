"""Many trials in one pass: T independently initialized networks stacked into one.

Each trial's network is built and initialized exactly as a single run builds it (its own
weight seed, on the CPU); :func:`stack` then copies the T networks' parameters into one
``TrialStack`` whose every layer computes all T networks at once, so that a GPU runs
T small problems as one large one instead of launching T times as many kernels:

- MLP: activations are ``(T, B, width)``; a ``StackedLinear`` is one batched matmul
  ``y_t = x_t W_t^T + b_t`` (``torch.baddbmm``); ``StackedBatchNorm`` normalizes each
  trial's batch separately.
- CNN: trials are merged into the channel axis, ``(B, T*C, H, W)``; a block's conv is one
  grouped convolution (``groups=T``: group t sees only trial t's channels), BatchNorm2d and
  pooling act per channel anyway, GroupNorm with one group becomes GroupNorm with T groups,
  and the head's linear layer is a grouped 1x1 conv.
- Residual blocks (:mod:`propbench.residual`) are rebuilt around their stacked branch and
  shortcut; the addition, alpha and beta act elementwise. Standardized weights
  (``model.nf``) are standardized per output unit, so per trial.

Activations are shared modules (elementwise; PReLU's single slope starts at the same value
in every trial). Nothing mixes trials, so each trial's outputs, gradients and therefore
statistics are the sequential path's up to floating-point summation order.
:meth:`TrialStack.merge` puts per-trial tensors into the stacked layout and
:meth:`TrialStack.split` gives a stacked tensor's per-trial view ``(T, *shape)`` without
copying; the probe reduces each trial's view separately. A single network is T = 1.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Optional, Sequence

import torch
from torch import nn

from propbench.models import Block, DeepStack
from propbench.residual import ResidualBlock, WSConv2d, standardized


def _stacked(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The trials' tensors along a new first axis; one trial's is a view, not a copy, so a
    single network's weights never exist twice."""
    if len(tensors) == 1:
        return tensors[0].detach().unsqueeze(0)
    return torch.stack([t.detach() for t in tensors])


class StackedLinear(nn.Module):
    """T independent ``nn.Linear`` layers on ``(T, B, in)``: weight ``(T, out, in)``; with
    ``ws_gain`` (a :class:`propbench.residual.WSLinear`'s), standardized per trial and row."""

    probe_site = "pre"

    def __init__(self, layers: Sequence[nn.Linear], ws_gain: Optional[float] = None):
        super().__init__()
        self.weight = nn.Parameter(_stacked([m.weight for m in layers]))
        has_bias = layers[0].bias is not None
        self.bias = nn.Parameter(_stacked([m.bias for m in layers])) if has_bias else None
        self.ws_gain = ws_gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight if self.ws_gain is None else standardized(self.weight, self.ws_gain, 2)
        if self.bias is None:
            return torch.bmm(x, weight.transpose(1, 2))
        return torch.baddbmm(self.bias.unsqueeze(1), x, weight.transpose(1, 2))


class StackedBatchNorm(nn.Module):
    """T independent ``nn.BatchNorm1d`` layers in training mode on ``(T, B, C)``: each
    trial's batch is normalized with its own mean and biased variance (Ioffe & Szegedy,
    2015), then scaled and shifted by its own affine parameters."""

    probe_site = "norm"

    def __init__(self, layers: Sequence[nn.BatchNorm1d]):
        super().__init__()
        self.eps = layers[0].eps
        self.weight = nn.Parameter(_stacked([m.weight for m in layers]).unsqueeze(1))
        self.bias = nn.Parameter(_stacked([m.bias for m in layers]).unsqueeze(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(x, dim=1, correction=0, keepdim=True)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias


class StackedLayerNorm(nn.Module):
    """T independent ``nn.LayerNorm`` layers on ``(T, B, C)``: each example normalized over
    its units (Ba et al. 2016), then scaled and shifted by its trial's affine parameters."""

    probe_site = "norm"

    def __init__(self, layers: Sequence[nn.LayerNorm]):
        super().__init__()
        self.eps = layers[0].eps
        self.weight = nn.Parameter(_stacked([m.weight for m in layers]).unsqueeze(1))
        self.bias = nn.Parameter(_stacked([m.bias for m in layers]).unsqueeze(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(x, dim=-1, correction=0, keepdim=True)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias


def _load_concatenated(module: nn.Module, sources: Sequence[nn.Module]) -> nn.Module:
    """Set ``module``'s weight and bias (where it has one) to the sources' concatenated
    along dim 0 (trial t's block first-to-last), reshaped to ``module``'s own shapes."""
    with torch.no_grad():
        for name in ("weight", "bias"):
            param = getattr(module, name, None)
            if param is not None:
                param.copy_(torch.cat([getattr(m, name) for m in sources]).reshape(param.shape))
    return module


def _grouped_conv(layers: Sequence[nn.Conv2d]) -> nn.Conv2d:
    first, trials = layers[0], len(layers)
    if trials == 1:  # one trial: the layer itself (no copy of its weights)
        return first
    ws = {"ws_gain": first.ws_gain} if isinstance(first, WSConv2d) else {}
    return _load_concatenated(type(first)(
        trials * first.in_channels, trials * first.out_channels, first.kernel_size,
        stride=first.stride, padding=first.padding, dilation=first.dilation, groups=trials,
        bias=first.bias is not None, dtype=first.weight.dtype, **ws,
    ), layers)


def _channel_norm(layers: Sequence[nn.BatchNorm2d]) -> nn.BatchNorm2d:
    first = layers[0]
    if len(layers) == 1:
        return first
    return _load_concatenated(nn.BatchNorm2d(
        len(layers) * first.num_features, eps=first.eps, momentum=first.momentum,
        dtype=first.weight.dtype,
    ), layers)


def _group_norm(layers: Sequence[nn.GroupNorm]) -> nn.GroupNorm:
    first = layers[0]
    if len(layers) == 1:
        return first
    return _load_concatenated(nn.GroupNorm(
        len(layers) * first.num_groups, len(layers) * first.num_channels, eps=first.eps,
        dtype=first.weight.dtype,
    ), layers)


def _head_conv(heads: Sequence[nn.Module]) -> nn.Module:
    """The CNN head (avg-pool, flatten, linear) per trial as avg-pool, grouped 1x1 conv,
    flatten: ``(B, T*C, H, W) -> (B, T*classes)``."""
    linears = [next(m for m in head if isinstance(m, nn.Linear)) for head in heads]
    first = linears[0]
    conv = nn.Conv2d(len(heads) * first.in_features, len(heads) * first.out_features, 1,
                     groups=len(heads), bias=first.bias is not None, dtype=first.weight.dtype)
    return nn.Sequential(copy.deepcopy(heads[0][0]), _load_concatenated(conv, linears),
                         nn.Flatten())


def _shared(modules: Sequence[nn.Module]) -> nn.Module:
    """One module for all trials (activations, pools); refuses trials that differ."""
    first = modules[0]
    for other in modules[1:]:
        for a, b in zip(first.parameters(), other.parameters()):
            if not torch.equal(a, b):
                raise ValueError(f"stack: the trials' {type(first).__name__} parameters differ")
    return copy.deepcopy(first)


class TrialStack(DeepStack):
    """T DeepStacks computed as one. ``layout`` is 'mlp' (trials on a new leading axis) or
    'cnn' (trials merged into the channel axis); module paths are those of a DeepStack."""

    def __init__(self, blocks: list[Block], head: nn.Module | None, input_shape: tuple[int, ...],
                 trials: int, layout: str):
        super().__init__(blocks, head, input_shape)
        self.trials, self.layout = trials, layout

    def merge(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """Per-trial inputs (or output cotangents) ``(B, ...)`` -> the stacked layout."""
        if self.layout == "mlp":
            return torch.stack(list(tensors))
        return torch.stack(list(tensors), dim=1).flatten(1, 2)

    def split(self, t: torch.Tensor, weight: bool = False) -> torch.Tensor:
        """A stacked activation, gradient or (``weight=True``) weight as ``(T, *shape)``:
        a view of ``t``, one slice per trial."""
        if self.layout == "mlp":
            return t
        if weight:
            return t.unflatten(0, (self.trials, -1))
        return t.unflatten(1, (self.trials, -1)).movedim(1, 0)


def _stack_layer(column: Sequence[nn.Module], layout: str) -> nn.Module:
    """One module that computes the trials' corresponding modules ``column`` at once."""
    first = column[0]
    part = lambda name: (None if getattr(first, name) is None  # noqa: E731
                         else _stack_layer([getattr(b, name) for b in column], layout))
    if isinstance(first, ResidualBlock):
        return ResidualBlock(part("branch"), first.alpha, part("shortcut"), part("act"),
                             first.beta, part("pool"))
    if isinstance(first, Block):
        return Block(first.weight_name, part(first.weight_name), part("norm"), part("act"),
                     part("pool"))
    if isinstance(first, nn.Sequential):  # a residual branch, its sublayers, a shortcut
        return type(first)(OrderedDict(
            (name, _stack_layer([getattr(m, name) for m in column], layout))
            for name, _ in first.named_children()))
    if layout == "mlp":
        if isinstance(first, nn.Linear):
            return StackedLinear(column, getattr(first, "ws_gain", None))
        if isinstance(first, nn.BatchNorm1d):
            return StackedBatchNorm(column)
        if isinstance(first, nn.LayerNorm):
            return StackedLayerNorm(column)
    else:
        if isinstance(first, nn.Conv2d):
            return _grouped_conv(column)
        if isinstance(first, nn.BatchNorm2d):
            return _channel_norm(column)
        if isinstance(first, nn.GroupNorm):
            return _group_norm(column)
    return _shared(column)  # activations, pools


def stack(models: Sequence[DeepStack]) -> TrialStack:
    """Stack T DeepStacks of one architecture (as :func:`propbench.models.build_model`
    makes them, with different seeds) into one TrialStack on the same device; each stacked
    module keeps the ``probe_position`` of the module it stands for."""
    trials = len(models)
    if trials < 1:
        raise ValueError("stack: needs at least one model")
    first = models[0]
    if not isinstance(first, DeepStack):  # a model that runs one trial per pass (transformer)
        if trials > 1:
            raise ValueError(f"stack: {type(first).__name__} runs one trial at a time")
        return first
    layout = "cnn" if any(isinstance(m, nn.Conv2d) for m in first.blocks.modules()) else "mlp"
    blocks = [_stack_layer([m.blocks[i] for m in models], layout) for i in range(len(first.blocks))]
    head = None if first.head is None else _head_conv([m.head for m in models])
    device = next(first.parameters()).device
    stacked = TrialStack(blocks, head, first.input_shape, trials, layout).to(device)
    for name, module in stacked.blocks.named_modules():
        position = getattr(first.blocks.get_submodule(name), "probe_position", None)
        if position is not None:
            module.probe_position = position
    return stacked
