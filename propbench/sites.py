"""Which modules' outputs the probe records, and as what: recognition by rule, not by list.

A module's output stands for one of three sites of a layer:

- ``pre`` -- a projection: a leaf whose ``weight`` parameter has two or more dimensions
  (``nn.Linear``, every ``nn.Conv*``, ``transformers``' ``Conv1D``, ``nn.Bilinear``, any
  library's Linear variant), embeddings excepted (a lookup, not a projection);
- ``norm`` -- a normalization: ``nn.BatchNorm*``, ``nn.LayerNorm``, ``nn.GroupNorm``, or a
  class whose name (or a base class's) contains ``Norm`` (``RMSNorm``, ``T5LayerNorm``,
  timm's ``LayerNorm2d``, ...);
- ``post`` -- an activation: a class defined in a module named ``activation*`` (torch's
  ``torch.nn.modules.activation``, ``transformers.activations``, timm's
  ``layers.activations*``) or whose name (or a base class's) names a nonlinearity (ReLU,
  GELU, SiLU, Swish, Mish, Tanh, Sigmoid, ELU, Softplus, GLU, ``...Activation``). So
  ``NewGELUActivation``, ``GELUTanh`` or the next GELU variant of a library are recognised
  without anyone adding them to a list.

Before these rules come, in this order: a module's own ``probe_site`` attribute (set it on
a module class or instance to classify it: ``"pre"``, ``"norm"`` or ``"post"``), and the
``sites`` mapping given to :func:`propbench.probe`, whose keys are classes (matched with
``isinstance``) or globs matched against the module's path (``"encoder.*.attention"``) or
its class name (``"*Attention"``); a value of None leaves a module out.
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from functools import lru_cache
from typing import Any, Mapping, Optional

from torch import nn

from propbench.errors import ProbeError

SITE_NAMES = ("pre", "norm", "post")
_NORM_NAME = re.compile(r"Norm(?!al)")
_ACTIVATION_NAME = re.compile(
    r"(ReLU|GELU|SiLU|Swish|Mish|Tanh|Sigmoid|ELU|Softplus|Softsign|GLU|Activation)(\d*)$",
    re.IGNORECASE)
_EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)


def _classes(module: nn.Module) -> tuple[type, ...]:
    """The module's class and its bases up to (not including) ``nn.Module``."""
    return _mro(type(module))


@lru_cache(maxsize=None)
def _mro(cls: type) -> tuple[type, ...]:
    return tuple(c for c in cls.__mro__ if issubclass(c, nn.Module) and c is not nn.Module)


def is_projection(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return (isinstance(weight, nn.Parameter) and weight.dim() >= 2
            and not isinstance(module, _EMBEDDINGS) and "Embedding" not in type(module).__name__)


def is_norm(module: nn.Module) -> bool:
    return _class_is_norm(type(module))


@lru_cache(maxsize=None)
def _class_is_norm(cls: type) -> bool:
    from propbench.inits import NORM_TYPES

    return issubclass(cls, NORM_TYPES) or any(_NORM_NAME.search(c.__name__) for c in _mro(cls))


def is_activation(module: nn.Module) -> bool:
    return _class_is_activation(type(module))


@lru_cache(maxsize=None)
def _class_is_activation(cls: type) -> bool:
    if issubclass(cls, nn.MultiheadAttention):  # lives in torch's activation module
        return False
    return any(c.__module__.rpartition(".")[2].startswith("activation")
               or _ACTIVATION_NAME.search(c.__name__) for c in _mro(cls))


def check_sites(sites: Optional[Mapping[Any, Optional[str]]]) -> dict[Any, Optional[str]]:
    """``sites`` as a dict, each value one of SITE_NAMES or None (ProbeError otherwise)."""
    sites = dict(sites or {})
    for key, site in sites.items():
        if site is not None and site not in SITE_NAMES:
            raise ProbeError(f"sites[{key!r}]={site!r}: choose one of {', '.join(SITE_NAMES)} "
                             "(or None to leave it out)")
        if not isinstance(key, (str, type)):
            raise ProbeError(f"sites: a key is a module class or a glob string, not {key!r}")
    return sites


def _user_site(module: nn.Module, path: str, sites: Mapping[Any, Optional[str]]) -> tuple[bool, Optional[str]]:
    """(matched, site) from the user's ``sites`` mapping; the first matching key wins."""
    for key, site in sites.items():
        if isinstance(key, type):
            if isinstance(module, key):
                return True, site
        elif fnmatchcase(path, key) or any(fnmatchcase(c.__name__, key) for c in _classes(module)):
            return True, site
    return False, None


def classify(module: nn.Module, path: str = "",
             sites: Optional[Mapping[Any, Optional[str]]] = None) -> Optional[str]:
    """The site a module's output stands for (see the module's doc), or None: not recorded
    (containers, pooling, dropout, embeddings, attention as a whole)."""
    site = getattr(module, "probe_site", None)
    if site is not None:
        return site
    matched, site = _user_site(module, path, sites or {})
    if matched:
        return site
    if list(module.children()):  # a container: its leaves are the layers
        return None
    if is_projection(module):
        return "pre"
    if is_norm(module):
        return "norm"
    if is_activation(module):
        return "post"
    return None


def recognised(model: nn.Module, sites: Optional[Mapping[Any, Optional[str]]] = None) -> dict[nn.Module, str]:
    """Every module of ``model`` that :func:`classify` gives a site -> that site."""
    found = {}
    for path, module in model.named_modules():
        site = classify(module, path, sites)
        if site is not None:
            found[module] = site
    return found
