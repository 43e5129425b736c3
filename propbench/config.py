"""The config: typed dataclass schemas, the config groups generated from the registries, and
the one door from a composed config to a validated :class:`PropbenchConfig`.

Types and choices are enforced by OmegaConf when Hydra composes the config (``depth=abc``,
``init.mode=sideways``); ranges and cross-field rules when the dataclass is built
(:meth:`PropbenchConfig.__post_init__`). The options of the groups ``model``, ``act`` and
``init`` are stored in Hydra's ConfigStore from :data:`MODELS`,
:data:`propbench.activations.ACTIVATIONS` and :data:`propbench.inits.INITS`: a new model,
activation or scheme is an entry there, nothing here. Nothing here imports torch, so a bad
override is rejected in well under a second.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar, Optional

from propbench.activations import ACTIVATIONS
from propbench.errors import ConfigError, first_line, one_line
from propbench.inits import INITS, DefaultInit, InitConfig, parameters

CONF_DIR = Path(__file__).resolve().parent / "conf"


# the choices of the enum-typed keys; OmegaConf refuses anything else, naming these
Norm = Enum("Norm", {v: v for v in ("none", "batchnorm", "layernorm")}, module=__name__)
Order = Enum("Order", {v: v for v in ("pre", "post")}, module=__name__)
Pool = Enum("Pool", {v: v for v in ("none", "max", "avg")}, module=__name__)
DType = Enum("DType", {v: v for v in ("float32", "float64")}, module=__name__)
InputKind = Enum("InputKind", {v: v for v in ("normal", "tokens")}, module=__name__)
SpectrumMethod = Enum("SpectrumMethod", {v: v for v in ("auto", "exact", "estimate")},
                      module=__name__)
# what a sweep job returns to Hydra's sweeper (verdict.objective): |log10 r| of that signal
Objective = Enum("Objective", {v: v for v in ("gradient", "activation", "both")}, module=__name__)


def _at_least(key: str, value: int, low: int) -> None:
    if value < low:
        raise ConfigError(f"{key}={value}: must be >= {low}")


@dataclass
class ModelConfig:
    """What every model has; each option ``model=NAME`` extends it (see :data:`MODELS`)."""

    name: str = "mlp"
    # after each Linear/Conv, before the activation: BatchNorm, or LayerNorm (for
    # convolutions GroupNorm with one group: over channels and positions)
    norm: Norm = Norm.none
    residual: ClassVar[bool] = False  # x -> x + alpha * branch(x) blocks (ResidualKeys)
    # False: a pass runs one network (trials one at a time), not a stack of trials
    stackable: ClassVar[bool] = True

    def check(self) -> None:
        """Range checks of this model's keys (ConfigError, one line)."""

    def layers_per_block(self) -> int:
        """Weight layers in a block (a residual block's branch has ``branch_layers``)."""
        return 1

    def footprint(self) -> tuple[int, int]:
        """(weight elements per width^2, activation elements per unit of width) of a block,
        for the memory estimate."""
        return self.layers_per_block(), 1

    def input_size(self, width: int) -> int:
        """Elements of one input example (the columns of its Jacobian)."""
        return width

    def edges(self, width: int, batch_size: int) -> int:
        """Elements of what does not repeat with depth (input, first and last layers), for
        the memory estimate; the MLP's are a block's."""
        return 0

    def theory_gap(self) -> Optional[str]:
        """Why the mean-field recursion does not describe this model, or None."""
        if self.norm == Norm.batchnorm:
            return "BatchNorm normalizes with batch statistics; the mean-field recursion does not model it"
        if self.norm == Norm.layernorm and not self.residual:
            return "LayerNorm in a plain stack is not modelled (the residual theory of resmlp is)"
        return None


@dataclass
class MLPConfig(ModelConfig):
    """``depth`` blocks of Linear(width, width) -> [BatchNorm1d] -> activation."""

    name: str = "mlp"


