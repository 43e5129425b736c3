"""INITS: the one registry of weight-init schemes. Each scheme is one dataclass: its config
schema (exactly the parameters it takes; the config group ``init`` is generated from this
table) and its :class:`Law`, the distribution and scale it draws W from, from which both the
fill and the theory's ``sigma_w2 = fan_in * Var(W)`` derive. Adding a scheme is one class.

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
or drawn as PyTorch does, ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, with ``bias=default``.
BatchNorm gets weight 1 and bias 0.

All randomness comes from torch's global generator; :func:`propbench.models.build_model`
seeds it, so ``init=kaiming`` draws exactly what ``nn.init.kaiming_normal_`` draws. This
module imports torch only when it fills weights (the config checks use its schemas).

>>> import torch
>>> from propbench.inits import variance_scaling_
>>> w = variance_scaling_(torch.empty(512, 512), scale=2.0)  # He normal
>>> round(float(w.var() * 512), 1)
2.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from enum import Enum
from typing import Any, ClassVar, Optional

from propbench.activations import kaiming_gain
from propbench.errors import ConfigError, choose


# the choices of the enum-typed keys; OmegaConf refuses anything else, naming these.
# fan_in preserves the forward variance, fan_out the backward one; a default bias is
# PyTorch's U(-1/sqrt(fan_in), 1/sqrt(fan_in))
Mode = Enum("Mode", {v: v for v in ("fan_in", "fan_out")}, module=__name__)
Distribution = Enum("Distribution", {v: v for v in ("normal", "uniform", "orthogonal",
                                                  "delta_orthogonal")}, module=__name__)
BiasInit = Enum("BiasInit", {v: v for v in ("zeros", "default")}, module=__name__)


def fan(mode: str, fan_in: float, fan_out: float) -> float:
    """The fan ``mode`` (fan_in | fan_out | fan_avg) selects from torch's fans of a weight."""
    fans = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}
    return choose(fans, mode, "init.mode")


@dataclass(frozen=True)
class Law:
    """What a tensor is drawn from: ``normal`` N(mean, scale^2), ``uniform``
    U(mean - scale, mean + scale), ``orthogonal``, a random orthogonal matrix times scale
    (a conv kernel flattened to out x (in k^2), as torch's ``orthogonal_``), or
    ``delta_orthogonal``, a conv kernel zero but at its centre tap, which is orthogonal."""

    distribution: str
    scale: float
    mean: float = 0.0

    @classmethod
    def of_variance(cls, distribution: str, variance: float, fan_in: float = 1,
                    fan_out: float = 1) -> Law:
        """The law of ``distribution`` with per-element variance ``variance``."""
        std = math.sqrt(variance)
        orthogonal = math.sqrt(variance * max(fan_in, fan_out))
        scales = {"normal": std, "uniform": math.sqrt(3.0) * std, "orthogonal": orthogonal,
                  "delta_orthogonal": orthogonal}
        return cls(distribution, choose(scales, distribution, "init.distribution"))

    def variance(self, fan_in: float, fan_out: float) -> float:
        """Per-element variance; an orthogonal matrix's rows (or columns) have norm scale."""
        if self.distribution in ("orthogonal", "delta_orthogonal"):
            return self.scale**2 / max(fan_in, fan_out)
        return self.scale**2 / (3 if self.distribution == "uniform" else 1)


