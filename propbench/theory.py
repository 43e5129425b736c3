"""Mean-field theory of signal propagation at initialization, in plain NumPy.

For a fully connected network whose weights have variance ``sigma_w2 / fan_in`` and biases
variance ``sigma_b2``, with activation phi and standard-normal inputs, the infinite-width
limit gives (Poole et al. 2016, "Exponential expressivity in deep neural networks through
transient chaos"; Schoenholz et al. 2017, "Deep Information Propagation"):

- forward, the q-map: ``q^l = sigma_w2 * E[phi(sqrt(q^{l-1}) z)^2] + sigma_b2``, z ~ N(0, 1),
  with ``q^1 = sigma_w2 * E[x^2] + sigma_b2`` for the input x (E[x^2] = 1 here);
- backward: the gradient variance changes by ``chi^l = sigma_w2 * E[phi'(sqrt(q^l) z)^2]``
  per layer (square layers);
- for two inputs of correlation c, the c-map ``c^l = (sigma_w2 * E[phi(u1) phi(u2)] +
  sigma_b2) / q^l`` with (u1, u2) Gaussian of variance q and correlation c^{l-1};
- the fixed points q* and c*, ``chi_1 = chi`` at q*, the depth scales
  ``xi_q = -1 / ln(dq-map/dq at q*)`` and ``xi_c = -1 / ln(dc-map/dc at c*)``, and the
  critical ``sigma_w2`` where chi_1 = 1 (the edge of chaos).

Gaussian expectations use composite Gauss-Legendre quadrature split at the activation's
kinks and, for steep activations, on a grid refined near the kink scale, which keeps them
accurate to 1e-8 where plain Gauss-Hermite gets about 1e-3 for ReLU-like and SELU means.
Everything here is NumPy: no torch, so it imports in milliseconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np

from propbench.activations import Phi, twin


def _normal_pdf(x: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def phi(act: str, slope: Optional[float] = None) -> Phi:
    """The activation ``act`` (with ``slope`` for leaky ReLU / PReLU) as NumPy functions."""
    return twin(act, slope)


# --- Gaussian expectations ---------------------------------------------------------------

_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(48)
_NODES2, _WEIGHTS2 = np.polynomial.legendre.leggauss(24)  # per level of the 2-D c-map rule
_TAIL = 12.0  # N(0, 1) mass beyond 12 sd is 3.5e-33


def _breakpoints(mean: float, std: float, kinks: Sequence[float]) -> np.ndarray:
    if not (math.isfinite(mean) and math.isfinite(std)):
        return np.array([-_TAIL, _TAIL])
    """z-values splitting [-12, 12]: the kinks of f(mean + std z), and a grid that resolves
    the scale 1/std near them (steep tanh/sigmoid at large variance)."""
    points = set(np.linspace(-_TAIL, _TAIL, 13))
    for kink in (*kinks, 0.0):  # 0: where tanh, sigmoid, GELU, ... change fastest
        if std <= 0:
            continue
        centre = (kink - mean) / std
        points.add(centre)
        scale = max(1.0 / std, 2.0**-60)  # the width of the transition in z
        while scale < 1.0:  # steep on the z scale: resolve 1/std, 2/std, 4/std, ...
            points.update((centre - scale, centre + scale))
            scale *= 2.0
    return np.array(sorted(p for p in points if -_TAIL <= p <= _TAIL))


def gauss(f: Callable[[np.ndarray], np.ndarray], mean: float = 0.0, std: float = 1.0,
          kinks: Sequence[float] = ()) -> float:
    """E[f(mean + std * z)] for z ~ N(0, 1), accurate to about 1e-10 relative for piecewise
    smooth f with the given kinks (in x = mean + std z)."""
    edges = _breakpoints(mean, std, kinks)
    lo, hi = edges[:-1], edges[1:]
    half = (hi - lo)[:, None] / 2
    z = (lo[:, None] + hi[:, None]) / 2 + half * _NODES[None, :]
    w = half * _WEIGHTS[None, :] * _normal_pdf(z)
    return float(np.sum(w * f(mean + std * z)))


def moments(act: str, q: float, slope: Optional[float] = None) -> tuple[float, float, float]:
    """(E[phi], E[phi^2], E[phi'^2]) for a pre-activation ~ N(0, q)."""
    p = phi(act, slope)
    std = math.sqrt(max(q, 0.0))
    return (gauss(p.f, 0.0, std, p.kinks), gauss(lambda x: p.f(x) ** 2, 0.0, std, p.kinks),
            gauss(lambda x: p.df(x) ** 2, 0.0, std, p.kinks))


def qmap(act: str, q: float, sigma_w2: float, sigma_b2: float, slope: Optional[float] = None) -> float:
    """The variance of the next pre-activation: sigma_w2 * E[phi(sqrt(q) z)^2] + sigma_b2."""
    return sigma_w2 * moments(act, q, slope)[1] + sigma_b2


def _rule(mean: float, std: float, kinks: Sequence[float],
          extra: Sequence[float] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Nodes z and weights (density included) of a composite rule like :func:`gauss`'s,
    24 nodes an interval (the outer level of the c-map), split at ``extra`` points too."""
    edges = _breakpoints(mean, std, kinks)
    edges = np.union1d(edges, [p for p in extra if edges[0] < p < edges[-1]])
    lo, hi = edges[:-1], edges[1:]
    half = (hi - lo)[:, None] / 2
    z = ((lo[:, None] + hi[:, None]) / 2 + half * _NODES2[None, :]).ravel()
    w = (half * _WEIGHTS2[None, :]).ravel() * _normal_pdf(z)
    return z, w


def _bend_points(kinks: Sequence[float], std: float, c: float, r: float) -> list[float]:
    """Outer breakpoints for the c-map of a kinked activation. Averaged over z2, the inner
    factor E_z2[phi(std (c z1 + r z2))] is the kink of phi at x = k smoothed by a Gaussian:
    a bend around z1 = k / (std c) of width w = r / |c| in z1, r = sqrt(1 - c^2), which a
    rule on the unit scale misses as c -> +-1 (5.9e-9 for ReLU at 1 - c = 2e-5). Split at
    the bend and at 2 w and 8 w on each side; beyond 8 w the bend's excess over phi(std c
    z1) is below exp(-32) of it."""
    points: list[float] = []
    if std <= 0 or c == 0:
        return points
    for kink in kinks:
        centre, width = kink / (std * c), r / abs(c)
        points += [centre] + [centre + side * m * width for m in (2.0, 8.0) for side in (-1, 1)
                              if m * width < 1.0]
    return points


def _inner_offsets(std: float) -> np.ndarray:
    """Breakpoints relative to a kink, for an inner integral of scale 1/std in z."""
    offsets = {0.0, *(sign * d for d in (0.5, 1, 2, 3, 4, 6, 8, 12, 16, 24) for sign in (-1, 1))}
    scale = 1.0 / std if std > 0 else 1.0
    while scale < 0.5:
        offsets.update((scale, -scale))
        scale *= 2.0
    return np.array(sorted(offsets))


def correlation_product(act: str, q1: float, q2: float, c: float,
                        slope: Optional[float] = None) -> float:
    """E[phi(u1) phi(u2)] for (u1, u2) Gaussian, variances q1, q2, correlation c:
    an outer rule over z1 of phi(sqrt(q1) z1) E_z2[phi(sqrt(q2) (c z1 + sqrt(1-c^2) z2))],
    the inner rule split where its argument crosses 0 (the kink, or the steep part), the
    outer one also at the bend the inner average makes of a kink (:func:`_bend_points`),
    outer nodes in blocks. For ReLU it is the arc-cosine kernel of degree 1 (Cho & Saul 2009,
    "Kernel methods for deep learning"), for q1 = q2 = q
    ``q / (2 pi) * (sqrt(1 - c^2) + (pi - acos c) c)``,
    which it matches to 1e-14 q for every c, 1 - c down to 1e-10 included."""
    p = phi(act, slope)
    s1, s2 = math.sqrt(q1), math.sqrt(q2)
    c = min(max(c, -1.0), 1.0)
    r = math.sqrt((1.0 - c) * (1.0 + c))  # 1 - c is exact near c = 1; 1 - c*c is not
    z1, w1 = _rule(0.0, s1, p.kinks, _bend_points(p.kinks, s2, c, r))
    outer = w1 * p.f(s1 * z1)
    if r * s2 < 1e-12:
        return float(np.sum(outer * p.f(s2 * c * z1)))
    z1, outer = z1[outer != 0], outer[outer != 0]  # ReLU's negative half adds nothing
    offsets = _inner_offsets(s2 * r)
    inner = np.empty_like(z1)
    for start in range(0, len(z1), 64):  # blocks of outer nodes keep temporaries in cache
        block = z1[start:start + 64]
        centre = np.clip(-c * block / r, -_TAIL, _TAIL)  # where the inner argument is 0
        lo = centre[:, None] + offsets[None, :-1]
        hi = centre[:, None] + offsets[None, 1:]
        half = (hi - lo)[..., None] / 2
        z2 = (lo + hi)[..., None] / 2 + half * _NODES2
        w2 = half * _WEIGHTS2 * _normal_pdf(z2)
        inner[start:start + 64] = np.sum(w2 * p.f(s2 * (c * block[:, None, None] + r * z2)),
                                         axis=(1, 2))
    return float(np.sum(outer * inner))


def cmap(act: str, c: float, q: float, sigma_w2: float, sigma_b2: float,
         slope: Optional[float] = None) -> float:
    """The next layer's correlation of two inputs with pre-activation variance q (both) and
    correlation c: (sigma_w2 * E[phi(u1) phi(u2)] + sigma_b2) / q_next."""
    return (sigma_w2 * correlation_product(act, q, q, c, slope) + sigma_b2) / qmap(
        act, q, sigma_w2, sigma_b2, slope)


# --- layer-by-layer prediction -----------------------------------------------------------

@dataclass
class Prediction:
    """Per-layer predictions, index 0 = layer 1. Gradient variances assume a standard-normal
    cotangent on the last layer's post-activation."""

    q: np.ndarray  # pre-activation variance (its mean is 0)
    post_mean: np.ndarray
    post_second_moment: np.ndarray
    post_var: np.ndarray
    chi: np.ndarray  # sigma_w2 * E[phi'^2] at each layer
    grad_post_var: np.ndarray  # variance of dL/d(post-activation)
    grad_pre_var: np.ndarray  # variance of dL/d(pre-activation)
    grad_weight_var: np.ndarray  # per element, for a batch of `batch` independent inputs
    correlation: Optional[np.ndarray] = None  # pre-activation correlation of an input pair


def _per_layer(value: float | Sequence[float], depth: int) -> np.ndarray:
    array = np.broadcast_to(np.asarray(value, dtype=float), (depth,))
    return array.astype(float)


def _recursion(w2: np.ndarray, b2: np.ndarray, back: np.ndarray, first: Any,
               cotangent_var: float, spread: Callable[[Any], Any],
               moment_map: Callable[[Any], Any]) -> tuple[np.ndarray, ...]:
    """The forward q-map and the backward variance recursion, per site of a state: a
    number for an MLP, an (H, W) map of pixels for a CNN (``first``: the input's second
    moment per site). ``spread`` is the average a layer's weights take over the previous
    layer's sites (the identity for an MLP, the k x k taps for a CNN), ``moment_map`` gives
    (E[phi], E[phi^2], E[phi'^2]) at each site's q:

        q^l = w2_l spread(E[phi(h^{l-1})^2]) + b2_l,
        Var dL/dx^l = back_{l+1} spread(Var dL/dh^{l+1}),  Var dL/dh^l = E[phi'^2] Var dL/dx^l,

    from ``cotangent_var`` at the last layer. Returns (q, mean, second, dsecond, grad_post,
    grad_pre), each (depth, *state); past float range (q >= 1e300) everything is inf."""
    depth = len(w2)
    shape = (depth, *np.shape(first))
    q, mean, second, dsecond = (np.full(shape, math.inf) for _ in range(4))
    previous = first
    for layer in range(depth):
        q[layer] = w2[layer] * spread(previous) + b2[layer]
        if not np.max(q[layer]) < 1e300:  # past the float range: nothing more to predict
            q[layer] = math.inf
            break
        mean[layer], second[layer], dsecond[layer] = moment_map(q[layer])
        previous = second[layer]
    grad_post, grad_pre = np.empty(shape), np.empty(shape)
    grad_post[-1] = cotangent_var
    with np.errstate(invalid="ignore", over="ignore"):
        for layer in range(depth - 1, -1, -1):
            if layer < depth - 1:
                grad_post[layer] = back[layer + 1] * spread(grad_pre[layer + 1])
            grad_pre[layer] = dsecond[layer] * grad_post[layer]
    return q, mean, second, dsecond, grad_post, grad_pre


def predict(act: str, sigma_w2: float | Sequence[float], sigma_b2: float | Sequence[float],
            depth: int, slope: Optional[float] = None, input_second_moment: float = 1.0,
            batch: int = 1, backward_w2: float | Sequence[float] | None = None,
            cotangent_var: float = 1.0, c0: Optional[float] = None) -> Prediction:
    """Layer-by-layer mean-field prediction for ``depth`` blocks.

    ``sigma_w2`` and ``sigma_b2`` may be per-layer sequences (layer 1 first).
    ``backward_w2[l]`` is fan_out * Var(W) of layer l+1, what scales the gradient from layer
    l+1 back to layer l (default: ``sigma_w2``, right for square layers). With ``c0``, two
    inputs of correlation c0 are followed through the c-map as well.
    """
    w2, b2 = _per_layer(sigma_w2, depth), _per_layer(sigma_b2, depth)
    back = w2 if backward_w2 is None else _per_layer(backward_w2, depth)
    q, mean, second, dsecond, grad_post, grad_pre = _recursion(
        w2, b2, back, float(input_second_moment), cotangent_var, lambda v: v,
        lambda q_layer: moments(act, float(q_layer), slope))
    inputs_second = np.concatenate([[input_second_moment], second[:-1]])
    with np.errstate(invalid="ignore", over="ignore"):  # inf past the float range is fine
        post_var, chi = second - mean**2, w2 * dsecond
        grad_weight = batch * grad_pre * inputs_second
    correlation = None
    if c0 is not None:
        correlation = np.empty(depth)
        cross = c0 * input_second_moment  # E[x_a x_b] of the inputs
        for layer in range(depth):
            correlation[layer] = (w2[layer] * cross + b2[layer]) / q[layer]
            if layer < depth - 1:
                cross = correlation_product(act, q[layer], q[layer], correlation[layer], slope)
    return Prediction(q, mean, second, post_var, chi, grad_post, grad_pre, grad_weight,
                      correlation)


# --- CNN: the same recursion per pixel, with zero padding ----------------------------------

def _tap_mean(values: np.ndarray, kernel_size: int) -> np.ndarray:
    """The mean over the k x k taps around each pixel of an (H, W) map, zero outside the
    image: what a ``padding='same'`` convolution of odd k sees (forward and, its taps being
    symmetric, backward)."""
    height, width = values.shape
    padded = np.pad(values, kernel_size // 2)
    taps = [padded[i:i + height, j:j + width] for i in range(kernel_size) for j in range(kernel_size)]
    return np.sum(taps, axis=0) / kernel_size**2


def _moment_maps(act: str, q: np.ndarray, slope: Optional[float]) -> np.ndarray:
    """:func:`moments` at every pixel of a variance map, shape (3, H, W); each distinct q
    (to 12 digits of the largest: mirror-image pixels) is integrated once."""
    keys = np.round(q / q.max(), 12) if q.max() > 0 else q
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    values = np.array([moments(act, v, slope) for v in q.ravel()[first]])
    return values[inverse.ravel()].T.reshape(3, *q.shape)


def predict_conv(act: str, sigma_w2: float | Sequence[float], sigma_b2: float | Sequence[float],
                 depth: int, image_size: int, kernel_size: int, slope: Optional[float] = None,
                 input_second_moment: float = 1.0,
                 backward_w2: float | Sequence[float] | None = None, cotangent_var: float = 1.0,
                 c0: Optional[float] = None) -> Prediction:
    """:func:`predict` for a CNN of k x k ``padding='same'`` convolutions on square images,
    with ``sigma_w2 = fan_in Var(W)``, ``fan_in = channels k^2``. At infinite width the
    variance of each pixel p follows the q-map on its own (Xiao et al. 2018, "Dynamical
    Isometry and a Mean Field Theory of CNNs", sec. 2; cross-pixel covariances do not enter
    the diagonal), over the taps t that fall inside the image (zero padding):

        q^l(p) = sigma_w2 * mean_t E[phi(h^{l-1}(p + t))^2] + sigma_b2,

    and backward ``Var dL/dx^l(p) = backward_w2 * mean_t Var dL/dh^{l+1}(p - t)``, from a
    cotangent of variance ``cotangent_var`` at every pixel of the last layer. The border
    pixels lose the missing taps' share. Per layer, the fields are pixel averages (the
    statistics pool pixels): q, E[phi^2] and the gradient variances are means over pixels,
    ``post_var = mean_p E[phi^2] - (mean_p E[phi])^2``. With ``c0`` the correlation is the
    border-free c-map of :func:`predict`; the weight-gradient variance is not modelled (NaN).
    """
    w2, b2 = _per_layer(sigma_w2, depth), _per_layer(sigma_b2, depth)
    back = w2 if backward_w2 is None else _per_layer(backward_w2, depth)
    q, mean, second, dsecond, grad_post, grad_pre = _recursion(
        w2, b2, back, np.full((image_size, image_size), float(input_second_moment)),
        cotangent_var, lambda v: _tap_mean(v, kernel_size),
        lambda q_layer: _moment_maps(act, q_layer, slope))
    with np.errstate(invalid="ignore", over="ignore"):
        pixel_mean = lambda a: a.mean(axis=(1, 2))  # noqa: E731
        post_var = pixel_mean(second) - pixel_mean(mean) ** 2
        chi = w2 * pixel_mean(dsecond)
    correlation = None
    if c0 is not None:
        correlation = predict(act, w2, b2, depth, slope, input_second_moment, c0=c0).correlation
    return Prediction(pixel_mean(q), pixel_mean(mean), pixel_mean(second), post_var, chi,
                      pixel_mean(grad_post), pixel_mean(grad_pre), np.full(depth, np.nan),
                      correlation)


# --- residual networks: the stream accumulates the branches --------------------------------

@dataclass
class ResidualPrediction:
    """Per-block predictions of a pre-activation residual MLP, index 0 = block 1; the
    per-sublayer fields are (depth, branch_layers) arrays. Gradients assume a
    standard-normal cotangent on the last block's output."""

    stream: np.ndarray  # Var of block l's output (the stream; its mean is 0)
    branch: np.ndarray  # Var of block l's branch output, B(q_{l-1})
    grad_stream: np.ndarray  # Var dL/d(block l's output)
    grad_branch: np.ndarray  # Var dL/d(branch output) = alpha^2 grad_stream
    chi_branch: np.ndarray  # the branch's backward factor: 1 + alpha^2 chi_branch per block
    pre: np.ndarray  # (depth, m): Var of each branch layer's Linear output
    norm: np.ndarray  # (depth, m): Var of the LayerNorm output (1), NaN without one
    post_var: np.ndarray  # (depth, m): Var of the activation's output
    grad_pre: np.ndarray
    grad_norm: np.ndarray
    grad_post: np.ndarray
    grad_weight: np.ndarray  # per element, for a batch of `batch` independent inputs


def predict_residual(act: str, sigma_w2: float | Sequence, sigma_b2: float | Sequence,
                     depth: int, branch_layers: int, alpha: float, layernorm: bool = False,
                     slope: Optional[float] = None, input_var: float = 1.0, batch: int = 1,
                     backward_w2: float | Sequence | None = None,
                     cotangent_var: float = 1.0) -> ResidualPrediction:
    """Mean-field prediction for ``depth`` pre-activation residual blocks
    ``x -> x + alpha * branch(x)``, a branch being ``branch_layers`` times
    [LayerNorm ->] phi -> Linear (``sigma_w2[l][k] = fan_in Var(W)`` of block l's layer k).

    Each branch has its own weights, independent of the stream, so at infinite width its
    output is a zero-mean Gaussian uncorrelated with its input, and variances add (Yang &
    Schoenholz 2017, "Mean Field Residual Networks: On the Edge of Chaos"; the summed
    covariance Neural Tangents uses for residual sums):

        q_l = q_{l-1} + alpha^2 B(q_{l-1}),    q_0 = input_var,

    where B runs the q-map through the branch: v <- sigma_w2 E[phi(sqrt(v) z)^2] + sigma_b2
    per layer, from v = q_{l-1} (LayerNorm first sets v = 1 before each phi, so B does not
    depend on q). Backward, the gradient w.r.t. the stream grows per block by
    ``1 + alpha^2 chi_branch(q_{l-1})``, chi_branch the product over the branch's layers of
    ``backward_w2 E[phi'^2]`` (and 1/v through each LayerNorm, whose Jacobian divides by
    the input's standard deviation; its projection's 2/width is left out).

    Closed form: ReLU with He init (sigma_w2 = 2, no bias) and one branch layer has
    B(q) = q and chi_branch = 1, so q_L = q_0 (1 + alpha^2)^L forward and the same factor
    backward: 2^L at alpha = 1, (1 + 1/L)^L -> e at alpha = 1/sqrt(L), 1 at alpha = 0.
    """
    shape = (depth, branch_layers)
    w2 = np.broadcast_to(np.asarray(sigma_w2, dtype=float), shape)
    b2 = np.broadcast_to(np.asarray(sigma_b2, dtype=float), shape)
    back = w2 if backward_w2 is None else np.broadcast_to(np.asarray(backward_w2, float), shape)
    stream, branch = np.full(depth, math.inf), np.full(depth, math.inf)
    fields = {name: np.full(shape, math.inf) for name in
              ("inputs", "pre", "post_var", "second", "dsecond")}
    q = float(input_var)
    for layer in range(depth):
        v = q
        for k in range(branch_layers):
            fields["inputs"][layer, k] = v
            mean, second, dsecond = moments(act, 1.0 if layernorm else v, slope)
            fields["post_var"][layer, k], fields["second"][layer, k] = second - mean**2, second
            fields["dsecond"][layer, k] = dsecond
            v = w2[layer, k] * second + b2[layer, k]
            fields["pre"][layer, k] = v
        branch[layer], q = v, q + alpha**2 * v
        stream[layer] = q
        if not q < 1e300:  # past the float range: nothing more to predict
            break
    grads = {name: np.empty(shape) for name in ("grad_pre", "grad_norm", "grad_post")}
    grad_stream, grad_branch, chi = np.empty(depth), np.empty(depth), np.empty(depth)
    g = float(cotangent_var)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        for layer in range(depth - 1, -1, -1):
            grad_stream[layer], grad_branch[layer] = g, alpha**2 * g
            G = grad_branch[layer]
            for k in range(branch_layers - 1, -1, -1):
                grads["grad_pre"][layer, k] = G
                grads["grad_post"][layer, k] = back[layer, k] * G
                G = fields["dsecond"][layer, k] * grads["grad_post"][layer, k]
                grads["grad_norm"][layer, k] = G
                if layernorm:
                    G = G / fields["inputs"][layer, k]
            chi[layer] = G / grad_branch[layer] if grad_branch[layer] else np.prod(
                back[layer] * fields["dsecond"][layer]
                / (fields["inputs"][layer] if layernorm else 1.0))
            g = g + G
        grad_weight = batch * grads["grad_pre"] * fields["second"]
    if not layernorm:
        grads["grad_norm"][:] = math.nan
    norm = np.full(shape, 1.0 if layernorm else math.nan)
    return ResidualPrediction(stream, branch, grad_stream, grad_branch, chi, fields["pre"], norm,
                              fields["post_var"], grads["grad_pre"], grads["grad_norm"],
                              grads["grad_post"], grad_weight)


# --- fixed points, depth scales, criticality ---------------------------------------------

def _steffensen(g: Callable[[float], float], x: float, tol: float, max_iter: int,
                low: float = 0.0, high: float = math.inf) -> tuple[float, bool]:
    """Iterate x <- g(x) with Steffensen's acceleration (Aitken's delta^2 on each pair of
    steps), which turns linear convergence quadratic; an accelerated step that leaves
    [low, high] falls back to the plain one. Returns (x, converged)."""
    for _ in range(max_iter):
        x1 = g(x)
        if not math.isfinite(x1) or abs(x1) > 1e150:  # diverging (and squares would overflow)
            return math.inf, False
        if abs(x1 - x) <= tol * max(1.0, abs(x)):
            return x1, True
        x2 = g(x1)
        denominator = x2 - 2 * x1 + x
        accelerated = x - (x1 - x) ** 2 / denominator if denominator != 0 else x2
        growing = x2 > x1 > x and accelerated <= x1  # no fixed point ahead: keep climbing
        if not (math.isfinite(accelerated) and low <= accelerated <= high) or growing:
            accelerated = x2
        x = accelerated
    return x, False


def fixed_point(act: str, sigma_w2: float, sigma_b2: float, slope: Optional[float] = None,
                q0: float = 1.0, tol: float = 1e-12, max_iter: int = 500) -> float:
    """q* = qmap(q*), by iterating from q0 with Steffensen's acceleration. inf if q grows
    without bound (e.g. ReLU with sigma_w2 = 2 and a bias); q0 itself where every q is fixed
    (ReLU, sigma_w2 = 2, no bias)."""
    g = lambda q: qmap(act, q, sigma_w2, sigma_b2, slope)  # noqa: E731
    q, converged = _steffensen(g, q0, tol, max_iter)
    if not math.isfinite(q):
        return q
    # linear growth (q += sigma_b2 per layer) looks converged in relative terms once q is
    # huge: a q far beyond any scale of the problem that still grows has no fixed point
    if q > 1e9 * max(q0, sigma_b2, 1.0) and g(q) > q:
        return math.inf
    return q if converged or g(q) <= q * (1 + 1e-6) else math.inf


def chi1(act: str, sigma_w2: float, sigma_b2: float, slope: Optional[float] = None,
         q: Optional[float] = None) -> float:
    """chi_1 = sigma_w2 * E[phi'(sqrt(q*) z)^2]: > 1 chaotic (gradients explode), < 1 ordered."""
    q = fixed_point(act, sigma_w2, sigma_b2, slope) if q is None else q
    if not math.isfinite(q):
        return math.inf
    return sigma_w2 * moments(act, q, slope)[2]


def correlation_fixed_point(act: str, sigma_w2: float, sigma_b2: float,
                            slope: Optional[float] = None, c0: float = 0.5,
                            max_iter: int = 500) -> float:
    """c*, the limit of the c-map at q*: 1 in the ordered phase and at the edge of chaos
    (chi_1 <= 1: c = 1 is then the stable fixed point), below 1 in the chaotic phase, where
    it is found by iterating from c0."""
    q = fixed_point(act, sigma_w2, sigma_b2, slope)
    if not math.isfinite(q):
        return math.nan
    if chi1(act, sigma_w2, sigma_b2, slope, q) <= 1.0 + 1e-9:
        return 1.0
    q_next = qmap(act, q, sigma_w2, sigma_b2, slope)
    g = lambda c: (sigma_w2 * correlation_product(act, q, q, c, slope) + sigma_b2) / q_next  # noqa: E731
    c, _ = _steffensen(g, c0, 1e-10, max_iter, low=-1.0, high=1.0)
    return min(c, 1.0)


def _depth_scale(rate: float) -> float:
    """-1 / ln(rate): the layers over which a deviation shrinks by e; inf at rate 1."""
    if not 0 < rate or abs(rate - 1.0) < 1e-9:
        return math.inf
    return -1.0 / math.log(rate) if rate < 1 else math.inf


def depth_scales(act: str, sigma_w2: float, sigma_b2: float,
                 slope: Optional[float] = None) -> dict[str, float]:
    """q*, c*, chi_1 and the depth scales xi_q and xi_c (Schoenholz et al. 2017, eqs. 5 and
    9): the numbers of layers over which the variance and the correlation of two inputs
    approach their fixed points, ``-1 / ln`` of the slopes of the q-map at q* and of the
    c-map at c* (= chi_1 when c* = 1). Infinite at the edge of chaos."""
    q = fixed_point(act, sigma_w2, sigma_b2, slope)
    if not math.isfinite(q):
        return {"q_star": q, "c_star": math.nan, "chi_1": math.inf, "xi_q": math.nan,
                "xi_c": math.nan}
    h = 1e-5 * max(q, 1e-12)
    low = max(q - h, 0.0)
    dq = (qmap(act, q + h, sigma_w2, sigma_b2, slope)
          - qmap(act, low, sigma_w2, sigma_b2, slope)) / (q + h - low)
    chi = chi1(act, sigma_w2, sigma_b2, slope, q)
    c_star = correlation_fixed_point(act, sigma_w2, sigma_b2, slope)
    if c_star == 1.0:
        dc = chi  # the slope of the c-map at c = 1 is chi_1
    else:
        q_next, e = qmap(act, q, sigma_w2, sigma_b2, slope), 1e-5
        dc = sigma_w2 * (correlation_product(act, q, q, c_star + e, slope)
                         - correlation_product(act, q, q, c_star - e, slope)) / (2 * e * q_next)
    return {"q_star": q, "c_star": c_star, "chi_1": chi, "xi_q": _depth_scale(abs(dq)),
            "xi_c": _depth_scale(dc)}


def critical_sigma_w2(act: str, sigma_b2: float, slope: Optional[float] = None,
                      low: float = 0.05, high: float = 20.0) -> float:
    """The sigma_w2 at which chi_1 = 1 for this sigma_b2 (the order-to-chaos transition),
    by bisection; chi_1 grows with sigma_w2 for every activation here."""
    f = lambda w2: chi1(act, w2, sigma_b2, slope) - 1.0  # noqa: E731
    if f(low) > 0 or f(high) < 0:
        return math.nan
    for _ in range(45):  # (high - low) / 2^45: well below 1e-10
        mid = 0.5 * (low + high)
        if f(mid) > 0:
            high = mid
        else:
            low = mid
    return 0.5 * (low + high)


def auto_gain(act: str, slope: Optional[float] = None) -> float:
    """The variance-preserving gain, gain^2 = 1 / E[phi(z)^2] for z ~ N(0, 1): sqrt(2) for
    ReLU, sqrt(2/(1+a^2)) for PReLU, 1 for SELU (LeCun), and numbers calculate_gain has no
    entry for (tanh, GELU, SiLU, ...)."""
    return 1.0 / math.sqrt(moments(act, 1.0, slope)[1])


# --- the spectrum of the input-output Jacobian ----------------------------------------------

# s1, the first coefficient of the S-transform of W W^T / sigma_w2 (its normalized variance,
# negated): Marchenko-Pastur for i.i.d. entries, a point mass for orthogonal matrices
S1 = {"gaussian": -1.0, "orthogonal": 0.0}


@dataclass
class SpectrumMoments:
    """Per-layer moments of lambda = s^2 over the singular values s of the Jacobian of the
    post-activation of layer l (index l-1) with respect to the input."""

    mean: np.ndarray  # mean of lambda: prod_{k<=l} sigma_w2 mu1(q_k)
    var: np.ndarray  # variance of lambda: mean^2 * spread
    spread: np.ndarray  # var / mean^2 = sum_{k<=l} (mu2(q_k) / mu1(q_k)^2 - 1 - s1)
    mu1: np.ndarray  # E[phi'(h)^2], h ~ N(0, q_l)
    mu2: np.ndarray  # E[phi'(h)^4]
    q: np.ndarray  # the pre-activation variance of the q-map


def spectrum_moments(act: str, sigma_w2: float | Sequence[float], sigma_b2: float | Sequence[float],
                     depth: int, weights: str = "gaussian", slope: Optional[float] = None,
                     input_second_moment: float = 1.0) -> SpectrumMoments:
    """The mean and variance of lambda, the squared singular values of the input-output
    Jacobian J_l = D_l W_l ... D_1 W_1 (D_k = diag phi'(h_k)), of square layers at infinite
    width (Pennington, Schoenholz & Ganguli 2017, "Resurrecting the sigmoid in deep learning
    through dynamical isometry", eqs. 12-16).

    The W_k and D_k are asymptotically free, so the S-transform of J_l J_l^T is the product
    of theirs. To first order in z, S_A(z) = (1 + s_A z) / m1_A with m1_A the mean and
    s_A = 1 - m2_A / m1_A^2 minus the normalized variance of A's spectrum; for
    W_k W_k^T, m1 = sigma_w2 and s = s1 (-1 for i.i.d. Gaussian or uniform entries,
    Marchenko-Pastur; 0 for orthogonal weights, ``weights``); for D_k^2, m1 = mu1(q_k) =
    E[phi'(h)^2] and m2 = mu2(q_k) = E[phi'(h)^4], h ~ N(0, q_k). Multiplying:

        mean(lambda) = prod_k sigma_w2_k mu1(q_k),
        var(lambda) / mean(lambda)^2 = sum_k (mu2(q_k) / mu1(q_k)^2 - 1 - s1),

    which at the fixed point q* is the paper's L (mu2/mu1^2 - 1 - s1): at criticality a ReLU
    net spreads like 2L with Gaussian and L with orthogonal weights, a linear net like L and
    0; only orthogonal weights with phi' nearly constant at q* (tanh at small q*) keep the
    spread small. Here q_k follows the q-map from the input (``input_second_moment``), so
    layers before the fixed point are counted with their own mu's. Finite width bends the
    measured spread once depth / width is no longer small.

    >>> m = spectrum_moments("relu", 2.0, 0.0, 8, "orthogonal")
    >>> float(m.mean[-1]), float(m.spread[-1])
    (1.0, 8.0)
    """
    s1 = choose_weights(weights)
    w2, b2 = _per_layer(sigma_w2, depth), _per_layer(sigma_b2, depth)
    q = predict(act, w2, b2, depth, slope, input_second_moment).q
    p = phi(act, slope)
    mu1, mu2 = np.empty(depth), np.empty(depth)
    for layer in range(depth):
        std = math.sqrt(q[layer]) if math.isfinite(q[layer]) else math.inf
        if not math.isfinite(std):
            mu1[layer:] = mu2[layer:] = math.nan
            break
        mu1[layer] = gauss(lambda x: p.df(x) ** 2, 0.0, std, p.kinks)
        mu2[layer] = gauss(lambda x: p.df(x) ** 4, 0.0, std, p.kinks)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        mean = np.cumprod(w2 * mu1)
        # mu2 >= mu1^2 (Jensen): clip the quadrature's round-off below 0
        spread = np.cumsum(np.maximum(mu2 / mu1**2 - 1.0, 0.0) - s1)
        var = mean**2 * spread
    return SpectrumMoments(mean, var, spread, mu1, mu2, q)


def choose_weights(weights: str) -> float:
    """s1 of a weight law: ``gaussian`` (any i.i.d. law) or ``orthogonal``."""
    if weights not in S1:
        raise ValueError(f"weights={weights}: choose one of {', '.join(S1)}")
    return S1[weights]
