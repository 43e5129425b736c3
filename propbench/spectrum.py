"""The singular values of the input-output Jacobian, layer by layer (dynamical isometry).

For one example x and a layer l (the output y_l of a chosen module, flattened to m_l
units), J_l = dy_l/dx is an m_l x n matrix (n = the input's size). Its k = min(m_l, n)
singular values s give lambda = s^2, the eigenvalues of J_l J_l^T (Pennington, Schoenholz &
Ganguli 2017, "Resurrecting the sigmoid in deep learning through dynamical isometry"). Per
(example, layer) we report ``mean_sq`` = mean of lambda (= ||J_l||_F^2 / k), ``var_sq`` =
its population variance over the k values, ``max_s`` and ``min_s``.

Two methods, named in the ``method`` column:

- ``exact``: the full Jacobian by forward-mode AD (``torch.func.jvp``, vectorized with
  ``vmap``), one tangent per input unit (the n basis vectors, in chunks that fit), every
  requested layer from the same pass; then
  ``torch.linalg.svdvals`` in float64. Memory: n * sum_l m_l numbers, plus one float64 copy.
- ``estimate``, where that does not fit: stochastic Lanczos quadrature on A_l = J_l^T J_l,
  whose matrix-vector product is a forward-mode pass (J v) and a backward pass (J^T u).
  From ``probes`` random unit start vectors v, ``steps`` Lanczos steps each give
  v^T A v and v^T A^2 v exactly (Gauss quadrature on the tridiagonal matrix), so
  ``mean_sq`` is Hutchinson's estimator n/k * mean_p v^T A v and ``var_sq`` comes from
  n/k * mean_p v^T A^2 v; ``max_s`` is the square root of the largest Ritz value (a lower
  bound that converges from below); ``min_s`` is not estimated (NaN). For v uniform on the
  sphere, the relative standard error of ``mean_sq`` is sqrt(2 r / (n p)) with
  r = var_sq / mean_sq^2 (and n - k zero eigenvalues counted in r when m_l < n).

The model must treat the examples of a batch independently (no BatchNorm in training mode):
each example's Jacobian is taken on that example alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from propbench.config import default_layers
from propbench.devices import available_bytes, exact_bytes

COLUMNS = ["example", "layer", "module", "mean_sq", "var_sq", "max_s", "min_s", "n_values",
           "method"]
METHODS = ("auto", "exact", "estimate")


@dataclass
class Spectrum:
    """What :func:`jacobian_spectrum` returns: one row per (example, layer) (``COLUMNS``),
    and for the exact method every singular value (``values[layer]``: examples x k)."""

    frame: pd.DataFrame
    values: dict[int, np.ndarray] = field(default_factory=dict)


class _Stop(Exception):
    """Raised by the hook once the last requested layer has fired: nothing after it runs."""


class _Capture:
    """Forward hooks that keep the outputs of the requested modules (flattened per row)
    and stop the forward pass after the last of them."""

    def __init__(self, modules: Sequence[nn.Module]):
        self.modules = list(modules)
        self.outputs: dict[int, torch.Tensor] = {}
        self.handles = [m.register_forward_hook(self._hook) for m in dict.fromkeys(self.modules)]

    def _hook(self, module: nn.Module, args: Any, output: Any) -> None:
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"jacobian_spectrum: {type(module).__name__} returns no tensor")
        for i, m in enumerate(self.modules):
            if m is module and i not in self.outputs:
                self.outputs[i] = output.flatten(1)
                break
        if len(self.outputs) == len(self.modules):
            raise _Stop

    def run(self, model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
        self.outputs = {}
        try:
            model(x)
        except _Stop:
            pass
        missing = [i for i in range(len(self.modules)) if i not in self.outputs]
        if missing:
            raise ValueError(f"jacobian_spectrum: module {missing[0]} of the layers never ran")
        return [self.outputs[i] for i in range(len(self.modules))]

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def _check_independent(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training:
            raise ValueError("jacobian_spectrum: BatchNorm in training mode mixes the examples "
                             "of a batch, so one example's Jacobian is not defined by it alone")


def _layers_of(capture: _Capture, model: nn.Module) -> Any:
    """The chosen layers' outputs as a function of one example (no batch axis)."""
    def f(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(y.squeeze(0) for y in capture.run(model, x.unsqueeze(0)))

    return f


def _tangents(capture: _Capture, model: nn.Module, x: torch.Tensor,
              v: torch.Tensor) -> list[torch.Tensor]:
    """J_l v for every layer and every row of v: forward-mode AD (``torch.func.jvp``)
    vectorized over the rows, so the primal pass runs once and only the tangents are
    batched."""
    f = _layers_of(capture, model)
    with torch.no_grad():
        return list(torch.func.vmap(lambda t: torch.func.jvp(f, (x,), (t,))[1])(v))


def _vjp(capture: _Capture, model: nn.Module, x: torch.Tensor,
         cotangents: list[torch.Tensor]) -> torch.Tensor:
    """sum_l J_l^T u_l for every row of the u_l (rows x m_l): one reverse pass, vectorized
    over the rows."""
    with torch.no_grad():  # no graph for the weights; torch.func differentiates x anyway
        _, pullback = torch.func.vjp(_layers_of(capture, model), x)
        return torch.func.vmap(lambda *u: pullback(tuple(u))[0])(*cotangents).flatten(1)


def _exact(capture: _Capture, model: nn.Module, x: torch.Tensor, n: int,
           sizes: Sequence[int], budget: int) -> list[np.ndarray]:
    """Every singular value of each J_l: tangents = the n basis vectors, in chunks."""
    itemsize = x.element_size()
    per_row = 4 * itemsize * max(sizes)  # a tangent activation and temporaries
    chunk = int(max(1, min(n, budget // max(per_row, 1))))
    columns: list[list[torch.Tensor]] = [[] for _ in sizes]
    eye = torch.eye(n, dtype=x.dtype, device=x.device)
    for start in range(0, n, chunk):
        basis = eye[start:start + chunk].reshape(-1, *x.shape)
        for l, t in enumerate(_tangents(capture, model, x, basis)):
            columns[l].append(t)  # rows: J_l e_i, i.e. J_l^T
    values = []
    for cols in columns:
        jt = torch.cat(cols).to(torch.float64)
        if jt.shape[0] < jt.shape[1]:  # LAPACK is many times slower on a wide matrix
            jt = jt.T
        values.append(torch.linalg.svdvals(jt).cpu().numpy())
        del jt
    return values


def _lanczos(capture: _Capture, model: nn.Module, x: torch.Tensor, n: int, layers: int,
             probes: int, steps: int, generator: torch.Generator) -> tuple[np.ndarray, ...]:
    """Lanczos with full reorthogonalization on A_l = J_l^T J_l for ``probes`` random unit
    start vectors per layer, all (layer, probe) rows at once. Returns per row v^T A v,
    v^T A^2 v (Gauss quadrature on the tridiagonal matrix, exact for these degrees) and the
    largest Ritz value."""
    rows = layers * probes
    layer_of = torch.arange(rows, device=x.device) // probes
    steps = min(steps, n)
    start = torch.randn(rows, n, generator=generator, dtype=torch.float64).to(x.device)
    v = start / start.norm(dim=1, keepdim=True)
    basis = [v]
    alpha = torch.zeros(rows, steps, dtype=torch.float64)
    beta = torch.zeros(rows, steps, dtype=torch.float64)
    done = torch.zeros(rows, dtype=torch.bool)
    for j in range(steps):
        tangents = _tangents(capture, model, x, v.to(x.dtype).reshape(rows, *x.shape))
        cotangents = [torch.where((layer_of == l)[:, None], t, torch.zeros_like(t))
                      for l, t in enumerate(tangents)]
        w = _vjp(capture, model, x, cotangents).to(torch.float64)
        a = (w * v).sum(1)
        alpha[:, j] = a.cpu()
        for _ in range(2):  # full reorthogonalization; classical Gram-Schmidt twice is enough
            for q in basis:
                w = w - (w * q).sum(1, keepdim=True) * q
        b = w.norm(dim=1)
        beta[:, j] = b.cpu()
        done |= (b.cpu() <= 1e-12 * alpha[:, :j + 1].abs().max(1).values.clamp_min(1e-300))
        if j + 1 == steps or bool(done.all()):
            steps = j + 1
            break
        v = torch.where(done.to(x.device)[:, None], torch.zeros_like(w),
                        w / b.clamp_min(1e-300)[:, None])
        basis.append(v)
    first, second, top = np.empty(rows), np.empty(rows), np.empty(rows)
    for r in range(rows):
        a, b = alpha[r, :steps].numpy(), beta[r, :steps].numpy()
        # a row whose Krylov space closed early (an invariant subspace) stops there
        closed = np.nonzero(b <= 1e-12 * max(np.abs(a).max(), 1e-300))[0]
        size = int(closed[0]) + 1 if len(closed) else steps
        t = np.diag(a[:size]) + np.diag(b[:size - 1], 1) + np.diag(b[:size - 1], -1)
        theta, vectors = np.linalg.eigh(t)
        tau = vectors[0] ** 2
        first[r], second[r], top[r] = tau @ theta, tau @ theta**2, theta.max()
    return first, second, top


def jacobian_spectrum(model: nn.Module, inputs: torch.Tensor,
                      modules: Optional[Sequence[nn.Module]] = None, *,
                      layers: Optional[Sequence[int]] = None, method: str = "auto",
                      max_bytes: Optional[int] = None, probes: int = 8, steps: int = 32,
                      seed: int = 0) -> Spectrum:
    """Singular values of the Jacobians of the outputs of ``modules`` (the layers, 1 to
    len(modules); default: ``model.blocks``) with respect to the network's input, for each
    example in ``inputs`` (examples x input shape), at the ``layers`` (default: 1, 2, 4,
    ..., and the last; see :func:`default_layers`).

    ``method``: ``exact`` (full Jacobians, singular values by SVD), ``estimate`` (stochastic
    Lanczos with ``probes`` start vectors of ``steps`` steps, drawn with ``seed``), or
    ``auto``: exact while :func:`exact_bytes` of one example fits in ``max_bytes`` (default:
    a quarter of the device's free memory), else estimate. See the module doc for what each
    gives and its error. Any ``nn.Module`` whose examples do not interact works; the model
    runs as it is (its device and dtype).

    >>> import torch
    >>> from propbench import jacobian_spectrum
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 8, bias=False), torch.nn.Tanh())
    >>> torch.nn.init.orthogonal_(net[0].weight)  # doctest: +ELLIPSIS
    Parameter containing:...
    >>> spectrum = jacobian_spectrum(net, 0.01 * torch.randn(2, 8), [net[0]])
    >>> bool(abs(spectrum.frame["max_s"] - 1).max() < 1e-3)
    True
    """
    if method not in METHODS:
        raise ValueError(f"jacobian_spectrum: method={method}; choose one of {', '.join(METHODS)}")
    if modules is None:
        if not hasattr(model, "blocks"):
            raise ValueError("jacobian_spectrum: give the modules whose outputs are the layers")
        modules = list(model.blocks)
    modules = list(modules)
    layers = default_layers(len(modules)) if layers is None else sorted(set(int(l) for l in layers))
    bad = [l for l in layers if not 1 <= l <= len(modules)]
    if bad:
        raise ValueError(f"jacobian_spectrum: layer {bad[0]} is not in 1..{len(modules)}")
    _check_independent(model)
    names = {m: name for name, m in model.named_modules()}
    chosen = [modules[l - 1] for l in layers]
    param = next(model.parameters(), None)
    device = param.device if param is not None else inputs.device
    inputs = inputs.to(device)
    if max_bytes is None:
        max_bytes = available_bytes(device) // 4
    capture = _Capture(chosen)
    rows, values = [], {l: [] for l in layers}
    try:
        for example, x in enumerate(inputs):
            n = x.numel()
            with torch.no_grad():
                sizes = [y.shape[1] for y in capture.run(model, x.unsqueeze(0))]
            use = method
            if use == "auto":
                use = "exact" if exact_bytes(n, sizes, x.element_size()) <= max_bytes else "estimate"
            if use == "exact":
                found = _exact(capture, model, x, n, sizes, max_bytes)
                for l, s, m in zip(layers, found, chosen):
                    lam = s**2
                    values[l].append(s)
                    rows.append((example, l, names.get(m, ""), lam.mean(), lam.var(), s.max(),
                                 s.min(), len(s), "exact"))
            else:
                generator = torch.Generator().manual_seed(seed + example)
                first, second, top = _lanczos(capture, model, x, n, len(layers), probes, steps,
                                              generator)
                for i, (l, m, size) in enumerate(zip(layers, chosen, sizes)):
                    k = min(size, n)
                    part = slice(i * probes, (i + 1) * probes)
                    mean = n / k * first[part].mean()
                    var = n / k * second[part].mean() - mean**2
                    rows.append((example, l, names.get(m, ""), mean, var,
                                 math.sqrt(max(top[part].max(), 0.0)), math.nan, k, "estimate"))
    finally:
        capture.close()
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return Spectrum(frame, {l: np.stack(v) for l, v in values.items() if v})
