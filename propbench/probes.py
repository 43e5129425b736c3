"""Hooks that measure per-layer activation and gradient statistics in one forward+backward.

Forward hooks on the tapped modules see each block's pre-activation (Linear/Conv output),
normalized output (BatchNorm etc.) and post-activation; a tensor hook
(``Tensor.register_hook``) on each of those outputs sees the gradient flowing back into it,
and one on each weight sees the weight's gradient. Tensor hooks, unlike full backward module
hooks, work with in-place activations.

Every tensor is seen as ``(T, *shape)``: one slice per trial (T = 1 for a single network,
T > 1 for the stacked trials of :mod:`propbench.stacked`). Each hook hands its tensor to
:class:`propbench.moments.Moments`, which reduces each slice on the device -- mean and
variance exact to float64 round-off whatever the tensor's mean or magnitude, the number of
non-finite elements and, for (N, C, H, W) tensors, the channel statistics of
signal-propagation plots -- and keeps only those few numbers. No hook keeps an activation
or syncs with the device; one transfer after the backward pass brings everything to the
host. The network runs forward and backward once, whatever its signal does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from propbench.activations import is_activation
from propbench.inits import NORM_TYPES, WEIGHTED_TYPES
from propbench.moments import Moments
from propbench.tokens import attention_entropy, token_similarity

# branch: a residual branch's output (before alpha); block: a block's output, the stream
SITES = ("pre", "norm", "post", "weight", "branch", "block", "attention")
# token_similarity: per block, mean cosine similarity of a sequence's tokens (block rows);
# attention_entropy: mean entropy of the attention rows in nats (attention rows)
QUANTITIES = ("activation", "gradient", "correlation", "token_similarity", "attention_entropy")
FRAME_COLUMNS = [
    "layer", "sublayer", "module", "site", "quantity", "mean", "var", "second_moment", "n",
    "nonfinite", "channel_mean_sq", "channel_var",
]

def classify(module: nn.Module) -> Optional[str]:
    """The site a module's output stands for: Linear/Conv -> 'pre', normalization ->
    'norm', activation -> 'post'; None for anything else (pooling, dropout, containers)."""
    site = getattr(module, "probe_site", None)  # stacked layers (propbench.stacked) say
    if site is not None:
        return site
    if isinstance(module, WEIGHTED_TYPES):
        return "pre"
    if isinstance(module, NORM_TYPES):
        return "norm"
    if is_activation(module):
        return "post"
    return None


def default_modules(model: nn.Module) -> list[nn.Module]:
    """Every leaf module of ``model`` that :func:`classify` gives a site (a propbench model
    names its own: ``probed_modules()``, residual blocks and branches included)."""
    if hasattr(model, "probed_modules"):
        return model.probed_modules()
    return [
        m for m in model.modules() if not list(m.children()) and classify(m) is not None
    ]


def _one_trial(t: torch.Tensor, weight: bool = False) -> torch.Tensor:
    """A single network's tensor as the per-trial view (1, *shape)."""
    return t.unsqueeze(0)


