"""Hooks that measure per-layer activation and gradient statistics in one forward+backward.

Forward hooks on the tapped modules see each block's pre-activation (Linear/Conv output),
normalized output (BatchNorm etc.) and post-activation; a tensor hook
(``Tensor.register_hook``) on each of those outputs sees the gradient flowing back into it,
and one on each weight sees the weight's gradient. Tensor hooks, unlike full backward module
hooks, work with in-place activations.

Each hook reduces its tensor on the device to five numbers -- sum, sum of squares, number
of non-finite elements and, for (N, C, H, W) tensors, the channel averages of the squared
per-channel mean and of the per-channel variance (the signal-propagation-plot statistics of
Brock et al., 2021, "Characterizing signal propagation to close the performance gap in
unnormalized ResNets") -- and keeps that small tensor; no hook stores an activation or
syncs with the host. One transfer after the backward pass brings everything to the host,
where ``mean = sum / n``, ``second_moment = sumsq / n`` and ``var = second_moment - mean^2``
are formed in float64.

Counting non-finite elements costs more than the two sums, so the first pass skips it: if
every sum of squares is finite, no element can be inf or NaN. Only when one is not (the
network overflowed, or its float32 squares did), or when a mean square is so small that
squares fall into the subnormal range and lose their precision (below 1e-30), is the
deterministic pass repeated in a careful mode that counts and reduces in float64: the
variance then stays right up to the layer where elements themselves overflow or underflow.
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

SITES = ("pre", "norm", "post", "weight")
QUANTITIES = ("activation", "gradient", "correlation")
FRAME_COLUMNS = [
    "layer", "module", "site", "quantity", "mean", "var", "second_moment", "n", "nonfinite",
    "channel_mean_sq", "channel_var",
]
_LOW_PRECISION = (torch.float16, torch.bfloat16)
# Below this mean square, float32 squares (< 1.2e-38 for elements < 1e-19) turn subnormal
# and a float32 sum of squares loses its digits: such passes are repeated in float64.
TINY_MEAN_SQUARE = 1e-30


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
    """Every leaf module of ``model`` that :func:`classify` gives a site."""
    return [
        m for m in model.modules() if not list(m.children()) and classify(m) is not None
    ]


def pair_stats(v: torch.Tensor) -> torch.Tensor:
    """Per trial, [sum, sum of squares, 0, nan, nan] of the cosine similarities of rows 2i
    and 2i+1 of ``v`` = (trials, batch, ...): a (trials, 5) tensor."""
    v = v.detach()
    v = v.reshape(v.shape[0], v.shape[1] // 2, 2, -1)  # a view where v is contiguous
    if v.dtype in _LOW_PRECISION:
        v = v.float()
    a, b = v[:, :, 0], v[:, :, 1]
    cosine = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
    zero = cosine.new_zeros(cosine.shape[0])
    nan = torch.full_like(zero, float("nan"))
    return torch.stack([cosine.sum(1), cosine.square().sum(1), zero, nan, nan], dim=1)


def tensor_stats(t: torch.Tensor, per_channel: bool, count_nonfinite: bool,
                 trials: bool = False) -> torch.Tensor:
    """[sum, sumsq, nonfinite, channel_mean_sq, channel_var] of ``t``, on t's device: a (5,)
    tensor; with ``trials=True``, ``t`` is a per-trial view (trials, *shape) and the result
    is (trials, 5), one row per trial."""
    t = t.detach()
    if count_nonfinite:  # the careful pass: float64 keeps huge finite values' squares finite
        t = t.double()
    elif t.dtype in _LOW_PRECISION:
        t = t.float()
    lead = t.shape[:1] if trials else ()  # () or (trials,)
    if count_nonfinite:
        nonfinite = (~torch.isfinite(t)).flatten(len(lead)).sum(-1).to(t.dtype)
    else:
        nonfinite = t.new_zeros(lead)
    if per_channel and t.dim() == 4 + len(lead):  # (N, C, H, W) per trial
        dims = tuple(d + len(lead) for d in (0, 2, 3))
        per_channel_count = t[0].numel() // t.shape[2] if lead else t.numel() // t.shape[1]
        channel_sum = t.sum(dim=dims)
        channel_sumsq = t.square().sum(dim=dims)
        channel_mean = channel_sum / per_channel_count
        channel_var = channel_sumsq / per_channel_count - channel_mean.square()
        return torch.stack([
            channel_sum.sum(-1), channel_sumsq.sum(-1), nonfinite,
            channel_mean.square().mean(-1), channel_var.mean(-1),
        ], dim=-1)
    nan = torch.full_like(nonfinite, float("nan"))
    if lead:
        flat = t.reshape(lead[0], -1)
        return torch.stack([flat.sum(1), torch.linalg.vecdot(flat, flat), nonfinite, nan, nan], dim=1)
    flat = t.reshape(-1)  # one dot product: no temporary the size of the tensor
    return torch.stack([flat.sum(), torch.dot(flat, flat), nonfinite, nan, nan])


@dataclass
class _Tap:
    """The hooks of one pass and what they recorded (metadata on the host, stats on device)."""

    sites: dict[nn.Module, str]
    names: dict[nn.Module, str]
    count_nonfinite: bool
    pairs: bool = False
    # stacked trials: tensor -> per-trial view (T, *shape); None: one network
    split: Optional[Callable[..., torch.Tensor]] = None
    layer: int = 0
    meta: list[tuple[int, str, str, str, int]] = field(default_factory=list)
    stats: list[torch.Tensor] = field(default_factory=list)
    handles: list[Any] = field(default_factory=list)
    weight_hooked: set[nn.Module] = field(default_factory=set)

    def record(self, layer: int, name: str, site: str, quantity: str, t: torch.Tensor) -> None:
        stacked = self.split is not None
        v = self.split(t, site == "weight") if stacked else t
        self.meta.append((layer, name, site, quantity, v.numel() // v.shape[0] if stacked else t.numel()))
        self.stats.append(tensor_stats(v, site != "weight", self.count_nonfinite, stacked))
        if self.pairs and quantity == "activation" and site in ("pre", "post"):
            pairs = pair_stats(v if stacked else v.unsqueeze(0))
            batch = v.shape[1] if stacked else v.shape[0]
            self.meta.append((layer, name, site, "correlation", batch // 2))
            # float64 in the careful pass, like the record before it
            self.stats.append((pairs if stacked else pairs[0]).to(self.stats[-1].dtype))

    def forward_hook(self, module: nn.Module, args: Any, output: Any) -> None:
        if not isinstance(output, torch.Tensor):
            return
        site, name = self.sites[module], self.names[module]
        if site == "pre":
            self.layer += 1
            weight = getattr(module, "weight", None)
            if isinstance(weight, torch.Tensor) and weight.requires_grad and module not in self.weight_hooked:
                self.weight_hooked.add(module)
                self.handles.append(
                    weight.register_hook(partial(self.grad_hook, self.layer, name, "weight"))
                )
        self.record(self.layer, name, site, "activation", output)
        if output.requires_grad:
            output.register_hook(partial(self.grad_hook, self.layer, name, site))

    def grad_hook(self, layer: int, name: str, site: str, grad: torch.Tensor) -> None:
        self.record(layer, name, site, "gradient", grad)

    def attach(self) -> None:
        for module in self.sites:
            self.handles.append(module.register_forward_hook(self.forward_hook))

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def _drop_grad(parameter: torch.Tensor) -> None:
    parameter.grad = None


def _pass(model: nn.Module, inputs: Any, tap: _Tap, cotangent: Callable[[torch.Tensor], torch.Tensor],
          keep_grads: bool = True) -> np.ndarray:
    """One forward+backward with ``tap``'s hooks; its stats as (records, trials, 5)."""
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
    if not tap.stats:
        return np.zeros((0, 1, 5))
    stats = torch.stack(tap.stats).to("cpu", torch.float64).numpy()  # the one sync
    return stats.reshape(len(stats), -1, 5)  # (records, trials, 5)