def _pytorch_bias(fan_in: float) -> Law:
    """PyTorch's bias init for Linear/Conv: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    return Law("uniform", 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0)


@dataclass
class InitConfig:
    """A weight-init scheme: ``init=NAME`` selects the subclass whose ``name`` is NAME."""

    name: str = "default"
    gain_from_activation: ClassVar[bool] = False  # null gain -> the activation's Kaiming gain
    auto_gain: ClassVar[bool] = False  # takes gain=auto
    data_dependent: ClassVar[bool] = False  # rescaled on the probe's inputs after the draw
    centre_tap: ClassVar[bool] = False  # a conv's kernel is zero but at its centre tap
    residual_only: ClassVar[bool] = False  # refused on plain models (it needs branches)

    def branch_multipliers(self, depth: int, layers: int) -> list[float]:
        """The factor on Var(W) of each weight layer of a residual branch (``layers`` of
        them, in a network of ``depth`` blocks), after the scheme's own law: 1 here."""
        return [1.0] * layers

    def law(self, fan_in: float, fan_out: float, gain: float) -> Law:
        raise NotImplementedError

    def bias_law(self, fan_in: float) -> Optional[Law]:
        """The bias's law; None: zeros."""
        return _pytorch_bias(fan_in) if getattr(self, "bias", None) == BiasInit.default else None

    def check_model(self, model: Any, width: int) -> None:
        """Checks against the model (ConfigError, one line); most schemes fit any."""

    def check(self) -> None:
        """Range checks that types alone cannot express (ConfigError, one line)."""
        gain = getattr(self, "gain", None)
        if gain is None:
            return
        if gain == "auto":
            if not self.auto_gain:
                takers = ", ".join(n for n, c in INITS.items() if c.auto_gain)
                raise ConfigError(f"init.gain=auto: only {takers} take it")
            return
        try:
            value = float(gain)
        except (TypeError, ValueError):
            raise ConfigError(f"init.gain={gain}: must be a number > 0, auto or null") from None
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(f"init.gain={gain}: must be a finite number > 0 (or auto)")


def _finite(key: str, value: float, low: float = -math.inf, strict: bool = False) -> None:
    if not math.isfinite(value) or value < low or (strict and value == low):
        what = "a finite number" + ("" if low == -math.inf else f" {'>' if strict else '>='} {low:g}")
        raise ConfigError(f"init.{key}={value}: must be {what}")


@dataclass
class DefaultInit(InitConfig):
    """PyTorch's own ``reset_parameters``: ``kaiming_uniform_(a=sqrt(5))``, i.e.
    Var(W) = 1/(3 fan_in), with PyTorch's bias by default."""

    name: str = "default"
    bias: BiasInit = BiasInit.default

    def law(self, fan_in: float, fan_out: float, gain: float) -> Law:
        # kaiming_uniform_'s own arithmetic, so that the numbers are torch's to the bit
        std = math.sqrt(2.0 / (1 + math.sqrt(5) ** 2)) / math.sqrt(fan_in)
        return Law("uniform", math.sqrt(3.0) * std)


@dataclass
class UniformInit(InitConfig):
    """U(a, b), by default Keras' RandomUniform(-0.05, 0.05); zero-mean only if a = -b."""

    name: str = "uniform"
    a: float = -0.05
    b: float = 0.05
    bias: BiasInit = BiasInit.zeros

    def law(self, fan_in: float, fan_out: float, gain: float) -> Law:
        return Law("uniform", (self.b - self.a) / 2, mean=(self.a + self.b) / 2)

    def check(self) -> None:
        _finite("a", self.a)
        _finite("b", self.b)
        if not self.a < self.b:
            raise ConfigError(f"init.a={self.a}, init.b={self.b}: need a < b")


@dataclass
class NormalInit(InitConfig):
    """N(0, std^2): the classic ``0.01 * randn``."""

    name: str = "normal"
    std: float = 0.01
    bias: BiasInit = BiasInit.zeros

    def law(self, fan_in: float, fan_out: float, gain: float) -> Law:
        return Law("normal", self.std)

    def check(self) -> None:
        _finite("std", self.std, 0, strict=True)


@dataclass
class XavierInit(InitConfig):
    """Glorot & Bengio (2010): N(0, gain^2 * 2 / (fan_in + fan_out)); gain null: 1."""

    name: str = "xavier"
    gain: Any = None  # null, a number > 0, or auto: 1/sqrt(E[phi(z)^2]) by quadrature
    bias: BiasInit = BiasInit.zeros
    auto_gain: ClassVar[bool] = True
    distribution: ClassVar[str] = "normal"

    def law(self, fan_in: float, fan_out: float, gain: float) -> Law:
        return Law.of_variance(self.distribution, gain**2 / fan("fan_avg", fan_in, fan_out))


