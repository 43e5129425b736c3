"""Structured-config schemas, registered in Hydra's ConfigStore, and their range checks.

Types and choices are enforced by OmegaConf when Hydra composes the config (``depth=abc``,
``init.mode=sideways``); ranges and cross-field rules by :func:`validate`. Nothing here
imports torch, so a bad override is rejected in well under a second.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, is_dataclass
from enum import Enum
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

from hydra.core.config_store import ConfigStore

from propbench.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parent / "conf"


class Norm(Enum):
    none = "none"
    batchnorm = "batchnorm"


class Pool(Enum):
    none = "none"
    max = "max"
    avg = "avg"


class Mode(Enum):
    fan_in = "fan_in"
    fan_out = "fan_out"


class DType(Enum):
    float32 = "float32"
    float64 = "float64"


class Distribution(Enum):
    normal = "normal"
    uniform = "uniform"
    orthogonal = "orthogonal"


class BiasInit(Enum):
    zeros = "zeros"
    default = "default"  # keep PyTorch's U(-1/sqrt(fan_in), 1/sqrt(fan_in))


@dataclass
class ModelConfig:
    name: str = "mlp"
    norm: Norm = Norm.none  # BatchNorm after each Linear/Conv, before the activation


@dataclass
class MLPConfig(ModelConfig):
    """``depth`` blocks of Linear(width, width) -> [BatchNorm1d] -> activation."""


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


@dataclass
class ActConfig:
    name: str = "relu"
    # Negative slope of leaky_relu, initial slope `a` of PReLU (PyTorch: 0.25).
    # Only those two take it; elsewhere it stays null.
    slope: Optional[float] = None


@dataclass
class InitConfig:
    """Union of the init parameters; a scheme takes only those listed in INIT_PARAMS."""

    name: str = "default"
    # null: the scheme's own (kaiming: from the activation); a number; or "auto" (kaiming,
    # xavier): the variance-preserving gain 1/sqrt(E[phi(z)^2]) computed by quadrature
    gain: Any = None
    mode: Optional[Mode] = None  # fan_in preserves forward variance, fan_out backward
    std: Optional[float] = None  # init=normal
    a: Optional[float] = None  # init=uniform lower bound
    b: Optional[float] = None  # init=uniform upper bound
    sigma_w2: Optional[float] = None  # init=scaled: Var(W) = sigma_w2 / fan_mode
    sigma_b2: Optional[float] = None  # init=scaled: bias ~ N(0, sigma_b2)
    distribution: Optional[Distribution] = None  # init=scaled: normal | uniform | orthogonal
    bias: BiasInit = BiasInit.zeros  # every scheme but scaled (whose bias is N(0, sigma_b2))


# Which InitConfig fields each scheme reads (besides `name`). The torch side
# (propbench.inits.INITS) has the same keys; tests check that the two agree.
INIT_PARAMS: dict[str, tuple[str, ...]] = {
    "default": ("bias",),
    "uniform": ("a", "b", "bias"),
    "normal": ("std", "bias"),
    "xavier": ("gain", "bias"),
    "xavier_uniform": ("gain", "bias"),
    "kaiming": ("gain", "mode", "bias"),
    "kaiming_uniform": ("gain", "mode", "bias"),
    "lecun": ("gain", "bias"),
    "orthogonal": ("gain", "bias"),
    "scaled": ("sigma_w2", "sigma_b2", "mode", "distribution"),
}

# Parameters a scheme cannot do without (the others fall back to the scheme's own default).
INIT_REQUIRED: dict[str, tuple[str, ...]] = {
    "uniform": ("a", "b"),
    "normal": ("std",),
    "kaiming": ("mode",),
    "kaiming_uniform": ("mode",),
    "scaled": ("sigma_w2", "sigma_b2", "mode", "distribution"),
}

# Schemes whose gain may be "auto".
AUTO_GAIN_SCHEMES = ("kaiming", "kaiming_uniform", "xavier", "xavier_uniform")

# Activations that take `act.slope`; the others must leave it null.
SLOPED_ACTIVATIONS = ("leaky_relu", "prelu")


@dataclass
class Expectation:
    """One checkable consequence of an experiment's claim: every job whose overrides match
    ``where`` (e.g. ``{init: default, act: relu, depth: 100}``) gets one of ``verdict`` for
    ``quantity``."""

    where: dict[str, Any] = field(default_factory=dict)
    quantity: str = "activation"  # activation | gradient
    verdict: list[str] = field(default_factory=list)  # accepted verdicts


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
    model: ModelConfig = field(default_factory=ModelConfig)  # MLPConfig or CNNConfig
    act: ActConfig = field(default_factory=ActConfig)
    init: InitConfig = field(default_factory=InitConfig)
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
    experiment: Optional[ExperimentConfig] = None  # set by +experiment=NAME


def register_configs() -> None:
    """Store the schemas; the YAML files in conf/ extend them via ``/schema/...@_here_``."""
    cs = ConfigStore.instance()
    cs.store(name="propbench_schema", node=PropbenchConfig)
    cs.store(group="schema/model", name="mlp", node=MLPConfig)
    cs.store(group="schema/model", name="cnn", node=CNNConfig)
    cs.store(group="schema/act", name="act", node=ActConfig)
    cs.store(group="schema/init", name="init", node=InitConfig)


def group_options(group: str) -> list[str]:
    """Options of a config group, as the YAML files in conf/<group>/ name them."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def _at_least(cfg: Any, key: str, low: int) -> None:
    value = _get(cfg, key)
    if value < low:
        raise ConfigError(f"{key}={value}: must be >= {low}")