@dataclass
class _Tap:
    """The hooks of one pass and what they recorded (metadata on the host, stats on device).

    ``split`` turns a hooked tensor into its per-trial view (T, *shape). A module with a
    ``probe_position`` (layer, sublayer) is recorded there (propbench's residual blocks);
    otherwise each firing of a Linear/Conv starts a new layer, and sublayer is empty."""

    sites: dict[nn.Module, str]
    names: dict[nn.Module, str]
    split: Callable[..., torch.Tensor] = _one_trial
    pairs: bool = False
    layer: int = 0
    meta: list[tuple[int, Optional[int], str, str, str, int]] = field(default_factory=list)
    stats: Moments = field(default_factory=Moments)
    handles: list[Any] = field(default_factory=list)
    weight_hooked: set[nn.Module] = field(default_factory=set)
    token_dim: Optional[int] = None  # the tokens' axis of a block output: token_similarity

    def record(self, layer: int, sublayer: Optional[int], name: str, site: str, quantity: str,
               t: torch.Tensor) -> None:
        v = self.split(t, site == "weight")
        self.meta.append((layer, sublayer, name, site, quantity, v[0].numel()))
        self.stats.add(v, per_channel=site != "weight")
        if self.pairs and quantity == "activation" and site in ("pre", "post"):
            self.meta.append((layer, sublayer, name, site, "correlation", v.shape[1] // 2))
            self.stats.add_pairs(v)
        if self.token_dim is not None and quantity == "activation" and site == "block":
            similarity = token_similarity(v.flatten(0, 1), self.token_dim).view(v.shape[:2])
            self.meta.append((layer, sublayer, name, site, "token_similarity", v.shape[1]))
            self.stats.add(similarity, per_channel=False)

    def forward_hook(self, module: nn.Module, args: Any, output: Any) -> None:
        if not isinstance(output, torch.Tensor):
            return
        site, name = self.sites[module], self.names[module]
        position = getattr(module, "probe_position", None)
        if position is None:  # counted: each Linear/Conv firing starts a new layer
            if site == "pre":
                self.layer += 1
            position = (self.layer, None)
        if site == "attention":  # probabilities: their entropy, per row
            entropy = attention_entropy(self.split(output)).flatten(1)
            self.meta.append((*position, name, site, "attention_entropy", entropy.shape[1]))
            self.stats.add(entropy, per_channel=False)
            return
        if site == "pre":
            weight = getattr(module, "weight", None)
            if isinstance(weight, torch.Tensor) and weight.requires_grad and module not in self.weight_hooked:
                self.weight_hooked.add(module)
                self.handles.append(
                    weight.register_hook(partial(self.grad_hook, *position, name, "weight"))
                )
        self.record(*position, name, site, "activation", output)
        if output.requires_grad:
            output.register_hook(partial(self.grad_hook, *position, name, site))

    def grad_hook(self, layer: int, sublayer: Optional[int], name: str, site: str,
                  grad: torch.Tensor) -> None:
        self.record(layer, sublayer, name, site, "gradient", grad)

    def attach(self) -> None:
        for module in self.sites:
            self.handles.append(module.register_forward_hook(self.forward_hook))

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def _drop_grad(parameter: torch.Tensor) -> None:
    parameter.grad = None


def _measure(model: nn.Module, inputs: Any, modules: Optional[Iterable[nn.Module]],
             cotangent: Callable[[torch.Tensor], torch.Tensor], pairs: bool, keep_grads: bool,
             split: Callable[..., torch.Tensor] = _one_trial,
             token_dim: Optional[int] = None) -> tuple[list[tuple], np.ndarray]:
    """One forward+backward with the hooks; the records' metadata and their stats as a
    (records, trials, 5) array."""
    modules = default_modules(model) if modules is None else list(modules)
    names = {m: n for n, m in model.named_modules()}
    unknown = [m for m in modules if m not in names]
    if unknown:
        raise ValueError(f"probe: {type(unknown[0]).__name__} is not a submodule of the model")
    tap = _Tap({m: classify(m) or "post" for m in modules}, names, split, pairs,
               token_dim=token_dim)
    model.zero_grad(set_to_none=True)
    tap.attach()
    if not keep_grads:  # free each gradient as soon as it lands: no second copy of the weights
        tap.handles += [p.register_post_accumulate_grad_hook(_drop_grad)
                        for p in model.parameters() if p.requires_grad]
    try:
        output = model(*inputs) if isinstance(inputs, tuple) else model(inputs)
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"probe needs a model that returns a tensor, got {type(output).__name__}")
        if output.requires_grad:
            output.backward(cotangent(output).to(output.device))
    finally:
        tap.detach()
    return tap.meta, tap.stats.finish()  # the one transfer


def _normal(shape: Sequence[int], seed: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed), dtype=dtype)


