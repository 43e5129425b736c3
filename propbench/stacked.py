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
  pooling act per channel anyway, and the head's linear layer is a grouped 1x1 conv.

Activations are shared modules (elementwise; PReLU's single slope starts at the same value
in every trial). Nothing mixes trials, so each trial's outputs, gradients and therefore
statistics are the sequential path's up to floating-point summation order.
:meth:`TrialStack.merge` puts per-trial tensors into the stacked layout and
:meth:`TrialStack.split` gives a stacked tensor's per-trial view ``(T, *shape)`` without
copying; the probe reduces each trial's view separately. A single network is T = 1.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn

from propbench.models import Block, DeepStack


def _stacked(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The trials' tensors along a new first axis; one trial's is a view, not a copy, so a
    single network's weights never exist twice."""
    if len(tensors) == 1:
        return tensors[0].detach().unsqueeze(0)
    return torch.stack([t.detach() for t in tensors])


class StackedLinear(nn.Module):
    """T independent ``nn.Linear`` layers on ``(T, B, in)``: weight ``(T, out, in)``."""

    probe_site = "pre"

    def __init__(self, layers: Sequence[nn.Linear]):
        super().__init__()
        self.weight = nn.Parameter(_stacked([m.weight for m in layers]))
        has_bias = layers[0].bias is not None
        self.bias = nn.Parameter(_stacked([m.bias for m in layers])) if has_bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is None:
            return torch.bmm(x, self.weight.transpose(1, 2))
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))


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
    return _load_concatenated(nn.Conv2d(
        trials * first.in_channels, trials * first.out_channels, first.kernel_size,
        stride=first.stride, padding=first.padding, dilation=first.dilation, groups=trials,
        bias=first.bias is not None, dtype=first.weight.dtype,
    ), layers)


def _channel_norm(layers: Sequence[nn.BatchNorm2d]) -> nn.BatchNorm2d:
    first = layers[0]
    if len(layers) == 1:
        return first
    return _load_concatenated(nn.BatchNorm2d(
        len(layers) * first.num_features, eps=first.eps, momentum=first.momentum,
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


def stack(models: Sequence[DeepStack]) -> TrialStack:
    """Stack T DeepStacks of one architecture (as :func:`propbench.models.build_model`
    makes them, with different seeds) into one TrialStack on the same device."""
    trials = len(models)
    if trials < 1:
        raise ValueError("stack: needs at least one model")
    first = models[0]
    if not isinstance(first, DeepStack):  # a model that runs one trial per pass (transformer)
        if trials > 1:
            raise ValueError(f"stack: {type(first).__name__} runs one trial at a time")
        return first
    first_weight = getattr(first.blocks[0], first.blocks[0].weight_name)
    layout = "cnn" if isinstance(first_weight, nn.Conv2d) else "mlp"
    blocks = []
    for i, block in enumerate(first.blocks):
        column = [m.blocks[i] for m in models]
        weights = [getattr(b, block.weight_name) for b in column]
        if layout == "mlp":
            weight = StackedLinear(weights)
            norm = StackedBatchNorm([b.norm for b in column]) if block.norm is not None else None
        else:
            weight = _grouped_conv(weights)
            norm = _channel_norm([b.norm for b in column]) if block.norm is not None else None
        pool = _shared([b.pool for b in column]) if block.pool is not None else None
        blocks.append(Block(block.weight_name, weight, norm, _shared([b.act for b in column]), pool))
    head = None if first.head is None else _head_conv([m.head for m in models])
    device = next(first.parameters()).device
    return TrialStack(blocks, head, first.input_shape, trials, layout).to(device)