@dataclass
class CNNConfig(ModelConfig):
    """``depth`` blocks of Conv2d(k x k, 'same') -> [BatchNorm2d] -> activation -> [pool],
    then global average pooling and a Linear head. Blocks come in stages of ``stage_every``;
    the last block of a stage pools (``pool``, while the image is larger than 1x1) and the
    first block of the next stage widens the channels by ``channel_growth``."""

    name: str = "cnn"
    in_channels: int = 3  # channels of the (batch, C, H, W) input; `width` channels after
    image_size: int = 32  # H = W of the input
    kernel_size: int = 3  # odd, so that 'same' padding is symmetric
    stage_every: int = 0  # blocks per stage (0: one stage). A stage ends with a 2x2 pool
    pool: Pool = Pool.none  # (none: no pooling) and the next block multiplies the
    channel_growth: int = 1  # channels by channel_growth (1: a fixed number of channels)
    num_classes: int = 10  # outputs of the linear head

    def check(self) -> None:
        for key in ("in_channels", "image_size", "kernel_size", "num_classes", "channel_growth"):
            _at_least(f"model.{key}", getattr(self, key), 1)
        _at_least("model.stage_every", self.stage_every, 0)
        if self.kernel_size % 2 == 0:
            raise ConfigError(f"model.kernel_size={self.kernel_size}: must be odd")

    def footprint(self) -> tuple[int, int]:
        # channel growth and pooling trade channels for pixels; the first stage bounds both
        return (self.layers_per_block() * self.kernel_size**2 * self.channel_growth**2,
                self.image_size**2)

    def input_size(self, width: int) -> int:
        return self.in_channels * self.image_size**2

    def edges(self, width: int, batch_size: int) -> int:
        # the input and the first conv scale with in_channels, the head with num_classes
        inputs = batch_size * self.in_channels * self.image_size**2
        first = width * self.in_channels * self.kernel_size**2
        head = (width + batch_size) * self.num_classes
        return 2 * inputs + first + head

    def theory_gap(self) -> Optional[str]:
        if self.stage_every > 0 and self.pool != Pool.none:
            return "pooling mixes positions; the mean-field recursion does not model it"
        return super().theory_gap()


INV_SQRT_DEPTH = "inv_sqrt_depth"


def check_alpha(alpha: Any) -> None:
    """A branch multiplier is a finite number >= 0 or ``inv_sqrt_depth``."""
    if alpha == INV_SQRT_DEPTH:
        return
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(alpha, bool) or not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"model.alpha={alpha}: must be a finite number >= 0 or {INV_SQRT_DEPTH}")


@dataclass
class ResidualKeys:
    """The keys of a residual model: ``depth`` blocks ``x -> x + alpha * branch(x)``
    (He et al. 2016). A branch has ``branch_layers`` weight layers, each with the model's
    ``norm`` and the activation, in the ``order`` ``pre`` (norm -> act -> weight: He et al.
    2016, "Identity Mappings in Deep Residual Networks") or ``post`` (weight -> norm -> act,
    the last activation after the addition: the original ResNet). ``alpha`` scales the
    branch: a number (0 is SkipInit's start, De & Smith 2020) or ``inv_sqrt_depth``.
    ``nf``: normalizer-free (Brock et al. 2021): the branch input is divided by the expected
    standard deviation of the stream, and weights are scaled-weight-standardized."""

    branch_layers: int = 2  # weight layers per branch
    order: Order = Order.pre  # pre | post
    alpha: Any = 1.0  # a number >= 0, or inv_sqrt_depth (1/sqrt(depth))
    nf: bool = False  # normalizer-free: x / beta into the branch, standardized weights

    def check(self) -> None:
        _at_least("model.branch_layers", self.branch_layers, 1)
        check_alpha(self.alpha)
        if self.nf and self.norm != Norm.none:
            raise ConfigError(f"model.nf=true: normalizer-free needs model.norm=none "
                              f"(got {self.norm.value})")
        if self.nf and self.order != Order.pre:
            raise ConfigError("model.nf=true: normalizer-free blocks are pre-activation; "
                              "use model.order=pre")

    def branch_scale(self, depth: int) -> float:
        """alpha as a number."""
        return 1.0 / math.sqrt(depth) if self.alpha == INV_SQRT_DEPTH else float(self.alpha)

    def layers_per_block(self) -> int:
        return self.branch_layers

    def residual_gap(self) -> Optional[str]:
        """Why the residual mean-field recursion does not describe this model, or None."""
        if self.order == Order.post:
            return ("order=post: the activation after the addition makes the stream "
                    "non-Gaussian with a nonzero mean; the recursion does not model it")
        if self.nf:
            return "model.nf=true: weight standardization is not modelled"
        return None


