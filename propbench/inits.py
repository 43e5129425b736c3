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
from propbench.errors import ConfigError

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


@dataclass(frozen=True)
class Init:
    fill: Fill
    gain_from_activation: bool = False  # null gain -> the activation's Kaiming gain


INITS: dict[str, Init] = {
    # PyTorch's own: kaiming_uniform_(a=sqrt(5)), i.e. Var = 1/(3 fan_in), and its bias
    "default": Init(lambda m, g, p: m.reset_parameters()),
    "uniform": Init(lambda m, g, p: nn.init.uniform_(m.weight, p.a, p.b)),
    "normal": Init(lambda m, g, p: nn.init.normal_(m.weight, 0.0, p.std)),
    "xavier": Init(lambda m, g, p: variance_scaling_(m.weight, g**2, "fan_avg", "normal")),
    "xavier_uniform": Init(
        lambda m, g, p: variance_scaling_(m.weight, g**2, "fan_avg", "uniform")
    ),
    "kaiming": Init(lambda m, g, p: variance_scaling_(m.weight, g**2, p.mode, "normal"), True),
    "kaiming_uniform": Init(
        lambda m, g, p: variance_scaling_(m.weight, g**2, p.mode, "uniform"), True
    ),
    "lecun": Init(lambda m, g, p: variance_scaling_(m.weight, g**2, "fan_in", "normal")),
    "orthogonal": Init(lambda m, g, p: nn.init.orthogonal_(m.weight, g)),
}


@torch.no_grad()
def default_bias_(module: nn.Module) -> None:
    """PyTorch's bias init for Linear/Conv: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    fan_in = fan(module.weight, "fan_in")
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    module.bias.uniform_(-bound, bound)


def lookup(name: str) -> Init:
    try:
        return INITS[name]
    except KeyError:
        raise ConfigError(
            f"init={name}: unknown init scheme; choose one of {', '.join(INITS)}"
        ) from None


def resolve_gain(init: Any, act: str, slope: Optional[float] = None) -> float:
    """The gain a scheme uses: ``init.gain`` if set, else the activation's Kaiming gain
    for kaiming*, else 1."""
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
            if module.bias is None:
                return
            if init.bias == "zeros":
                module.bias.zero_()
            elif init.name != "default":  # reset_parameters drew it already
                default_bias_(module)
        elif isinstance(module, NORM_TYPES) and getattr(module, "weight", None) is not None:
            module.weight.fill_(1.0)
            module.bias.zero_()

    model.apply(init_module)
