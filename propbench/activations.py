"""ACTIVATIONS: the one registry of nonlinearities, each with the Kaiming gain it implies.

The Kaiming gain g makes ``Var(W) = g^2 / fan_in`` preserve the second moment of the
pre-activations, i.e. ``g^2 = 1 / E[phi(z)^2]`` for z ~ N(0, 1) when phi is positively
homogeneous (He et al., 2015, "Delving Deep into Rectifiers", eq. 10):

- ReLU: E[relu(z)^2] = 1/2, so g = sqrt(2);
- leaky ReLU / PReLU with slope a: E[phi(z)^2] = (1 + a^2) / 2, so g = sqrt(2 / (1 + a^2)).

Where ``torch.nn.init.calculate_gain`` knows the nonlinearity we use it, so the numbers
are what PyTorch users get -- including its SELU gain of 3/4, which is *not* the LeCun
gain 1 that self-normalization needs (Klambauer et al., 2017). ``calculate_gain`` has no
'prelu'; we fill that gap with the leaky-ReLU formula at PReLU's initial slope. GELU, SiLU
and ELU have no table entry either; for them we use what ``kaiming_normal_`` does when
called with its defaults (``nonlinearity='leaky_relu', a=0``): sqrt(2).

>>> from propbench.activations import make_activation, kaiming_gain
>>> round(kaiming_gain("prelu", slope=0.25), 4)
1.372
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from propbench.errors import choose


@dataclass(frozen=True)
class Activation:
    make: Callable[[Optional[float]], nn.Module]  # slope -> module
    gain: Callable[[Optional[float]], float]  # slope -> Kaiming gain


def _table(name: str) -> Callable[[Optional[float]], float]:
    return lambda slope: nn.init.calculate_gain(name)


def _rectifier_gain(slope: Optional[float]) -> float:
    return math.sqrt(2.0 / (1.0 + slope**2))


def _kaiming_default(slope: Optional[float]) -> float:
    return nn.init.calculate_gain("leaky_relu", 0)  # kaiming_normal_'s default: sqrt(2)


ACTIVATIONS: dict[str, Activation] = {
    "relu": Activation(lambda s: nn.ReLU(), _table("relu")),
    "leaky_relu": Activation(lambda s: nn.LeakyReLU(s), _rectifier_gain),
    "prelu": Activation(lambda s: nn.PReLU(init=s), _rectifier_gain),
    "tanh": Activation(lambda s: nn.Tanh(), _table("tanh")),
    "selu": Activation(lambda s: nn.SELU(), _table("selu")),
    "sigmoid": Activation(lambda s: nn.Sigmoid(), _table("sigmoid")),
    "linear": Activation(lambda s: nn.Identity(), _table("linear")),
    "gelu": Activation(lambda s: nn.GELU(), _kaiming_default),
    "silu": Activation(lambda s: nn.SiLU(), _kaiming_default),
    "elu": Activation(lambda s: nn.ELU(), _kaiming_default),
}



def _lookup(name: str) -> Activation:
    return choose(ACTIVATIONS, name, "act")


def make_activation(name: str, slope: Optional[float] = None) -> nn.Module:
    """A fresh activation module; ``slope`` is leaky ReLU's negative slope or PReLU's init."""
    return _lookup(name).make(slope)


def kaiming_gain(name: str, slope: Optional[float] = None) -> float:
    """The gain ``init=kaiming`` uses for this activation when ``init.gain`` is null."""
    return float(_lookup(name).gain(slope))


def is_activation(module: nn.Module) -> bool:
    """True for torch's own activation modules (nn.ReLU, nn.PReLU, nn.GELU, ...)."""
    return type(module).__module__ == torch.nn.modules.activation.__name__