@dataclass
class ResMLPConfig(ResidualKeys, MLPConfig):
    """``depth`` residual blocks of width ``width`` (see ResidualKeys); the branch's layers
    are Linear(width, width) with the model's norm and the activation."""

    name: str = "resmlp"
    residual: ClassVar[bool] = True

    def check(self) -> None:
        ResidualKeys.check(self)

    def theory_gap(self) -> Optional[str]:
        return self.residual_gap() or MLPConfig.theory_gap(self)


@dataclass
class ResNetConfig(ResidualKeys, CNNConfig):
    """The CNN's stages (``stage_every``, ``channel_growth``, ``pool``) made of residual
    blocks of k x k convolutions (see ResidualKeys). Where the shape changes (the first
    block when ``in_channels != width``, the first block of a widening stage) the shortcut
    is a 1x1 convolution [with the model's norm], as in torchvision's ResNets, and a new
    stage's first block pools its input."""

    name: str = "resnet"
    residual: ClassVar[bool] = True

    def check(self) -> None:
        CNNConfig.check(self)
        ResidualKeys.check(self)

    def theory_gap(self) -> Optional[str]:
        return ("the residual recursion is implemented for resmlp only; the per-pixel "
                "recursion with zero padding and shortcut convolutions is not")


@dataclass
class TransformerConfig(ModelConfig):
    """``depth`` blocks of multi-head self-attention and an MLP on inputs of shape
    ``(batch_size, tokens, width)`` (propbench.transformer): pre-LN (GPT-2) or post-LN
    (Vaswani et al. 2017) residual sublayers ``x + alpha * branch(x)``."""

    name: str = "transformer"
    norm: Norm = Norm.layernorm  # layernorm | none: the LayerNorm of each sublayer
    heads: int = 4  # attention heads; must divide width
    tokens: int = 64  # sequence length
    mlp_ratio: int = 4  # MLP hidden units per width unit; 0: attention-only blocks
    order: Order = Order.pre  # pre: x + branch(LN(x)); post: LN(x + branch(x))
    final_norm: bool = True  # a LayerNorm after the last block (GPT-2's ln_f)
    alpha: Any = 1.0  # branch multiplier: a number >= 0 or inv_sqrt_depth (1/sqrt(depth))
    # false: no skip connections, x -> alpha * branch(x) (a key here, where ModelConfig's
    # class flag says whether the model has ResidualKeys' branches)
    residual: bool = True
    causal: bool = False  # mask the future tokens (a decoder)
    stackable: ClassVar[bool] = False

    branch_scale = ResidualKeys.branch_scale

    def check(self) -> None:
        for key in ("heads", "tokens"):
            _at_least(f"model.{key}", getattr(self, key), 1)
        _at_least("model.mlp_ratio", self.mlp_ratio, 0)
        if self.norm == Norm.batchnorm:
            raise ConfigError("model.norm=batchnorm: a transformer takes layernorm or none")
        check_alpha(self.alpha)

    def check_width(self, width: int) -> None:
        if width % self.heads:
            raise ConfigError(f"model.heads={self.heads}: must divide width={width}")

    def footprint(self) -> tuple[int, int]:
        # q, k, v, out and the MLP's two layers; per token about 8 + 3 ratio saved tensors
        # of width units, and heads * tokens attention probabilities (counted for width >= 64)
        per_token = 8 + 3 * self.mlp_ratio + math.ceil(self.heads * self.tokens / 64)
        return 4 + 2 * self.mlp_ratio, self.tokens * per_token

    def theory_gap(self) -> Optional[str]:
        return "the mean-field recursion does not model attention or LayerNorm"