@dataclass
class KaimingInit(InitConfig):
    """He et al. (2015): N(0, gain^2 / fan_mode); gain null: the activation's Kaiming gain."""

    name: str = "kaiming"
    gain: Any = None  # null, a number > 0, or auto: 1/sqrt(E[phi(z)^2]) by quadrature
    mode: Mode = Mode.fan_in
    bias: BiasInit = BiasInit.zeros
    gain_from_activation: ClassVar[bool] = True
    auto_gain: ClassVar[bool] = True
    distribution: ClassVar[str] = "normal"

    def law(self, fan_in: float, fan_out: float, gain: float) -> Law:
        return Law.of_variance(self.distribution, gain**2 / fan(self.mode.value, fan_in, fan_out))


def _uniform(scheme: type[InitConfig]) -> type[InitConfig]:
    """The option ``<scheme>_uniform``: the scheme's variance, drawn from a uniform law."""
    name = scheme.__name__.replace("Init", "UniformInit")
    return dataclass(type(name, (scheme,), {
        "__annotations__": {"name": "str"}, "name": f"{scheme.name}_uniform",
        "distribution": "uniform", "__module__": __name__, "__qualname__": name,
        "__doc__": f"{scheme.__doc__.splitlines()[0]} Drawn uniform, same variance."}))


XavierUniformInit, KaimingUniformInit = _uniform(XavierInit), _uniform(KaimingInit)


@dataclass
class FixupInit(KaimingInit):
    """Fixup (Zhang et al. 2019, "Fixup Initialization: Residual Learning Without
    Normalization", sec. 3): in every residual branch of m weight layers the last is zero and
    the others are He-scaled (``kaiming``'s law) times ``depth^(-1/(2m-2))`` in std, i.e.
    Var(W) = gain^2 / fan_in * depth^(-1/(m-1)). Every branch then starts as 0, the stream
    as the identity, and the gradient still reaches each branch's last layer. (Fixup's
    scalar biases and multipliers start at 0 and 1 and are left out; so is its zero
    classifier.) Residual models only."""

    name: str = "fixup"
    residual_only: ClassVar[bool] = True

    def branch_multipliers(self, depth: int, layers: int) -> list[float]:
        if layers == 1:
            return [0.0]
        return [depth ** (-1.0 / (layers - 1))] * (layers - 1) + [0.0]


@dataclass
class LecunInit(InitConfig):
    """LeCun et al. (1998): N(0, gain^2 / fan_in); gain null: 1 (self-normalizing SELU)."""

    name: str = "lecun"
    gain: Any = None
    bias: BiasInit = BiasInit.zeros

    def law(self, fan_in: float, fan_out: float, gain: float) -> Law:
        return Law.of_variance("normal", gain**2 / fan_in)


@dataclass
class OrthogonalInit(InitConfig):
    """Saxe et al. (2014): gain times a random orthogonal matrix (PyTorch's orthogonal_),
    Var(W) = gain^2 / max(fan_in, fan_out); gain null: 1."""

    name: str = "orthogonal"
    gain: Any = None
    bias: BiasInit = BiasInit.zeros

    def law(self, fan_in: float, fan_out: float, gain: float) -> Law:
        return Law("orthogonal", gain)


def _check_centre_tap(model: Any, width: int) -> None:
    """A CNN's first conv maps in_channels to width: an orthogonal centre tap needs more."""
    in_channels = getattr(model, "in_channels", None)
    if in_channels is not None and width < in_channels:
        raise ConfigError(
            f"init=delta_orthogonal: width={width} < model.in_channels={in_channels}; an "
            "orthogonal centre tap needs out_channels >= in_channels")