def _get(cfg: Any, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _finite(cfg: Any, key: str, positive: bool = False) -> None:
    value = _get(cfg, key)
    if value is None:
        return
    if not math.isfinite(value) or (positive and value <= 0):
        what = "a finite number > 0" if positive else "a finite number"
        raise ConfigError(f"{key}={value}: must be {what}")


def _check_gain(gain: Any, scheme: str) -> None:
    if gain is None:
        return
    if gain == "auto":
        if scheme not in AUTO_GAIN_SCHEMES:
            raise ConfigError(f"init.gain=auto: only {', '.join(AUTO_GAIN_SCHEMES)} take it")
        return
    try:
        value = float(gain)
    except (TypeError, ValueError):
        raise ConfigError(f"init.gain={gain}: must be a number > 0, auto or null") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"init.gain={gain}: must be a finite number > 0 (or auto)")


def _require_all_keys(cfg: Any) -> None:
    """A key deleted with ~KEY must come back: every schema field is needed."""
    from dataclasses import fields

    groups = {"model": ModelConfig, "act": ActConfig, "init": InitConfig}
    for f in fields(PropbenchConfig):
        if f.name not in cfg and f.name != "experiment":
            raise ConfigError(f"{f.name}: required (it was deleted); set it, e.g. {f.name}=...")
    for group, schema in groups.items():
        for f in fields(schema):
            if f.name not in cfg[group]:
                raise ConfigError(f"{group}.{f.name}: required (it was deleted)")