@dataclass
class CustomConfig(ModelConfig):
    """Any ``nn.Module`` a factory builds: ``_target_`` names the factory (a class or a
    function, ``pkg.module.name``), called with every further key of ``model`` as a keyword
    argument by Hydra's ``instantiate`` (a nested ``_target_`` is instantiated first, so
    ``model.config._target_=transformers.GPT2Config`` builds a model's config in place).
    The keys reach the factory as ``kwargs`` (filled by :func:`settings`)."""

    name: str = "custom"
    _target_: str = "???"
    kwargs: dict[str, Any] = field(default_factory=dict)  # the factory's keyword arguments

    def check(self) -> None:
        if self.norm != Norm.none:
            raise ConfigError("model.norm: model=custom has the normalization its factory builds")
        try:
            factory = locate(self._target_)
        except Exception as err:  # noqa: BLE001 -- any failure to import is the same mistake
            raise ConfigError(f"model._target_={self._target_}: cannot be imported "
                              f"({type(err).__name__}: {one_line(err)})") from None
        if not callable(factory):
            raise ConfigError(f"model._target_={self._target_}: is a {type(factory).__name__}, "
                              "not a class or function that builds a model")

    def footprint(self) -> tuple[int, int]:
        return 0, 0  # unknown: a custom model's memory is not estimated

    def theory_gap(self) -> Optional[str]:
        return "a model propbench did not build: no mean-field recursion for it"


MODELS: dict[str, type[ModelConfig]] = {
    model.name: model for model in (MLPConfig, CNNConfig, ResMLPConfig, ResNetConfig, TransformerConfig,
                   CustomConfig)}


def locate(path: str) -> Any:
    """The object at ``pkg.module.name``: the longest importable module prefix, then
    attributes (what Hydra's ``instantiate`` resolves, without its logging)."""
    import importlib

    parts = path.split(".")
    if not path or not all(parts):
        raise ImportError(f"not a dotted path: {path!r}")
    for cut in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError as err:
            if err.name and not ".".join(parts[:cut]).startswith(err.name):
                raise  # the module exists but imports something missing
            continue
        for i, attribute in enumerate(parts[cut:], cut):
            if not hasattr(found, attribute):
                raise AttributeError(f"{'.'.join(parts[:i])} has no attribute {attribute!r}")
            found = getattr(found, attribute)
        return found
    raise ModuleNotFoundError(f"no module named {parts[0]!r}")


@dataclass
class InputConfig:
    """The inputs of ``model=custom`` (the built-in models know theirs): ``batch_size``
    examples of ``shape`` each."""

    shape: Optional[list[int]] = None  # one example's shape: [3, 224, 224] (an image), [128] (tokens)
    kind: InputKind = InputKind.normal  # normal: standard normal; tokens: integer ids
    vocab_size: Optional[int] = None  # tokens: ids uniform in 0 .. vocab_size - 1


@dataclass
class ProbeConfig:
    """How ``model=custom`` is probed (see :func:`propbench.probe`)."""

    blocks: str = "auto"  # auto: the repeated blocks found; none; or a glob of module paths
    output: Optional[str] = None  # the key of a dict / ModelOutput output; null: the first tensor
    backward_from: str = "output"  # output | last_block: the cotangent enters there
    sites: dict[str, Optional[str]] = field(default_factory=dict)  # glob -> pre | norm | post | null


@dataclass
class ActConfig:
    name: str = "relu"  # a key of propbench.activations.ACTIVATIONS
    # Negative slope of leaky_relu, initial slope `a` of PReLU (PyTorch: 0.01 and 0.25).
    # Only those two take it; elsewhere it stays null.
    slope: Optional[float] = None


def default_layers(depth: int) -> list[int]:
    """The blocks whose Jacobian spectra are taken by default: 1, 2, 4, ... below ``depth``,
    and ``depth`` itself."""
    layers, layer = [], 1
    while layer < depth:
        layers.append(layer)
        layer *= 2
    return layers + [depth]


@dataclass
class SpectrumConfig:
    """``spectrum=true``: the singular values of the Jacobian of the block outputs with
    respect to the input (propbench.spectrum), written to spectrum.csv and spectrum.png.
    ``spectrum=true`` is short for ``spectrum.enabled=true``."""

    enabled: bool = False
    examples: int = 4  # the first inputs of each trial's batch whose Jacobians are taken
    layers: Optional[list[int]] = None  # block indices; null: 1, 2, 4, ... below depth, and depth
    # exact: full Jacobians and an SVD; estimate: stochastic Lanczos (mean by Hutchinson,
    # largest singular value by Ritz values); auto: exact while it fits a quarter of the
    # free memory
    method: SpectrumMethod = SpectrumMethod.auto

    def check(self, depth: int, batch_size: int, model: ModelConfig) -> None:
        _at_least("spectrum.examples", self.examples, 1)
        for layer in self.layers or []:
            if not 1 <= layer <= depth:
                raise ConfigError(f"spectrum.layers: {layer} is not a block (1..depth={depth})")
        if self.layers is not None and not self.layers:
            raise ConfigError("spectrum.layers=[]: give at least one block, or null for the default")
        if not self.enabled:
            return
        if self.examples > batch_size:
            raise ConfigError(f"spectrum.examples={self.examples}: at most batch_size={batch_size}")
        if model.norm == Norm.batchnorm:
            raise ConfigError("spectrum=true: BatchNorm mixes the examples of a batch, so one "
                              "example's Jacobian is not defined; use model.norm=none")


