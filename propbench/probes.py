"""Hooks that measure per-layer activation and gradient statistics in one forward+backward.

Forward hooks on the tapped modules see each block's pre-activation (Linear/Conv output),
normalized output (BatchNorm etc.) and post-activation; a tensor hook
(``Tensor.register_hook``) on each of those outputs sees the gradient flowing back into it,
and one on each weight sees the weight's gradient. Tensor hooks, unlike full backward module
hooks, work with in-place activations. With blocks (:mod:`propbench.blocks`), hooks on each
block also see its output, the stream between blocks, and file the rows inside it under its
index; which modules are tapped, and as what, is :mod:`propbench.sites`' rule, and calling a
model written elsewhere is :mod:`propbench.external`.

Every tensor is seen as ``(T, *shape)``: one slice per trial (T = 1 for a single network,
T > 1 for the stacked trials of :mod:`propbench.stacked`). Each hook hands its tensor to
:class:`propbench.moments.Moments`, which reduces each slice on the device -- mean and
variance exact whatever the tensor's mean or magnitude (to 1e-6 relative for a float32
tensor summed in float32, to float64 round-off otherwise), the number of
non-finite elements and, for (N, C, H, W) tensors, the channel statistics of
signal-propagation plots -- and keeps only those few numbers. No hook keeps an activation
or syncs with the device; one transfer after the backward pass brings everything to the
host. The network runs forward and backward once, whatever its signal does.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from propbench.blocks import AUTO, block_summary, select_blocks
from propbench.errors import ProbeError, ProbeWarning
from propbench.external import (OutputKey, call, check_model, first_tensor, original, pick_output,
                                unchanged)
from propbench.frames import typed
from propbench.moments import Moments
from propbench.sites import check_sites, recognised
from propbench.sites import classify as _classify
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
    blocks: dict[nn.Module, int] = field(default_factory=dict)  # block -> its index 1..n
    inside: list[int] = field(default_factory=list)  # the blocks running now, innermost last
    calls: dict[nn.Module, int] = field(default_factory=dict)  # firings so far, per module
    stream: Optional[tuple[str, torch.Tensor]] = None  # the last block output (a reference)
    meta: list[tuple[int, Optional[int], str, str, str, int]] = field(default_factory=list)
    stats: Moments = field(default_factory=Moments)
    handles: list[Any] = field(default_factory=list)
    weight_hooked: set[nn.Module] = field(default_factory=set)
    token_dim: Optional[int] = None  # the tokens' axis of a block output: token_similarity

    def record(self, layer: int, sublayer: Optional[int], name: str, site: str, quantity: str,
               t: torch.Tensor) -> None:
        v = self.split(t, site == "weight")
        self.meta.append((layer, sublayer, name, site, quantity, v.numel() // v.shape[0]))
        self.stats.add(v, per_channel=site != "weight")
        if self.pairs and quantity == "activation" and site in ("pre", "post"):
            self.meta.append((layer, sublayer, name, site, "correlation", v.shape[1] // 2))
            self.stats.add_pairs(v)
        if self.token_dim is not None and quantity == "activation" and site == "block":
            similarity = token_similarity(v.flatten(0, 1), self.token_dim).view(v.shape[:2])
            self.meta.append((layer, sublayer, name, site, "token_similarity", v.shape[1]))
            self.stats.add(similarity, per_channel=False)

    def _name(self, module: nn.Module) -> str:
        """The module's path; a module called again in the same pass (a torchvision block's
        one ``relu``) is ``path#2``, ``path#3``, ..."""
        self.calls[module] = count = self.calls.get(module, 0) + 1
        return self.names[module] if count == 1 else f"{self.names[module]}#{count}"

    def forward_hook(self, module: nn.Module, args: Any, output: Any) -> None:
        output = first_tensor(output)
        if output is None:
            return
        site, name = self.sites[module], self._name(module)
        position = getattr(module, "probe_position", None)  # (layer, sublayer): residual models
        if position is None and self.blocks:  # depth is the block it runs in; 0 outside all
            position = (self.inside[-1] if self.inside else 0, None)
        elif position is None:  # depth is the number of projections so far
            self.layer += site == "pre"
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

    def block_enter(self, module: nn.Module, args: Any) -> None:
        self.inside.append(self.blocks[module])

    def block_exit(self, module: nn.Module, args: Any, output: Any) -> None:
        """The block's output (its first tensor): the stream between blocks."""
        self.inside.pop()
        stream = first_tensor(output)
        if stream is None:
            return
        layer, name = self.blocks[module], self._name(module)
        self.stream = (name, stream)
        self.record(layer, None, name, "block", "activation", stream)
        if stream.requires_grad:
            stream.register_hook(partial(self.grad_hook, layer, None, name, "block"))

    def grad_hook(self, layer: int, sublayer: Optional[int], name: str, site: str,
                  grad: torch.Tensor) -> None:
        self.record(layer, sublayer, name, site, "gradient", grad)

    def attach(self) -> None:
        for module in self.sites:
            self.handles.append(module.register_forward_hook(self.forward_hook))
        for block in self.blocks:  # after the leaves' hooks: a leaf block's rows are its own
            self.handles.append(block.register_forward_pre_hook(self.block_enter))
            self.handles.append(block.register_forward_hook(self.block_exit))

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def _drop_grad(parameter: torch.Tensor) -> None:
    parameter.grad = None