def _normal(shape: Sequence[int], seed: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _measure(model: nn.Module, inputs: Any, modules: Optional[Iterable[nn.Module]],
             cotangent: Callable[[torch.Tensor], torch.Tensor], pairs: bool, keep_grads: bool,
             split: Optional[Callable[..., torch.Tensor]] = None) -> tuple[list[tuple], np.ndarray]:
    """The quick pass, and the careful one where the quick one lost precision."""
    modules = default_modules(model) if modules is None else list(modules)
    names = {m: n for n, m in model.named_modules()}
    sites = {m: classify(m) or "post" for m in modules}
    unknown = [m for m in modules if m not in names]
    if unknown:
        raise ValueError(f"probe: {type(unknown[0]).__name__} is not a submodule of the model")

    def run_pass(count_nonfinite: bool) -> tuple[_Tap, np.ndarray]:
        tap = _Tap({m: sites[m] for m in modules}, names, count_nonfinite, pairs, split)
        return tap, _pass(model, inputs, tap, cotangent, keep_grads)

    tap, stats = run_pass(count_nonfinite=False)
    mean_square = stats[:, :, 1] / np.array([m[4] for m in tap.meta], dtype=np.float64)[:, None]
    with np.errstate(invalid="ignore"):
        tiny = (mean_square > 0) & (mean_square < TINY_MEAN_SQUARE)
    if not np.isfinite(stats[:, :, 1]).all() or tiny.any():
        tap, stats = run_pass(count_nonfinite=True)
    return tap.meta, stats


def probe(
    model: nn.Module,
    inputs: Any,
    modules: Optional[Iterable[nn.Module]] = None,
    *,
    cotangent: Optional[torch.Tensor] = None,
    seed: int = 0,
    pairs: bool = False,
    keep_grads: bool = True,
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
    (``n`` = number of pairs, ``var`` its spread over the pairs).

    Returns one row per (layer, site, quantity) with columns ``FRAME_COLUMNS``: ``var`` is
    the population variance over all elements (batch, units, positions).

    >>> import torch
    >>> from propbench import probe
    >>> net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU())
    >>> frame = probe(net, torch.randn(32, 64))
    >>> sorted(frame.site.unique())
    ['post', 'pre', 'weight']
    """
    def draw(output: torch.Tensor) -> torch.Tensor:
        return _normal(output.shape, seed, output.dtype) if cotangent is None else cotangent

    meta, stats = _measure(model, inputs, modules, draw, pairs, keep_grads)
    return _frame(meta, stats[:, 0])


def probe_trials(model: Any, inputs: Sequence[torch.Tensor], seeds: Sequence[int], *,
                 pairs: bool = False, keep_grads: bool = True) -> pd.DataFrame:
    """Probe the T networks of a :class:`propbench.stacked.StackedStack` in one pass.

    ``inputs[t]`` and the cotangent drawn with ``seeds[t]`` are what :func:`probe` would give
    trial t's own network; the result is the T frames :func:`probe` would return, with a
    leading ``trial`` column 0..T-1, equal up to floating-point summation order.
    """
    if len(inputs) != model.trials or len(seeds) != model.trials:
        raise ValueError(f"probe_trials: {model.trials} trials need as many inputs and seeds")
    stacked_inputs = model.stack([x.to(next(model.parameters()).device) for x in inputs])

    def draw(output: torch.Tensor) -> torch.Tensor:
        shape = model.split(output).shape[1:]
        return model.stack([_normal(shape, seed, output.dtype) for seed in seeds])

    meta, stats = _measure(model, stacked_inputs, model.probed_modules(), draw, pairs, keep_grads,
                           model.split)
    frames = [_frame(meta, stats[:, t]) for t in range(model.trials)]
    for t, frame in enumerate(frames):
        frame.insert(0, "trial", t)
    return pd.concat(frames, ignore_index=True)


def _frame(meta: list[tuple], stats: np.ndarray) -> pd.DataFrame:
    frame = pd.DataFrame(meta, columns=["layer", "module", "site", "quantity", "n"])
    n = frame["n"].to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        mean = stats[:, 0] / n
        second = stats[:, 1] / n
        var = np.maximum(second - mean * mean, 0.0)  # clips round-off below zero; keeps NaN
    frame["mean"], frame["var"], frame["second_moment"] = mean, var, second
    frame["nonfinite"] = stats[:, 2].astype(np.int64)
    frame["channel_mean_sq"], frame["channel_var"] = stats[:, 3], stats[:, 4]
    site_rank = frame["site"].map({s: i for i, s in enumerate(SITES)})
    quantity_rank = frame["quantity"].map({q: i for i, q in enumerate(QUANTITIES)})
    order = np.lexsort((site_rank, frame["layer"], quantity_rank))  # stable: firing order ties
    return frame.iloc[order][FRAME_COLUMNS].reset_index(drop=True)