@dataclass
class Expectation:
    """One checkable consequence of an experiment's claim: every job whose overrides match
    ``where`` (e.g. ``{init: default, act: relu, depth: 100}``) gets one of ``verdict`` for
    ``quantity``, and its log10 ratio lies ``between`` the two numbers given."""

    where: dict[str, Any] = field(default_factory=dict)
    # activation | gradient (verdicts, log10 ratios); token_similarity | attention_entropy |
    # weight_gradient (values: see propbench.sweep.VALUE_COLUMNS)
    quantity: str = "activation"
    verdict: list[str] = field(default_factory=list)  # accepted verdicts (empty: any)
    # [low, high]: the log10 ratio must lie in it (a closed form's value, with its margin)
    between: Optional[list[float]] = None


@dataclass
class ExperimentConfig:
    """A named study (experiments/experiment/*.yaml): the claim, where it comes from, and
    the expectations the sweep's summary checks."""

    name: str = ""
    claim: str = ""
    source: str = ""
    expect: list[Expectation] = field(default_factory=list)


@dataclass
class PropbenchConfig:
    """Everything a run needs, validated when built (:func:`settings` builds it from a
    composed config)."""

    model: ModelConfig = field(default_factory=MLPConfig)
    act: ActConfig = field(default_factory=ActConfig)
    init: InitConfig = field(default_factory=DefaultInit)
    depth: int = 10  # number of blocks
    width: int = 256  # units (MLP) or channels (CNN) of every block
    batch_size: int = 256
    seed: int = 0
    trials: int = 1  # independent re-initializations, seeds derived from `seed`
    # trials probed at once, stacked into one network (propbench.stacked); null: as many as
    # fit in half the free memory (on the CPU, in at most 1 GiB); 1: one at a time
    trial_batch: Optional[int] = None
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: DType = DType.float32
    bias: bool = True
    resume: bool = False  # keep a complete result of the same config instead of rerunning
    # c0: feed batch_size/2 pairs of inputs with correlation c0 and record, per layer, the
    # mean cosine similarity of each pair's representations (quantity=correlation)
    correlation: Optional[float] = None
    input: InputConfig = field(default_factory=InputConfig)  # model=custom only
    probe: ProbeConfig = field(default_factory=ProbeConfig)  # model=custom only
    spectrum: SpectrumConfig = field(default_factory=SpectrumConfig)  # Jacobian singular values
    quiet: bool = False  # only warnings and errors on the console (propbench.logs)
    # the number each job returns to Hydra's sweeper (an optimizing one such as Optuna
    # minimizes it): |log10 r| of the gradient, the activation, or the larger of the two
    objective: Objective = Objective.gradient
    experiment: Optional[ExperimentConfig] = None  # set by +experiment=NAME

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dicts with enums as their values (JSON-ready)."""
        return asdict(self, dict_factory=lambda items: {
            k: v.value if isinstance(v, Enum) else v for k, v in items})


# group -> (the base every option extends, option name -> the option's schema)
GROUPS: dict[str, tuple[type, dict[str, Any]]] = {
    "model": (ModelConfig, MODELS),
    "act": (ActConfig, {name: ActConfig for name in ACTIVATIONS}),
    "init": (InitConfig, INITS),
}
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def group_options(group: str) -> list[str]:
    """The options of a config group, sorted."""
    return sorted(GROUPS[group][1])


def _option(group: str, value: Any) -> None:
    """``value`` must be the schema of the option its ``name`` names."""
    options = GROUPS[group][1]
    if value.name not in options:
        raise ConfigError(f"{group}.name={value.name}: choose one of {', '.join(options)}")
    if type(value) is not options[value.name]:
        raise ConfigError(f"{group}.name={value.name}: choose the option as {group}={value.name}")


def _check_slope(act: ActConfig) -> None:
    takes = [name for name, spec in ACTIVATIONS.items() if spec.slope is not None]
    if act.name in takes:
        if act.slope is None or not math.isfinite(act.slope) or act.slope < 0:
            raise ConfigError(f"act.slope={act.slope}: {act.name} needs a finite slope >= 0")
    elif act.slope is not None:
        raise ConfigError(f"act.slope={act.slope}: only {' and '.join(takes)} take a slope")


def validate(s: PropbenchConfig) -> None:
    """Range and cross-field checks that types alone cannot express.

    Raises ConfigError with one line naming the key, the bad value and what is allowed.
    """
    for key in ("depth", "width", "batch_size", "trials"):
        _at_least(key, getattr(s, key), 1)
    _at_least("seed", s.seed, 0)
    if s.trial_batch is not None:
        _at_least("trial_batch", s.trial_batch, 1)
    c0 = s.correlation
    if c0 is not None:
        if not (math.isfinite(c0) and -1 <= c0 <= 1):
            raise ConfigError(f"correlation={c0}: must be between -1 and 1 (or null)")
        if s.batch_size % 2:
            raise ConfigError(f"batch_size={s.batch_size}: correlation needs pairs, so an even batch")
    if s.model.norm == Norm.batchnorm and s.batch_size < 2:
        raise ConfigError(f"batch_size={s.batch_size}: model.norm=batchnorm needs batch_size >= 2 "
                          "(BatchNorm of one sample is 0)")
    if s.batch_size * s.width * s.model.footprint()[1] == 1:
        raise ConfigError(f"width={s.width}, batch_size={s.batch_size}: every tensor would hold "
                          "one element, which has no variance; raise one of them")
    if not _DEVICE.match(str(s.device)):
        raise ConfigError(f"device={s.device}: choose auto, cpu, cuda or cuda:N")
    for group in GROUPS:
        _option(group, getattr(s, group))
    s.model.check()
    if hasattr(s.model, "check_width"):
        s.model.check_width(s.width)
    _check_slope(s.act)
    s.init.check()
    s.init.check_model(s.model, s.width)
    s.spectrum.check(s.depth, s.batch_size, s.model)
    if s.init.residual_only and not isinstance(s.model, ResidualKeys):
        raise ConfigError(f"init={s.init.name}: only residual models take it (model=resmlp or "
                          f"model=resnet, not model={s.model.name})")
    if s.init.residual_only and getattr(s.model, "nf", False):
        raise ConfigError(f"init={s.init.name}: zeroes layers that weight standardization "
                          "(model.nf=true) cannot keep; use one or the other")
    if s.model.name == "custom":
        _check_custom(s)
    else:
        for key, default in (("input", InputConfig()), ("probe", ProbeConfig())):
            if getattr(s, key) != default:
                raise ConfigError(f"{key}: only model=custom takes it ({s.model.name} knows its "
                                  "inputs and layers)")


def _check_custom(s: PropbenchConfig) -> None:
    """What a model built by someone else needs: an input spec, and no propbench init."""
    from propbench.sites import SITE_NAMES

    if s.input.shape is None:
        raise ConfigError("input.shape: model=custom needs one example's shape, e.g. "
                          "input.shape=[3,32,32] or input.shape=[128] (tokens)")
    for size in s.input.shape:
        _at_least("input.shape", size, 1)
    if s.input.kind == InputKind.tokens:
        if s.input.vocab_size is None or s.input.vocab_size < 1:
            raise ConfigError(f"input.vocab_size={s.input.vocab_size}: input.kind=tokens needs "
                              "a vocabulary size >= 1")
    elif s.input.vocab_size is not None:
        raise ConfigError("input.vocab_size: only input.kind=tokens takes it")
    if s.init.name != "default" or s.act.name != "relu":
        which = f"init={s.init.name}" if s.init.name != "default" else f"act={s.act.name}"
        raise ConfigError(f"{which}: model=custom keeps the layers and init its factory builds")
    if s.correlation is not None:
        raise ConfigError("correlation: model=custom does not take input pairs")
    if s.probe.backward_from not in ("output", "last_block"):
        raise ConfigError(f"probe.backward_from={s.probe.backward_from}: choose output or last_block")
    for key, site in s.probe.sites.items():
        if site is not None and site not in SITE_NAMES:
            raise ConfigError(f"probe.sites.{key}={site}: choose one of {', '.join(SITE_NAMES)} or null")
    if s.spectrum.enabled:
        raise ConfigError("spectrum=true: not from the CLI for model=custom; call "
                          "propbench.jacobian_spectrum(model, inputs, layers=...) on it")


def _schema() -> Any:
    """PropbenchConfig as Hydra's base config. Its groups start as their bases: an option
    is merged onto what is there, which needs it to extend that."""
    from omegaconf import OmegaConf

    schema = OmegaConf.structured(PropbenchConfig)
    for group, (base, _) in GROUPS.items():
        schema[group] = base()
    return schema


def register_configs() -> None:
    """Store the base config and every option of every group in Hydra's ConfigStore."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from propbench.logs import console_level

    OmegaConf.register_new_resolver("propbench_console_level", console_level, replace=True)
    cs = ConfigStore.instance()
    from omegaconf import OmegaConf

    cs.store(name="propbench_schema", node=_schema())
    for name, model in MODELS.items():
        node = OmegaConf.structured(model)
        if model is CustomConfig:  # its further keys are the factory's arguments
            OmegaConf.set_struct(node, False)
        cs.store(group="model", name=name, node=node)
    for name, spec in ACTIVATIONS.items():
        cs.store(group="act", name=name, node=ActConfig(name, spec.slope))
    for name, scheme in INITS.items():
        cs.store(group="init", name=name, node=scheme())


