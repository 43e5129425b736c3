"""INITS: the one registry of weight-init schemes, all but two thin wrappers over
:func:`variance_scaling_`.

A scheme draws W with ``Var(W) = scale / fan`` (LeCun et al., 1998; Glorot & Bengio, 2010;
He et al., 2015), where fan is torch's own fan of the weight (in_features, or
in_channels * kernel area for a conv) and scale = gain^2:

====================  =========================  =====================================
scheme                Var(W)                     preserves
====================  =========================  =====================================
``lecun``             gain^2 / fan_in            forward variance of linear/SELU nets
``xavier``            gain^2 * 2/(fan_in+fan_out) a compromise; gain 1 halves ReLU nets
``kaiming``           gain^2 / fan_mode          forward (fan_in) or backward (fan_out)
``default``           1 / (3 fan_in)             nothing: PyTorch's kaiming_uniform_(a=sqrt(5))
====================  =========================  =====================================

``*_uniform`` variants draw U(-sqrt(3) std, sqrt(3) std) with the same variance. With
``init.gain`` null, ``kaiming`` takes its gain from the activation
(:func:`propbench.activations.kaiming_gain`), every other scheme uses 1. Biases are zeroed,
or left at PyTorch's ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` with ``bias=default``.
BatchNorm gets weight 1 and bias 0.

All randomness comes from torch's global generator; :func:`propbench.models.build_model`
seeds it, so ``init=kaiming`` draws exactly what ``nn.init.kaiming_normal_`` draws.

>>> import torch
>>> from propbench.inits import variance_scaling_
>>> w = variance_scaling_(torch.empty(512, 512), scale=2.0)  # He normal
>>> round(float(w.var() * 512), 1)
2.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import nn

from propbench.activations import kaiming_gain
from propbench.errors import ConfigError, choose

WEIGHTED_TYPES = (nn.Linear, nn.modules.conv._ConvNd)
NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def fan(weight: torch.Tensor, mode: str) -> float:
    """torch's fan of ``weight`` for ``mode`` in fan_in | fan_out | fan_avg."""
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(weight)
    fans = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}
    if mode not in fans:
        raise ConfigError(f"init.mode={mode}: choose one of {', '.join(fans)}")
    return fans[mode]


@torch.no_grad()
def variance_scaling_(
    weight: torch.Tensor,
    scale: float = 1.0,
    mode: str = "fan_in",
    distribution: str = "normal",
) -> torch.Tensor:
    """Fill ``weight`` in place with ``Var = scale / fan(weight, mode)``.

    ``distribution='normal'`` draws N(0, std^2) and ``'uniform'`` U(-sqrt(3) std, sqrt(3) std)
    -- the same calls as torch's kaiming_/xavier_ functions, so the same numbers.
    """
    std = math.sqrt(scale / fan(weight, mode))
    if distribution == "normal":
        return weight.normal_(0.0, std)
    if distribution == "uniform":
        bound = math.sqrt(3.0) * std
        return weight.uniform_(-bound, bound)
    raise ConfigError(f"distribution={distribution}: choose normal or uniform")


# Each scheme: (module, gain, params) -> None, filling module.weight in place.
Fill = Callable[[nn.Module, float, Any], Any]
# ... and the per-element weight variance it draws: (fan_in, fan_out, gain, params) -> Var(W),
# None where the weights are not zero-mean (then no mean-field prediction applies).
Variance = Callable[[float, float, float, Any], Optional[float]]


@dataclass(frozen=True)
class Init:
    fill: Fill
    variance: Variance
    gain_from_activation: bool = False  # null gain -> the activation's Kaiming gain


def _fan(mode: str, fan_in: float, fan_out: float) -> float:
    return {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]


def _scaled_fill(module: nn.Module, gain: float, p: Any) -> Any:
    """init=scaled: Var(W) = sigma_w2 / fan_mode from ``p.distribution``; bias ~ N(0, sigma_b2)."""
    if p.distribution == "orthogonal":
        fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(module.weight)
        orthogonal_gain = math.sqrt(p.sigma_w2 * max(fan_in, fan_out) / fan(module.weight, p.mode))
        nn.init.orthogonal_(module.weight, orthogonal_gain)
    else:
        variance_scaling_(module.weight, p.sigma_w2, p.mode, p.distribution)
    if module.bias is not None:
        nn.init.normal_(module.bias, 0.0, math.sqrt(p.sigma_b2))