@dataclass
class DeltaOrthogonalInit(InitConfig):
    """Xiao et al. (2018, "Dynamical Isometry and a Mean Field Theory of CNNs", algorithm 1):
    a conv kernel that is zero but at its centre tap, which holds gain times a random
    orthogonal (out x in) matrix, so that at initialization each conv maps every pixel by
    the same orthogonal matrix and the CNN is an orthogonal MLP per pixel. Needs
    out_channels >= in_channels (orthonormal columns). Var(W) = gain^2 / max(fan_in, fan_out)
    over the whole kernel, as for ``orthogonal``; a Linear layer gets ``orthogonal``."""

    name: str = "delta_orthogonal"
    gain: Any = None
    bias: BiasInit = BiasInit.zeros
    centre_tap: ClassVar[bool] = True

    def law(self, fan_in: float, fan_out: float, gain: float) -> Law:
        return Law("delta_orthogonal", gain)

    def check_model(self, model: Any, width: int) -> None:
        _check_centre_tap(model, width)


@dataclass
class LSUVInit(InitConfig):
    """Mishkin & Matas (2016, "All you need is a good init", algorithm 1): orthogonal
    weights (Saxe et al. 2014), then layer by layer in forward order, on the probe's own
    inputs, W <- W / sqrt(Var(output)) until |Var(output) - 1| <= tol, at most max_iter
    rescalings (:func:`lsuv_`). Biases zero."""

    name: str = "lsuv"
    tol: float = 0.1  # |Var(output) - 1| at which a layer is done
    max_iter: int = 10  # rescalings per layer at most
    bias: BiasInit = BiasInit.zeros
    data_dependent: ClassVar[bool] = True

    def law(self, fan_in: float, fan_out: float, gain: float) -> Law:
        return Law("orthogonal", 1.0)

    def calibrate(self, model: Any, inputs: Any) -> dict[str, Any]:
        """Rescale ``model``'s weights on ``inputs`` (:func:`lsuv_`); returns the record."""
        return lsuv_(model, inputs, self.tol, self.max_iter)

    def check(self) -> None:
        _finite("tol", self.tol, 0, strict=True)
        if self.max_iter < 1:
            raise ConfigError(f"init.max_iter={self.max_iter}: must be >= 1")


@dataclass
class ScaledInit(InitConfig):
    """Poole et al. (2016)'s parametrization: Var(W) = sigma_w2 / fan_mode drawn from
    ``distribution`` (``delta_orthogonal``: as init=delta_orthogonal, Xiao et al. 2018),
    bias ~ N(0, sigma_b2)."""

    name: str = "scaled"
    sigma_w2: float = 1.0
    sigma_b2: float = 0.0
    mode: Mode = Mode.fan_in
    distribution: Distribution = Distribution.normal

    def law(self, fan_in: float, fan_out: float, gain: float) -> Law:
        variance = self.sigma_w2 / fan(self.mode.value, fan_in, fan_out)
        return Law.of_variance(self.distribution.value, variance, fan_in, fan_out)

    def bias_law(self, fan_in: float) -> Optional[Law]:
        return Law("normal", math.sqrt(self.sigma_b2))

    @property
    def centre_tap(self) -> bool:  # type: ignore[override]
        return self.distribution == Distribution.delta_orthogonal

    def check_model(self, model: Any, width: int) -> None:
        if self.centre_tap:
            _check_centre_tap(model, width)

    def check(self) -> None:
        _finite("sigma_w2", self.sigma_w2, 0, strict=True)
        _finite("sigma_b2", self.sigma_b2, 0)


INITS: dict[str, type[InitConfig]] = {
    scheme.name: scheme for scheme in (
        DefaultInit, UniformInit, NormalInit, KaimingInit, KaimingUniformInit, XavierInit,
        XavierUniformInit, LecunInit, OrthogonalInit, DeltaOrthogonalInit, LSUVInit, ScaledInit,
        FixupInit)
}


def parameters(option: type) -> list[str]:
    """The parameters an option of a config group takes (its schema's fields but ``name``)."""
    return [f.name for f in fields(option) if f.name != "name"]


def resolve_gain(init: InitConfig, act: str, slope: Optional[float] = None) -> float:
    """The gain a scheme uses: ``init.gain`` if a number; with ``auto`` the
    variance-preserving 1/sqrt(E[phi(z)^2]) (:func:`propbench.theory.auto_gain`); if null,
    the activation's Kaiming gain for kaiming*, else 1."""
    gain = getattr(init, "gain", None)
    if gain == "auto":
        from propbench.theory import auto_gain

        return auto_gain(act, slope)
    if gain is not None:
        return float(gain)
    return kaiming_gain(act, slope) if init.gain_from_activation else 1.0