def compose(overrides: Optional[list[str]] = None, return_hydra_config: bool = False) -> Any:
    """The config ``python -m propbench OVERRIDES...`` would run, as an OmegaConf DictConfig;
    a mistake raises ConfigError with one line.

    >>> from propbench import compose
    >>> compose(["depth=20", "act=tanh"]).act.name
    'tanh'
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    overrides = expand_aliases(list(overrides or []))
    register_configs()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR),
                                   job_name="propbench"):
            return hydra_compose(config_name="config", overrides=overrides,
                                 return_hydra_config=return_hydra_config)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(explain(err, overrides)) from None


_ALIAS = re.compile(r"^(?P<key>[+~]*spectrum)=(?P<value>(true|false|True|False)(,(true|false|True|False))*)$")


def expand_aliases(overrides: list[str]) -> list[str]:
    """``spectrum=BOOL`` (or a sweep of them) is ``spectrum.enabled=BOOL``: a key cannot be
    both a switch and a group of settings in Hydra, so the short form is rewritten here, for
    the CLI and :func:`compose` alike."""
    out = []
    for override in overrides:
        match = _ALIAS.match(override)
        out.append(f"spectrum.enabled={match['value']}" if match and not match["key"].startswith(("+", "~"))
                   else override)
    return out


def settings(cfg: Any) -> PropbenchConfig:
    """The validated, typed config of a composed ``cfg`` (a PropbenchConfig is returned as
    it is: it was validated when built)."""
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(cfg, PropbenchConfig):
        return cfg
    for f in fields(PropbenchConfig):  # a key deleted with ~KEY must come back
        if f.name not in cfg and f.name != "experiment":
            raise ConfigError(f"{f.name}: required (it was deleted); set it, e.g. {f.name}=...")
    for group in GROUPS:
        for f in fields(OmegaConf.get_type(cfg[group])):
            if group == "model" and f.name == "_target_" and OmegaConf.is_missing(cfg.model, f.name):
                raise ConfigError("model._target_: model=custom needs the factory that builds the "
                                  "model, e.g. model._target_=pkg.module.build_model")
            if f.name not in cfg[group]:
                raise ConfigError(f"{group}.{f.name}: required (it was deleted)")
    if "hydra" in cfg:
        cfg = cfg.copy()
        with open_dict(cfg):
            del cfg["hydra"]  # its job-time interpolations cannot resolve here
    factory_kwargs = _refuse_unknown_keys(cfg)
    try:
        s = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:  # an interpolation that does not resolve
        key = getattr(err, "full_key", "")
        value = OmegaConf.to_container(cfg, resolve=False).get(key, "") if key and "." not in key else ""
        where = f"{key}={value}: " if value else f"{key}: " if key else ""
        raise ConfigError(where + first_line(err)) from None
    if factory_kwargs:
        s.model.kwargs = {**s.model.kwargs, **factory_kwargs}
    return s


def _refuse_unknown_keys(cfg: Any) -> dict[str, Any]:
    """ConfigError for a key no schema has (``+foo=1``, ``+model.foo=1`` would otherwise be
    dropped without a word); model=custom's further keys, its factory's arguments, returned."""
    from omegaconf import OmegaConf

    top = {f.name for f in fields(PropbenchConfig)}
    for key in cfg:
        if key not in top:
            raise ConfigError(f"+{key}: unknown key, which propbench would ignore{_suggest(str(key))}")
    for group in [*GROUPS, "input", "probe"]:
        schema = OmegaConf.get_type(cfg[group])
        own = {f.name for f in fields(schema)}
        extra = [str(k) for k in cfg[group] if k not in own]
        if not extra:
            continue
        if schema is CustomConfig:
            return {k: OmegaConf.to_container(cfg.model, resolve=True)[k] for k in extra}
        option = f"{group}={cfg[group].name} takes" if group in GROUPS else f"{group} has"
        hint = "; a model of your own is model=custom model._target_=..." if extra[0] == "_target_" else ""
        raise ConfigError(f"{group}.{extra[0]}: unknown key; {option} only "
                          f"{', '.join(k for k in own if k != 'name')}{hint}")
    return {}


# --- composition errors as one line -------------------------------------------------------

def _known_keys() -> list[str]:
    """Every key of the schemas: top level, and each group's keys over all its options."""
    keys = [f.name for f in fields(PropbenchConfig)]
    keys += [f"spectrum.{f.name}" for f in fields(SpectrumConfig)]
    for group, (_, options) in GROUPS.items():
        keys += dict.fromkeys(f"{group}.{f.name}" for option in options.values() for f in fields(option))
    return keys


