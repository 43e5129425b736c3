"""The layers of residual networks: a block ``x -> x + alpha * branch(x)``, its branch, and
the scaled-weight-standardized layers of normalizer-free networks.

A :class:`ResidualBlock` holds ``branch`` (a :class:`Branch`: a sequence of sublayers, each
a small ``nn.Sequential`` of weight, norm and activation in the block's order), an optional
``shortcut`` (a 1x1 convolution where the shape changes, as in torchvision's ResNets), an
optional ``act`` after the addition (the original, post-activation ResNet), ``alpha`` and,
for normalizer-free blocks, ``beta``. Its output -- the residual stream -- is what the
frame's ``block`` rows record, the branch's output (before alpha) its ``branch`` rows
(both via ``probe_site``).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn


class Branch(nn.Sequential):
    """The residual branch: its sublayers in order; its output is the ``branch`` site."""

    probe_site = "branch"


class ResidualBlock(nn.Module):
    """``out = shortcut(x) + alpha * branch(x / beta)`` [then ``act``]; a new stage's block
    pools its input first. With ``beta`` (normalizer-free, Brock et al. 2021, "Characterizing
    signal propagation to close the performance gap in unnormalized ResNets", sec. 4) the
    branch sees the stream divided by its expected standard deviation, and so does the
    shortcut convolution of a transition block (which resets the stream's variance)."""

    probe_site = "block"

    def __init__(self, branch: Branch, alpha: float, shortcut: Optional[nn.Module] = None,
                 act: Optional[nn.Module] = None, beta: Optional[float] = None,
                 pool: Optional[nn.Module] = None):
        super().__init__()
        self.pool = pool
        self.branch = branch
        self.shortcut = shortcut
        self.act = act
        self.alpha, self.beta = alpha, beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = self.pool(x)
        inner = x if self.beta is None else x / self.beta  # what branch and shortcut see
        skip = x if self.shortcut is None else self.shortcut(inner)
        out = skip + self.alpha * self.branch(inner)
        return out if self.act is None else self.act(out)


def nf_gamma(act: str, slope: Optional[float] = None) -> float:
    """The gain gamma = 1 / sqrt(Var phi(z)), z ~ N(0, 1), that a standardized weight layer
    needs after the activation phi to keep unit variance (Brock et al. 2021, sec. 4.2: 1.7139
    for ReLU). Its weights have zero mean per output unit, so the input's mean does not pass:
    the variance, not the second moment, of phi(z) is what is restored."""
    from propbench.theory import moments

    mean, second, _ = moments(act, 1.0, slope)
    return 1.0 / math.sqrt(second - mean**2)


def nf_betas(transitions: list[bool], alpha: float) -> list[float]:
    """beta_l = sqrt(expected Var of block l's input): 1 at the input, + alpha^2 per block
    within a stage, reset to 1 + alpha^2 after a transition block (whose shortcut sees the
    normalized input). ``transitions[l]``: block l changes the shape."""
    betas, expected = [], 1.0
    for transition in transitions:
        betas.append(math.sqrt(expected))
        expected = (1.0 if transition else expected) + alpha**2
    return betas


def standardized(weight: torch.Tensor, gain: float, first_in_axis: int = 1,
                 eps: float = 1e-4) -> torch.Tensor:
    """Scaled weight standardization (Brock et al. 2021, eq. 2; Qiao et al. 2019):
    ``gain * (W - mean) / (std * sqrt(fan_in))`` per output unit, mean and biased std over
    its fan_in inputs: the axes from ``first_in_axis`` on (1 for ``(out, in, *kernel)``, 2
    for the ``(T, out, in)`` of stacked trials). Each row then has squared norm gain^2."""
    dims = tuple(range(first_in_axis, weight.dim()))
    fan_in = math.prod(weight.shape[d] for d in dims)
    var, mean = torch.var_mean(weight, dim=dims, correction=0, keepdim=True)
    return gain * (weight - mean) * torch.rsqrt(torch.clamp(var * fan_in, min=eps))


class WSLinear(nn.Linear):
    """nn.Linear whose forward uses :func:`standardized` weights (gain ``ws_gain``)."""

    def __init__(self, *args, ws_gain: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.ws_gain = ws_gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, standardized(self.weight, self.ws_gain), self.bias)


class WSConv2d(nn.Conv2d):
    """nn.Conv2d whose forward uses :func:`standardized` weights (gain ``ws_gain``); per
    output channel, so a grouped convolution of stacked trials standardizes each trial."""

    def __init__(self, *args, ws_gain: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.ws_gain = ws_gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, standardized(self.weight, self.ws_gain), self.bias)