def validate(cfg: Any) -> None:
    """Range and cross-field checks that types alone cannot express.

    Raises ConfigError with one line naming the key, the bad value and what is allowed.
    """
    _require_all_keys(cfg)
    for key in ("depth", "width", "batch_size", "trials"):
        _at_least(cfg, key, 1)
    _at_least(cfg, "seed", 0)
    if cfg.trial_batch is not None:
        _at_least(cfg, "trial_batch", 1)
    c0 = cfg.correlation
    if c0 is not None:
        if not (math.isfinite(c0) and -1 <= c0 <= 1):
            raise ConfigError(f"correlation={c0}: must be between -1 and 1 (or null)")
        if cfg.batch_size % 2:
            raise ConfigError(f"batch_size={cfg.batch_size}: correlation needs pairs, so an even batch")
    if not _DEVICE.match(str(cfg.device)):
        raise ConfigError(f"device={cfg.device}: choose auto, cpu, cuda or cuda:N")

    models = group_options("model")
    if cfg.model.name not in models:
        raise ConfigError(f"model.name={cfg.model.name}: choose one of {', '.join(models)}")
    if cfg.model.name == "cnn":
        for key in ("in_channels", "image_size", "kernel_size", "num_classes", "channel_growth"):
            _at_least(cfg, f"model.{key}", 1)
        _at_least(cfg, "model.stage_every", 0)
        if cfg.model.kernel_size % 2 == 0:
            raise ConfigError(f"model.kernel_size={cfg.model.kernel_size}: must be odd")

    acts = group_options("act")
    if cfg.act.name not in acts:
        raise ConfigError(f"act.name={cfg.act.name}: choose one of {', '.join(acts)}")
    if cfg.act.name in SLOPED_ACTIVATIONS:
        slope = cfg.act.slope
        if slope is None or not math.isfinite(slope) or slope < 0:
            raise ConfigError(
                f"act.slope={slope}: {cfg.act.name} needs a finite slope >= 0"
            )
    elif cfg.act.slope is not None:
        raise ConfigError(
            f"act.slope={cfg.act.slope}: only {' and '.join(SLOPED_ACTIVATIONS)} take a slope"
        )

    scheme = cfg.init.name
    if scheme not in INIT_PARAMS:
        raise ConfigError(f"init.name={scheme}: choose one of {', '.join(INIT_PARAMS)}")
    takes = INIT_PARAMS[scheme]
    for key in ("gain", "mode", "std", "a", "b", "sigma_w2", "sigma_b2", "distribution"):
        if key not in takes and getattr(cfg.init, key) is not None:
            raise ConfigError(
                f"init.{key}={getattr(cfg.init, key)}: init={scheme} takes only "
                f"{', '.join(takes)}"
            )
    for key in INIT_REQUIRED.get(scheme, ()):
        if getattr(cfg.init, key) is None:
            raise ConfigError(f"init.{key}=null: init={scheme} needs a value for it")
    _check_gain(cfg.init.gain, scheme)
    _finite(cfg, "init.std", positive=True)
    _finite(cfg, "init.sigma_w2", positive=True)
    if cfg.init.sigma_b2 is not None and not (math.isfinite(cfg.init.sigma_b2) and cfg.init.sigma_b2 >= 0):
        raise ConfigError(f"init.sigma_b2={cfg.init.sigma_b2}: must be a finite number >= 0")
    _finite(cfg, "init.a")
    _finite(cfg, "init.b")
    if scheme == "uniform" and not cfg.init.a < cfg.init.b:
        raise ConfigError(f"init.a={cfg.init.a}, init.b={cfg.init.b}: need a < b")


def compose(overrides: Optional[list[str]] = None, return_hydra_config: bool = False) -> Any:
    """The config ``python -m propbench OVERRIDES...`` would run, as an OmegaConf DictConfig.

    >>> from propbench import compose
    >>> compose(["depth=20", "act=tanh"]).act.name
    'tanh'
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_configs()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR), job_name="propbench"):
        return hydra_compose(config_name="config", overrides=list(overrides or []),
                             return_hydra_config=return_hydra_config)


def settings(cfg: Any) -> SimpleNamespace:
    """Validate ``cfg`` (DictConfig, PropbenchConfig or dict) and return it as plain nested
    namespaces with enums as strings -- what the torch side reads."""
    from omegaconf import DictConfig, OmegaConf

    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.structured(cfg) if is_dataclass(cfg) else OmegaConf.create(cfg)
    validate(cfg)
    plain = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    plain.pop("hydra", None)
    return _namespace(plain)


def _namespace(value: Any) -> Any:
    if isinstance(value, dict):
        return SimpleNamespace(**{k: _namespace(v) for k, v in value.items()})
    return value


def as_dict(ns: SimpleNamespace) -> dict:
    """Inverse of :func:`settings`' namespaces: nested plain dicts (JSON-ready)."""
    return {k: as_dict(v) if isinstance(v, SimpleNamespace) else v for k, v in vars(ns).items()}