INITS: dict[str, Init] = {
    # PyTorch's own: kaiming_uniform_(a=sqrt(5)), i.e. Var = 1/(3 fan_in), and its bias
    "default": Init(lambda m, g, p: m.reset_parameters(), lambda fi, fo, g, p: 1 / (3 * fi)),
    "uniform": Init(lambda m, g, p: nn.init.uniform_(m.weight, p.a, p.b),
                    lambda fi, fo, g, p: (p.b - p.a) ** 2 / 12 if p.a == -p.b else None),
    "normal": Init(lambda m, g, p: nn.init.normal_(m.weight, 0.0, p.std),
                   lambda fi, fo, g, p: p.std**2),
    "xavier": Init(lambda m, g, p: variance_scaling_(m.weight, g**2, "fan_avg", "normal"),
                   lambda fi, fo, g, p: g**2 / _fan("fan_avg", fi, fo)),
    "xavier_uniform": Init(
        lambda m, g, p: variance_scaling_(m.weight, g**2, "fan_avg", "uniform"),
        lambda fi, fo, g, p: g**2 / _fan("fan_avg", fi, fo)),
    "kaiming": Init(lambda m, g, p: variance_scaling_(m.weight, g**2, p.mode, "normal"),
                    lambda fi, fo, g, p: g**2 / _fan(p.mode, fi, fo), True),
    "kaiming_uniform": Init(
        lambda m, g, p: variance_scaling_(m.weight, g**2, p.mode, "uniform"),
        lambda fi, fo, g, p: g**2 / _fan(p.mode, fi, fo), True),
    "lecun": Init(lambda m, g, p: variance_scaling_(m.weight, g**2, "fan_in", "normal"),
                  lambda fi, fo, g, p: g**2 / fi),
    # rows (or columns, if taller than wide) of norm gain
    "orthogonal": Init(lambda m, g, p: nn.init.orthogonal_(m.weight, g),
                       lambda fi, fo, g, p: g**2 / max(fi, fo)),
    "scaled": Init(_scaled_fill, lambda fi, fo, g, p: p.sigma_w2 / _fan(p.mode, fi, fo)),
}


@torch.no_grad()
def default_bias_(module: nn.Module) -> None:
    """PyTorch's bias init for Linear/Conv: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    fan_in = fan(module.weight, "fan_in")
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    module.bias.uniform_(-bound, bound)


def lookup(name: str) -> Init:
    return choose(INITS, name, "init")


def resolve_gain(init: Any, act: str, slope: Optional[float] = None) -> float:
    """The gain a scheme uses: ``init.gain`` if a number; with ``auto`` the
    variance-preserving 1/sqrt(E[phi(z)^2]) (:func:`propbench.theory.auto_gain`); if null,
    the activation's Kaiming gain for kaiming*, else 1."""
    if init.gain == "auto":
        from propbench.theory import auto_gain

        return auto_gain(act, slope)
    if init.gain is not None:
        return float(init.gain)
    return kaiming_gain(act, slope) if lookup(init.name).gain_from_activation else 1.0


@torch.no_grad()
def init_model(model: nn.Module, init: Any, act: str, slope: Optional[float] = None) -> None:
    """Apply scheme ``init.name`` with ``Module.apply`` to every Linear and Conv of ``model``.

    ``init`` has the fields of :class:`propbench.config.InitConfig` (strings for enums).
    """
    scheme = lookup(init.name)
    gain = resolve_gain(init, act, slope)

    def init_module(module: nn.Module) -> None:
        if isinstance(module, WEIGHTED_TYPES):
            scheme.fill(module, gain, init)
            if module.bias is None or init.name == "scaled":  # scaled drew its own bias
                return
            if init.bias == "zeros":
                module.bias.zero_()
            elif init.name != "default":  # reset_parameters drew it already
                default_bias_(module)
        elif isinstance(module, NORM_TYPES) and getattr(module, "weight", None) is not None:
            module.weight.fill_(1.0)
            module.bias.zero_()

    model.apply(init_module)


def layer_variances(modules: list[nn.Module], init: Any, act: str,
                    slope: Optional[float] = None) -> Optional[list[tuple[float, float, float]]]:
    """Per weighted module, (sigma_w2, sigma_b2, backward_w2) as the mean-field theory needs
    them: ``sigma_w2 = fan_in * Var(W)``, ``backward_w2 = fan_out * Var(W)`` (what scales the
    gradient on its way back), ``sigma_b2 = Var(b)``; fans are torch's. None if a scheme's
    weights are not zero-mean."""
    scheme, gain = lookup(init.name), resolve_gain(init, act, slope)
    out = []
    for module in modules:
        fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(module.weight)
        variance = scheme.variance(fan_in, fan_out, gain, init)
        if variance is None:
            return None
        if module.bias is None or (init.bias == "zeros" and init.name != "scaled"):
            bias = 0.0
        elif init.name == "scaled":
            bias = init.sigma_b2
        else:
            bias = 1.0 / (3 * fan_in)  # U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        out.append((fan_in * variance, bias, fan_out * variance))
    return out