def _measure(model: nn.Module, inputs: Any, modules: Optional[Iterable[nn.Module]],
             cotangent: Callable[[torch.Tensor], torch.Tensor], pairs: bool, keep_grads: bool,
             split: Callable[..., torch.Tensor] = _one_trial,
             blocks: Sequence[tuple[str, nn.Module]] = (), output_key: OutputKey = None,
             sites: Optional[dict] = None, backward_from: str = "output",
             notes: Optional[dict[str, Any]] = None,
             token_dim: Optional[int] = None) -> tuple[list[tuple], np.ndarray]:
    """One forward+backward with the hooks; the records' metadata and their stats as a
    (records, trials, 5) array. ``notes`` (if given) receives the output's name and the
    tapped modules that never fired."""
    names = {m: n for n, m in model.named_modules()}
    found = recognised(model, sites) if modules is None else None
    modules = list(found) if modules is None else list(modules)
    unknown = [m for m in modules if m not in names]
    if unknown:
        raise ProbeError(f"probe: {type(unknown[0]).__name__} is not a submodule of the model")
    tap = _Tap(found or {m: _classify(m, names[m], sites) or "post" for m in modules}, names,
               split, pairs, blocks={m: i for i, (_, m) in enumerate(blocks, 1)},
               token_dim=token_dim)
    model.zero_grad(set_to_none=True)
    tap.attach()
    if not keep_grads:  # free each gradient as soon as it lands: no second copy of the weights
        tap.handles += [p.register_post_accumulate_grad_hook(_drop_grad)
                        for p in model.parameters() if p.requires_grad]
    try:
        output, output_name = pick_output(call(model, inputs), output_key)
        if backward_from == "last_block":  # the head left out of the backward pass too
            if tap.stream is None:
                raise ProbeError("backward_from='last_block': the model has no block that ran")
            output_name, output = f"{tap.stream[0]} (the last block's output)", tap.stream[1]
        tap.stream = None
        if output.requires_grad:
            output.backward(cotangent(output).to(output.device))
    finally:
        tap.detach()
    if notes is not None:
        notes["output"] = output_name
        notes["silent"] = [names[m] for m in [*tap.sites, *tap.blocks] if m not in tap.calls]
    return tap.meta, tap.stats.finish()  # the one transfer


def _normal(shape: Sequence[int], seed: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed), dtype=dtype)


def probe(
    model: nn.Module,
    inputs: Any,
    modules: Optional[Iterable[nn.Module]] = None,
    *,
    blocks: Any = None,
    output: OutputKey = None,
    sites: Optional[dict[Any, Optional[str]]] = None,
    backward_from: str = "output",
    cotangent: Optional[torch.Tensor] = None,
    seed: int = 0,
    pairs: bool = False,
    keep_grads: bool = True,
    token_dim: Optional[int] = None,
) -> pd.DataFrame:
    """Run ``model(inputs)`` forward and a cotangent backward; return per-layer statistics.

    Works on any ``nn.Module``. ``inputs``: a tensor, a tuple (positional arguments) or a
    dict (keyword arguments, e.g. a tokenizer's ``input_ids``/``attention_mask``). The
    tensor backpropagated is the output, or picked from a dict, ``ModelOutput`` or tuple by
    ``output`` (a key, an index or a callable; default: the first tensor, e.g.
    ``last_hidden_state`` or ``logits``); ``frame.attrs["output"]`` names it. With
    ``backward_from="last_block"`` the cotangent enters at the last block's output instead,
    so that the head does not shape the gradient either (a ViT's classifier reads one token,
    and from its output the other tokens get no gradient at the last block).

    ``modules`` are the modules to tap (default: every module :mod:`propbench.sites`
    recognises -- Linear/Conv/``Conv1D`` -> ``pre``, normalizations -> ``norm``,
    activations of torch, ``transformers`` and timm -> ``post``; ``sites={class_or_glob:
    site}`` classifies anything else, or leaves it out with None).

    ``blocks`` makes depth the block: ``"auto"`` (the default when ``modules`` is not given:
    the largest set of repeated blocks, :func:`propbench.blocks.find_blocks`), a glob
    (``"h.*"``, ``"encoder.layer.*"``), a list of paths or modules, or False. Each block's
    output (the stream between blocks; its first tensor) is a ``block`` row for the
    activation and its gradient, ``layer`` = the block's index 1..n; the rows of modules
    inside a block carry that block's index, so parallel branches (q/k/v, shortcuts) share
    their block's layer; rows outside every block (embedding, stem, head) get layer 0.
    A propbench model (one with ``probed_modules()``) names its own sites and blocks.
    Without blocks each firing of a projection starts a new ``layer`` (1, 2, ...), and the
    normalization and activation modules after it belong to that layer. A module called
    more than once per pass is recorded once per call: ``path``, ``path#2``, ...

    The model is left as it was: training modes, ``requires_grad`` flags and buffers
    (BatchNorm running statistics) are restored. A ``torch.compile``'d model is probed
    through its original module; a model on the meta device or without a floating-point
    parameter raises :class:`propbench.errors.ProbeError`. A :class:`ProbeWarning` says when
    nothing was recognised, when a tapped module or block never ran, or when no activation
    was recorded.

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

    Returns one row per (layer, module, site, quantity) with columns ``FRAME_COLUMNS``:
    ``var`` is the population variance over all elements (batch, units, positions), exact
    whatever the tensor's mean or magnitude: to 1e-6 relative where a float32 CPU tensor is
    summed in float32, to float64 round-off otherwise (see :mod:`propbench.moments`).

    >>> import torch
    >>> from propbench import probe
    >>> net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU())
    >>> frame = probe(net, torch.randn(32, 64))
    >>> sorted(frame.site.unique())
    ['post', 'pre', 'weight']
    """
    model = original(model)
    check_model(model)
    sites = check_sites(sites)
    if backward_from not in ("output", "last_block"):
        raise ProbeError(f"backward_from={backward_from!r}: choose 'output' or 'last_block'")
    if modules is None and blocks is None and hasattr(model, "probed_modules"):
        # a propbench model names its own sites, its blocks and branches included
        modules, blocks = model.probed_modules(), False
    chosen = select_blocks(model, AUTO if blocks is None and modules is None else blocks)
    if backward_from == "last_block" and not chosen:
        raise ProbeError("backward_from='last_block' needs blocks: none were found or named")

    def draw(out: torch.Tensor) -> torch.Tensor:
        return _normal(out.shape, seed, out.dtype) if cotangent is None else cotangent

    notes: dict[str, Any] = {}
    with unchanged(model):
        meta, stats = _measure(model, inputs, modules, draw, pairs, keep_grads, blocks=chosen,
                               output_key=output, sites=sites, backward_from=backward_from,
                               notes=notes, token_dim=token_dim)
    frame = _frame(meta, stats[:, 0])
    frame.attrs.update(output=notes["output"], blocks=block_summary(chosen))
    for warning in _warnings(meta, notes["silent"]):
        warnings.warn(warning, ProbeWarning, stacklevel=2)
    return frame


