"""ACTIVATIONS: the one registry of nonlinearities. Each entry is everything propbench knows
about one activation: its torch module, its NumPy twin for the mean-field theory, the Kaiming
gain it implies, the memory autograd keeps for it, and its slope parameter, if any. The
config group ``act`` and the theory are generated from this table; adding an activation is
one entry here.

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

Importing this module does not import torch (the config checks use it); the torch side is
imported when a module is made or a gain computed.

>>> from propbench.activations import make_activation, kaiming_gain
>>> round(kaiming_gain("prelu", slope=0.25), 4)
1.372
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from propbench.errors import choose

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


@dataclass(frozen=True)
class Phi:
    """An activation as NumPy functions: value, derivative, and where it has kinks."""

    f: Callable[[np.ndarray], np.ndarray]
    df: Callable[[np.ndarray], np.ndarray]
    kinks: tuple[float, ...] = ()


@dataclass(frozen=True)
class Activation:
    module: Callable[[Optional[float]], Any]  # slope -> a fresh torch module
    twin: Callable[[Optional[float]], Phi]  # slope -> the same function in NumPy
    gain: Callable[[Optional[float]], float]  # slope -> Kaiming gain (calculate_gain's)
    slope: Optional[float] = None  # PyTorch's default slope; None: takes no slope
    # activation-sized tensors autograd keeps per block, measured (depth 1000, width 512):
    # the Linear's input and the activation's output; one more for activations that save
    # their input (GELU, SiLU, PReLU)
    saved_per_block: int = 2


def _torch(cls: str, slope_keyword: Optional[str] = None) -> Callable[[Optional[float]], Any]:
    def make(slope: Optional[float]) -> Any:
        from torch import nn

        return getattr(nn, cls)(**({slope_keyword: slope} if slope_keyword else {}))

    return make


def _table(name: str) -> Callable[[Optional[float]], float]:
    def gain(slope: Optional[float]) -> float:
        from torch import nn

        return nn.init.calculate_gain(name)

    return gain


def _rectifier_gain(slope: Optional[float]) -> float:
    return math.sqrt(2.0 / (1.0 + slope**2))


def _kaiming_default(slope: Optional[float]) -> float:
    return math.sqrt(2.0)  # kaiming_normal_'s default: calculate_gain("leaky_relu", 0)


# --- NumPy twins --------------------------------------------------------------------------

def _erf(x: np.ndarray) -> np.ndarray:
    """erf, vectorized, to about 1e-13: Maclaurin series below 3, the continued fraction of
    erfc above (NumPy has no erf, and the theory stays free of other frameworks)."""
    x = np.asarray(x, dtype=float)
    a = np.abs(x)
    out = np.empty_like(a)
    small = a < 3.0
    xs = a[small]
    term, total, x2 = xs.copy(), xs.copy(), xs * xs
    for n in range(1, 70):
        term = term * -x2 / n
        total = total + term / (2 * n + 1)
    out[small] = 2.0 / math.sqrt(math.pi) * total
    xl = a[~small]
    fraction = np.zeros_like(xl)
    for k in range(60, 0, -1):  # erfc(x) = exp(-x^2)/sqrt(pi) / (x + (1/2)/(x + 1/(x + ...)))
        fraction = (k / 2.0) / (xl + fraction)
    out[~small] = 1.0 - np.exp(-xl * xl) / math.sqrt(math.pi) / (xl + fraction)
    return np.sign(x) * out


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _rectifier(a: Optional[float]) -> Phi:
    return Phi(lambda x: np.where(x > 0, x, a * x), lambda x: np.where(x > 0, 1.0, a), (0.0,))


def _gelu(a: Optional[float]) -> Phi:  # exact GELU, x * Phi(x), as nn.GELU()
    cdf = lambda x: 0.5 * (1 + _erf(x / math.sqrt(2.0)))  # noqa: E731
    pdf = lambda x: np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)  # noqa: E731
    return Phi(lambda x: x * cdf(x), lambda x: cdf(x) + x * pdf(x))


def _exponential(scale: float, alpha: float) -> Callable[[Optional[float]], Phi]:
    """ELU (scale = alpha = 1) and SELU: scale * (x if x > 0 else alpha (e^x - 1))."""
    return lambda a: Phi(
        lambda x: scale * np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0))),
        lambda x: scale * np.where(x > 0, 1.0, alpha * np.exp(np.minimum(x, 0))), (0.0,))


def _smooth(f: Callable, df: Callable) -> Callable[[Optional[float]], Phi]:
    return lambda a: Phi(f, df)


ACTIVATIONS: dict[str, Activation] = {
    "relu": Activation(_torch("ReLU"), lambda a: _rectifier(0.0), _table("relu")),
    "leaky_relu": Activation(_torch("LeakyReLU", "negative_slope"), _rectifier, _rectifier_gain,
                             slope=0.01),
    "prelu": Activation(_torch("PReLU", "init"), _rectifier, _rectifier_gain, slope=0.25,
                        saved_per_block=3),
    "tanh": Activation(_torch("Tanh"), _smooth(np.tanh, lambda x: 1.0 - np.tanh(x) ** 2),
                       _table("tanh")),
    "selu": Activation(_torch("SELU"), _exponential(SELU_SCALE, SELU_ALPHA), _table("selu")),
    "sigmoid": Activation(_torch("Sigmoid"),
                          _smooth(_sigmoid, lambda x: _sigmoid(x) * (1 - _sigmoid(x))),
                          _table("sigmoid")),
    "linear": Activation(_torch("Identity"), _smooth(lambda x: x, np.ones_like), _table("linear")),
    "gelu": Activation(_torch("GELU"), _gelu, _kaiming_default, saved_per_block=3),
    "silu": Activation(_torch("SiLU"), _smooth(lambda x: x * _sigmoid(x),
                                               lambda x: _sigmoid(x) * (1 + x * (1 - _sigmoid(x)))),
                       _kaiming_default, saved_per_block=3),
    "elu": Activation(_torch("ELU"), _exponential(1.0, 1.0), _kaiming_default),
}


def lookup(name: str) -> Activation:
    return choose(ACTIVATIONS, name, "act")


def _slope(spec: Activation, slope: Optional[float]) -> Optional[float]:
    return spec.slope if slope is None else slope


def make_activation(name: str, slope: Optional[float] = None) -> Any:
    """A fresh activation module; ``slope`` is leaky ReLU's negative slope or PReLU's init
    (PyTorch's default where None)."""
    spec = lookup(name)
    return spec.module(_slope(spec, slope))


def twin(name: str, slope: Optional[float] = None) -> Phi:
    """The activation as NumPy functions, for the theory."""
    spec = lookup(name)
    return spec.twin(_slope(spec, slope))


def kaiming_gain(name: str, slope: Optional[float] = None) -> float:
    """The gain ``init=kaiming`` uses for this activation when ``init.gain`` is null."""
    spec = lookup(name)
    return float(spec.gain(_slope(spec, slope)))