def _suggest(key: str) -> str:
    """'; did you mean depth?' for dept, '; did you mean model.norm?' for norm, or ''."""
    known = _known_keys()
    nested = [k for k in known if k.endswith("." + key)]
    close = nested or difflib.get_close_matches(key, known, n=1)
    return f"; did you mean {close[0]}?" if close else ""


def _culprit(err: BaseException, overrides: list[str]) -> str:
    """The override an error is about (Hydra names it in its message), or ''."""
    text = str(err)
    return next((o for o in overrides if o in text), "")


def explain(err: BaseException, overrides: list[str]) -> str:
    """Hydra's and OmegaConf's multi-line composition errors as one line."""
    from hydra.errors import MissingConfigException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    if isinstance(err, MissingConfigException) and err.missing_cfg_file:
        group, _, option = err.missing_cfg_file.rpartition("/")
        options = [o for o in (err.options or []) if not o.startswith("_")]
        if group and options:
            return f"{group}={option}: no such option; choose one of {', '.join(options)}"
        return first_line(err)
    override = _culprit(err, overrides)
    cause = err.__cause__ or err
    text = str(err)
    if "No match in the defaults list" in text and override and not override.startswith("+"):
        return f"{override}: {override.split('=', 1)[0]} is not in the defaults list; add it with +{override}"
    key = getattr(cause, "full_key", None) or override.split("=", 1)[0].lstrip("+~")
    value = override.split("=", 1)[1] if "=" in override else ""
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
        deleted = next((o for o in overrides if o.startswith("~") and o[1:].split("=", 1)[0] == key), "")
        if deleted:
            return f"{override or key}: {key} was deleted by {deleted}; give one of the two"
        group, option = key.partition(".")[0], getattr(cause, "object_type", None)
        names = [n for n, o in GROUPS.get(group, (None, {}))[1].items() if o is option]
        if len(names) == 1:  # a key another option of the group has
            return f"{key}={value}: {group}={names[0]} takes only {', '.join(parameters(option))}"
        return f"{key}: unknown key{_suggest(key)}"
    if isinstance(cause, ValidationError):
        option = getattr(cause, "object_type", None)
        group = key.partition(".")[0]
        if value == "null" and group in GROUPS and option is not None:
            return f"{key}=null: {group}={getattr(option, 'name', group)} needs a value for it"
        return f"{key}={value}: {first_line(cause)}"
    return f"{override}: {first_line(err)}" if override else first_line(err)