def _warnings(meta: list[tuple], silent: list[str]) -> list[str]:
    """What the records lack that a reader would expect (one line each)."""
    out = []
    sites, quantities = {m[3] for m in meta}, {m[4] for m in meta}
    if not sites & {"pre", "block"}:
        out.append("probe: no layer recognised (no Linear/Conv/Conv1D output, no block); "
                   "classify modules with sites={class_or_glob: 'pre'|'norm'|'post'}")
    if silent:
        more = f" and {len(silent) - 3} more" if len(silent) > 3 else ""
        out.append(f"probe: {len(silent)} tapped module(s) never ran: {', '.join(silent[:3])}{more}")
    if meta and "activation" not in quantities:
        out.append("probe: no activation rows")
    return out


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
                           model.split, token_dim=token_dim)
    frames = [_frame(meta, stats[:, t]) for t in range(model.trials)]
    for t, frame in enumerate(frames):
        frame.insert(0, "trial", t)
    return typed(pd.concat(frames, ignore_index=True))


_SITE_RANK = {s: i for i, s in enumerate(SITES)}
_QUANTITY_RANK = {q: i for i, q in enumerate(QUANTITIES)}


def _frame(meta: list[tuple], stats: np.ndarray) -> pd.DataFrame:
    """The records as rows in the order quantity, layer, sublayer (empty last), site
    (firing order breaks ties)."""
    layer, sublayer, module, site, quantity, n = (
        (list(column) for column in zip(*meta)) if meta else [[] for _ in range(6)])
    missing = np.iinfo(np.int64).max  # block and branch rows after the branch's layers
    order = np.lexsort((np.array([_SITE_RANK.get(s, len(SITES)) for s in site], dtype=np.int64),
                        np.array([missing if k is None else k for k in sublayer], dtype=np.int64),
                        np.array(layer, dtype=np.int64),
                        np.array([_QUANTITY_RANK[q] for q in quantity], dtype=np.int64)))
    mean, var = stats[order, 0], stats[order, 1]
    with np.errstate(over="ignore", invalid="ignore"):
        second_moment = var + mean * mean
    columns = {
        "layer": np.array(layer, dtype=np.int64)[order],
        "sublayer": pd.array([sublayer[i] for i in order], dtype="Int64"),  # empty outside branches
        "module": pd.Categorical(np.array(module, dtype=object)[order]),
        "site": pd.Categorical(np.array(site, dtype=object)[order]),
        "quantity": pd.Categorical(np.array(quantity, dtype=object)[order]),
        "mean": mean, "var": var, "second_moment": second_moment,
        "n": np.array(n, dtype=np.int64)[order],
        "nonfinite": stats[order, 2].astype(np.int64),
        "channel_mean_sq": stats[order, 3], "channel_var": stats[order, 4],
    }
    return pd.DataFrame(columns, columns=FRAME_COLUMNS)  # already the dtypes of frames.py