# --- the torch side -----------------------------------------------------------------------

def _layer_types() -> dict[str, tuple]:
    from torch import nn

    return {"WEIGHTED_TYPES": (nn.Linear, nn.modules.conv._ConvNd),
            "NORM_TYPES": (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)}


def __getattr__(name: str) -> Any:
    """``WEIGHTED_TYPES`` (Linear, Conv) and ``NORM_TYPES``, made when first asked for, so
    that importing this module does not import torch (nor does asking it for anything else:
    ``from propbench.inits import ...`` asks for ``__path__``)."""
    if name not in ("WEIGHTED_TYPES", "NORM_TYPES"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    types = _layer_types()
    globals().update(types)
    return types[name]


def weight_fans(weight: Any) -> tuple[int, int]:
    """torch's (fan_in, fan_out) of a weight: in/out features, times the kernel area."""
    from torch import nn

    return nn.init._calculate_fan_in_and_fan_out(weight)


def draw_(tensor: Any, law: Law) -> Any:
    """Fill ``tensor`` in place from ``law`` (the same calls as torch's init functions)."""
    import torch

    with torch.no_grad():
        if law.distribution == "delta_orthogonal" and tensor.dim() > 2:
            return delta_orthogonal_(tensor, law.scale)
        if law.distribution in ("orthogonal", "delta_orthogonal"):
            return torch.nn.init.orthogonal_(tensor, law.scale)
        if law.distribution == "uniform":
            return tensor.uniform_(law.mean - law.scale, law.mean + law.scale)
        return tensor.normal_(law.mean, law.scale)


def delta_orthogonal_(weight: Any, gain: float = 1.0) -> Any:
    """Fill a conv weight (out, in, k, ...) in place with zeros but at the kernel's centre,
    which gets ``gain`` times a random (out x in) matrix with orthonormal columns (Xiao et al.
    2018). ConfigError where out < in (no such matrix).

    >>> import torch
    >>> w = delta_orthogonal_(torch.empty(8, 4, 3, 3))
    >>> centre = w[:, :, 1, 1]
    >>> bool(torch.allclose(centre.T @ centre, torch.eye(4), atol=1e-6))
    True
    >>> int(torch.count_nonzero(w)) == int(torch.count_nonzero(centre))
    True
    """
    import torch

    out_channels, in_channels = weight.shape[:2]
    if out_channels < in_channels:
        raise ConfigError(f"init=delta_orthogonal: a conv with {out_channels} output channels < "
                          f"{in_channels} input channels has no orthogonal centre tap")
    if any(k % 2 == 0 for k in weight.shape[2:]):
        raise ConfigError(f"init=delta_orthogonal: kernel {tuple(weight.shape[2:])} has no centre tap")
    centre = (slice(None), slice(None), *(k // 2 for k in weight.shape[2:]))
    with torch.no_grad():
        weight.zero_()
        weight[centre] = torch.nn.init.orthogonal_(weight.new_empty(out_channels, in_channels), gain)
    return weight


def variance_scaling_(weight: Any, scale: float = 1.0, mode: str = "fan_in",
                      distribution: str = "normal") -> Any:
    """Fill ``weight`` in place with ``Var = scale / fan(weight, mode)``: N(0, std^2) or
    U(-sqrt(3) std, sqrt(3) std), as torch's kaiming_/xavier_ functions draw."""
    fan_in, fan_out = weight_fans(weight)
    return draw_(weight, Law.of_variance(distribution, scale / fan(mode, fan_in, fan_out)))


def init_model(model: Any, init: InitConfig, act: str, slope: Optional[float] = None) -> None:
    """Apply the scheme ``init`` with ``Module.apply`` to every Linear and Conv of ``model``;
    normalization layers get weight 1 and bias 0. The weights of each residual branch
    (``model.branches()``, if it has any) are then scaled by the scheme's
    :meth:`InitConfig.branch_multipliers` (Fixup's rule), a zero multiplier zeroing the bias
    too."""
    import torch

    gain = resolve_gain(init, act, slope)
    types = _layer_types()
    weighted, norms = types["WEIGHTED_TYPES"], types["NORM_TYPES"]

    def init_module(module: Any) -> None:
        if isinstance(module, weighted):
            fan_in, fan_out = weight_fans(module.weight)
            draw_(module.weight, init.law(fan_in, fan_out, gain))
            if module.bias is not None:
                bias = init.bias_law(fan_in)
                draw_(module.bias, bias) if bias is not None else module.bias.zero_()
        elif isinstance(module, norms) and getattr(module, "weight", None) is not None:
            module.weight.fill_(1.0)
            module.bias.zero_()

    with torch.no_grad():
        model.apply(init_module)
        branches = model.branches() if hasattr(model, "branches") else []
        for weights in branches:
            for module, factor in zip(weights, init.branch_multipliers(len(branches), len(weights))):
                if factor != 1.0:
                    module.weight.mul_(math.sqrt(factor))
                    if factor == 0.0 and module.bias is not None:
                        module.bias.zero_()


def layer_variances(modules: list[Any], init: InitConfig, act: str,
                    slope: Optional[float] = None) -> Optional[list[tuple[float, float, float]]]:
    """Per weighted module, (sigma_w2, sigma_b2, backward_w2) as the mean-field theory needs
    them: ``sigma_w2 = fan_in * Var(W)``, ``backward_w2 = fan_out * Var(W)`` (what scales the
    gradient on its way back), ``sigma_b2 = Var(b)``; fans are torch's. None if a scheme's
    weights are not zero-mean."""
    gain = resolve_gain(init, act, slope)
    out = []
    for module in modules:
        fan_in, fan_out = weight_fans(module.weight)
        law = init.law(fan_in, fan_out, gain)
        if law.mean != 0:
            return None
        variance = law.variance(fan_in, fan_out)
        bias = init.bias_law(fan_in) if module.bias is not None else None
        out.append((fan_in * variance, bias.variance(fan_in, fan_out) if bias else 0.0,
                    fan_out * variance))
    return out


def lsuv_(model: Any, inputs: Any, tol: float = 0.1, max_iter: int = 10) -> dict[str, Any]:
    """Layer-sequential unit-variance rescaling (Mishkin & Matas 2016, algorithm 1), in place:
    in one forward pass over ``inputs``, each Linear/Conv, as it fires, has its weight
    divided by sqrt(Var(output)) until |Var(output) - 1| <= ``tol`` (at most ``max_iter``
    times), and the layers after it see its rescaled output. With zero biases one rescaling
    is exact; a bias makes it iterative. Var is over all elements of the output (batch,
    units, positions), as the probe's ``pre`` rows measure it.

    Returns {"iterations": rescalings per layer, "variances": the reached Var(output) per
    layer}, in forward order.

    >>> import torch
    >>> layer = lambda: torch.nn.Linear(64, 64, bias=False)
    >>> net = torch.nn.Sequential(layer(), torch.nn.ReLU(), layer())
    >>> record = lsuv_(net, torch.randn(256, 64))
    >>> [round(v, 6) for v in record["variances"]], record["iterations"]
    ([1.0, 1.0], [1, 1])
    """
    import torch

    weighted = _layer_types()["WEIGHTED_TYPES"]
    iterations: list[int] = []
    variances: list[float] = []

    def calibrate(module: Any, args: Any, output: Any) -> Any:
        done = 0
        variance = float(output.detach().double().var(correction=0))
        while abs(variance - 1.0) > tol and done < max_iter and variance > 0 and math.isfinite(variance):
            module.weight.mul_(1.0 / math.sqrt(variance))
            output = module.forward(*args)
            variance = float(output.detach().double().var(correction=0))
            done += 1
        iterations.append(done)
        variances.append(variance)
        return output

    handles = [m.register_forward_hook(calibrate) for m in model.modules() if isinstance(m, weighted)]
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return {"iterations": iterations, "variances": variances}