def probe(
    model: nn.Module,
    inputs: Any,
    modules: Optional[Iterable[nn.Module]] = None,
    *,
    cotangent: Optional[torch.Tensor] = None,
    seed: int = 0,
    pairs: bool = False,
    keep_grads: bool = True,
    token_dim: Optional[int] = None,
) -> pd.DataFrame:
    """Run ``model(inputs)`` forward and a cotangent backward; return per-layer statistics.

    Works on any ``nn.Module`` that returns a tensor. ``modules`` are the modules to tap
    (default: :func:`default_modules`); each firing of a Linear/Conv starts a new ``layer``
    (1, 2, ...), and the normalization and activation modules after it belong to that layer.
    The cotangent defaults to standard normal noise drawn with ``seed``. Afterwards the
    parameters' ``.grad`` hold this backward's gradients -- unless ``keep_grads=False``,
    which frees each one as it lands (its statistics are taken just before), so that a deep
    net needs no second copy of its weights. With ``pairs=True`` the batch is
    read as pairs (rows 2i, 2i+1), and each pre- and post-activation also gets a
    ``correlation`` row: the mean over pairs of the cosine similarity of their outputs
    (``n`` = number of pairs, ``var`` its spread over the pairs). With ``token_dim`` (the
    tokens' axis of a block output, 1 for ``(batch, tokens, width)``) each ``block`` row
    also gets a ``token_similarity`` row: per example the mean cosine similarity between
    its distinct tokens (:func:`propbench.tokens.token_similarity`; 1 = collapsed), ``mean``
    over the batch, ``n`` = batch size. Attention probabilities (a module with
    ``probe_site = "attention"``, as propbench's transformer has) give one
    ``attention_entropy`` row each: the mean entropy of the attention rows in nats.

    Returns one row per (layer, site, quantity) with columns ``FRAME_COLUMNS``: ``var`` is
    the population variance over all elements (batch, units, positions), exact to float64
    round-off whatever the tensor's mean or magnitude (see :mod:`propbench.moments`).

    >>> import torch
    >>> from propbench import probe
    >>> net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU())
    >>> frame = probe(net, torch.randn(32, 64))
    >>> sorted(frame.site.unique())
    ['post', 'pre', 'weight']
    """
    def draw(output: torch.Tensor) -> torch.Tensor:
        return _normal(output.shape, seed, output.dtype) if cotangent is None else cotangent

    meta, stats = _measure(model, inputs, modules, draw, pairs, keep_grads, token_dim=token_dim)
    return _frame(meta, stats[:, 0])


def probe_trials(model: Any, inputs: Sequence[torch.Tensor], *, seeds: Sequence[int],
                 pairs: bool = False, keep_grads: bool = True,
                 token_dim: Optional[int] = None) -> pd.DataFrame:
    """Probe the T networks of a :class:`propbench.stacked.TrialStack` in one pass.

    ``inputs[t]`` and the cotangent drawn with ``seeds[t]`` are what :func:`probe` (with
    ``seed=seeds[t]``) would give trial t's own network; the result is the T frames
    :func:`probe` would return, with a leading ``trial`` column 0..T-1, equal up to
    floating-point summation order. T = 1 is a single network. ``token_dim`` defaults to
    the model's own (the transformer's: 1).
    """
    if len(inputs) != model.trials or len(seeds) != model.trials:
        raise ValueError(f"probe_trials: {model.trials} trials need as many inputs and seeds")
    merged_inputs = model.merge([x.to(next(model.parameters()).device) for x in inputs])

    def draw(output: torch.Tensor) -> torch.Tensor:
        shape = model.split(output).shape[1:]
        return model.merge([_normal(shape, seed, output.dtype) for seed in seeds])

    if token_dim is None:
        token_dim = getattr(model, "token_dim", None)
    meta, stats = _measure(model, merged_inputs, model.probed_modules(), draw, pairs, keep_grads,
                           model.split, token_dim)
    frames = [_frame(meta, stats[:, t]) for t in range(model.trials)]
    for t, frame in enumerate(frames):
        frame.insert(0, "trial", t)
    return pd.concat(frames, ignore_index=True)


def _frame(meta: list[tuple], stats: np.ndarray) -> pd.DataFrame:
    frame = pd.DataFrame(meta, columns=["layer", "sublayer", "module", "site", "quantity", "n"])
    frame["sublayer"] = frame["sublayer"].astype("Int64")  # empty outside residual branches
    mean, var = stats[:, 0], stats[:, 1]
    with np.errstate(over="ignore", invalid="ignore"):
        frame["mean"], frame["var"], frame["second_moment"] = mean, var, var + mean * mean
    frame["nonfinite"] = stats[:, 2].astype(np.int64)
    frame["channel_mean_sq"], frame["channel_var"] = stats[:, 3], stats[:, 4]
    site_rank = frame["site"].map({s: i for i, s in enumerate(SITES)})
    quantity_rank = frame["quantity"].map({q: i for i, q in enumerate(QUANTITIES)})
    sublayer_rank = frame["sublayer"].fillna(np.iinfo(np.int64).max).to_numpy()  # block rows last
    order = np.lexsort((site_rank, sublayer_rank, frame["layer"], quantity_rank))  # stable
    return frame.iloc[order][FRAME_COLUMNS].reset_index(drop=True)
