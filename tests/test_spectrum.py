"""Jacobian singular values: against finite differences, exact isometry, the linear growth of
the spread, the estimator against the exact method, and the free-probability theory."""

import math

import numpy as np
import pytest
import torch
from torch import nn

import propbench
from propbench import theory
from propbench.spectrum import default_layers, jacobian_spectrum  # noqa: F401
from tests.conftest import cfg


class Residual(nn.Module):
    """A block that is not a chain of leaves: x + tanh(W x)."""

    def __init__(self, width):
        super().__init__()
        self.linear = nn.Linear(width, width, dtype=torch.float64)

    def forward(self, x):
        return x + torch.tanh(self.linear(x))


def finite_difference_jacobian(f, x, eps=1e-6):
    """Central differences, one input unit at a time: (m, n)."""
    flat = x.flatten()
    columns = []
    for i in range(flat.numel()):
        step = torch.zeros_like(flat)
        step[i] = eps
        columns.append((f((flat + step).view_as(x)) - f((flat - step).view_as(x))).flatten() / (2 * eps))
    return torch.stack(columns, dim=1)


def outputs_of(model, module, x):
    captured = {}
    handle = module.register_forward_hook(lambda m, a, out: captured.setdefault("y", out))
    with torch.no_grad():
        model(x.unsqueeze(0))
    handle.remove()
    return captured["y"]


@pytest.mark.parametrize("kind", ["mlp", "residual", "cnn"])
def test_singular_values_match_finite_differences(kind):
    torch.manual_seed(0)
    if kind == "mlp":
        layers = [nn.Sequential(nn.Linear(5, 5, dtype=torch.float64), nn.Tanh()) for _ in range(3)]
        model, x = nn.Sequential(*layers), torch.randn(2, 5, dtype=torch.float64)
    elif kind == "residual":
        layers = [Residual(5) for _ in range(3)]
        model, x = nn.Sequential(*layers, nn.Linear(5, 2, dtype=torch.float64)), torch.randn(2, 5, dtype=torch.float64)
    else:  # a tall Jacobian: 3 channels of 4x4 out, 2 channels in
        model = propbench.build_model(cfg("model=cnn", "model.in_channels=2", "model.image_size=4",
                                          "width=3", "depth=3", "act=tanh", "init=kaiming",
                                          "dtype=float64"))
        layers, x = list(model.blocks), torch.randn(2, 2, 4, 4, dtype=torch.float64)
    spectrum = jacobian_spectrum(model, x, layers, layers=[1, 3], method="exact")
    for example in range(2):
        for layer in (1, 3):
            module = layers[layer - 1]
            jacobian = finite_difference_jacobian(lambda z: outputs_of(model, module, z), x[example])
            expected = torch.linalg.svdvals(jacobian).numpy()
            np.testing.assert_allclose(spectrum.values[layer][example], expected, rtol=1e-7, atol=1e-9)
            row = spectrum.frame[(spectrum.frame.example == example) & (spectrum.frame.layer == layer)].iloc[0]
            assert row.mean_sq == pytest.approx(np.mean(expected**2), rel=1e-7)
            assert row.var_sq == pytest.approx(np.var(expected**2), rel=1e-6)
            assert row.n_values == min(jacobian.shape) and row.method == "exact"


def test_linear_orthogonal_net_is_an_exact_isometry():
    model = propbench.build_model(cfg("act=linear", "init=orthogonal", "bias=false", "depth=24",
                                      "width=64", "dtype=float64"))
    spectrum = jacobian_spectrum(model, torch.randn(2, 64, dtype=torch.float64))
    values = np.concatenate([v.ravel() for v in spectrum.values.values()])
    assert np.abs(values - 1).max() < 1e-6
    assert spectrum.frame["layer"].tolist() == [1, 2, 4, 8, 16, 24] * 2


def test_gaussian_linear_spread_grows_linearly_with_depth():
    """Free probability: var(lambda) / mean(lambda)^2 = L for L Gaussian layers (s1 = -1).
    One draw at width 256 scatters around it: over 8 seeds the spread / L had a relative sd
    of 0.8% at L = 1-2, 1.7% at L = 4-8, 6% at L = 16 and 14% at L = 32 (var(lambda) itself
    17% at 16 and 35% at 32, as its mean wanders too); 25% is 4 sd at L = 16."""
    model = propbench.build_model(cfg("act=linear", "init=scaled", "init.sigma_w2=1", "bias=false",
                                      "depth=16", "width=256", "dtype=float64", "seed=3"))
    frame = jacobian_spectrum(model, torch.randn(1, 256, dtype=torch.float64)).frame
    depth = frame["layer"].to_numpy()
    spread = (frame["var_sq"] / frame["mean_sq"] ** 2).to_numpy()
    np.testing.assert_allclose(spread / depth, 1.0, rtol=0.25)
    slope = np.sum(depth * spread) / np.sum(depth**2)  # through the origin
    assert slope == pytest.approx(1.0, abs=0.15)


def test_estimator_agrees_with_the_exact_method_within_its_error():
    """Hutchinson's estimate of mean(lambda) with p unit probes has relative standard error
    sqrt(2 var / (n p)) / mean (and likewise for mean(lambda^2)); Lanczos Ritz values bound the
    largest eigenvalue from below and, with 16 steps at n = 64, reach it."""
    model = propbench.build_model(cfg("act=tanh", "init=scaled", "init.sigma_w2=1.76",
                                      "init.sigma_b2=0.05", "depth=4", "width=64", "dtype=float64"))
    x = torch.randn(1, 64, dtype=torch.float64)
    exact = jacobian_spectrum(model, x, method="exact")
    estimate = jacobian_spectrum(model, x, method="estimate", probes=16, steps=16, seed=1).frame
    assert set(estimate["method"]) == {"estimate"} and estimate["min_s"].isna().all()
    n, probes = 64, 16
    for (_, row), (layer, values) in zip(estimate.iterrows(), sorted(exact.values.items())):
        lam = values[0] ** 2
        se_first = math.sqrt(2 * lam.var() / (n * probes))
        se_second = math.sqrt(2 * (lam**2).var() / (n * probes))
        assert abs(row.mean_sq - lam.mean()) <= 4 * se_first
        assert abs(row.var_sq + row.mean_sq**2 - (lam**2).mean()) <= 4 * se_second
        assert values[0].max() * 0.99 <= row.max_s <= values[0].max() * (1 + 1e-9)


def test_auto_falls_back_to_the_estimate_when_the_jacobian_does_not_fit():
    model = propbench.build_model(cfg("act=relu", "init=kaiming", "depth=2", "width=16"))
    x = torch.randn(1, 16)
    assert set(jacobian_spectrum(model, x, method="auto").frame["method"]) == {"exact"}
    small = jacobian_spectrum(model, x, method="auto", max_bytes=1000, probes=2, steps=4).frame
    assert set(small["method"]) == {"estimate"}


def test_bad_arguments_and_batchnorm_are_refused():
    model = propbench.build_model(cfg("depth=3", "width=8"))
    with pytest.raises(ValueError, match="layer 4 is not in 1..3"):
        jacobian_spectrum(model, torch.randn(1, 8), layers=[4])
    with pytest.raises(ValueError, match="method=svd"):
        jacobian_spectrum(model, torch.randn(1, 8), method="svd")
    with pytest.raises(ValueError, match="give the modules"):
        jacobian_spectrum(nn.Linear(3, 3), torch.randn(1, 3))
    bn = propbench.build_model(cfg("depth=2", "width=8", "model.norm=batchnorm"))
    with pytest.raises(ValueError, match="BatchNorm in training mode"):
        jacobian_spectrum(bn, torch.randn(1, 8))


def test_default_layers_double_up_to_depth():
    assert default_layers(1) == [1]
    assert default_layers(32) == [1, 2, 4, 8, 16, 32]
    assert default_layers(100) == [1, 2, 4, 8, 16, 32, 64, 100]


# --- theory -----------------------------------------------------------------------------

@pytest.mark.parametrize("act, sigma_w2, weights, per_layer", [
    ("linear", 1.0, "gaussian", 1.0),   # mu1 = mu2 = 1: the spread is -s1 per layer
    ("linear", 1.0, "orthogonal", 0.0),
    ("relu", 2.0, "gaussian", 2.0),     # phi'^2 is 0 or 1, each w.p. 1/2: mu2/mu1^2 = 2
    ("relu", 2.0, "orthogonal", 1.0),
])
def test_spectrum_moments_closed_forms(act, sigma_w2, weights, per_layer):
    m = theory.spectrum_moments(act, sigma_w2, 0.0, 40, weights)
    np.testing.assert_allclose(m.mean, 1.0, rtol=1e-12)
    np.testing.assert_allclose(m.spread, per_layer * np.arange(1, 41), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(m.var, m.spread, rtol=1e-12, atol=1e-12)


def test_spectrum_moments_follow_the_q_map():
    """mu_k = E[phi'(h)^(2k)], h ~ N(0, q_l) along the q-map; at the fixed point the spread
    grows by mu2/mu1^2 - 1 - s1 per layer and the mean by chi_1 (Pennington et al. 2017)."""
    sigma_b2 = 0.05
    sigma_w2 = theory.critical_sigma_w2("tanh", sigma_b2)
    q_star = theory.fixed_point("tanh", sigma_w2, sigma_b2)
    m = theory.spectrum_moments("tanh", sigma_w2, sigma_b2, 400, "orthogonal")
    sech4 = lambda x: (1 - np.tanh(x) ** 2) ** 2  # noqa: E731  tanh'(x)^2
    mu1 = theory.gauss(sech4, 0, math.sqrt(m.q[0]))
    mu2 = theory.gauss(lambda x: sech4(x) ** 2, 0, math.sqrt(m.q[0]))
    assert m.q[0] == pytest.approx(sigma_w2 + sigma_b2, rel=1e-12)  # standard-normal inputs
    assert m.mu1[0] == pytest.approx(mu1, rel=1e-10) and m.mu2[0] == pytest.approx(mu2, rel=1e-10)
    assert m.spread[0] == pytest.approx(mu2 / mu1**2 - 1, rel=1e-10)
    assert m.mean[0] == pytest.approx(sigma_w2 * mu1, rel=1e-10)
    # far along, q sits at q*: the mean stops changing (chi_1 = 1) and the spread grows by
    # the fixed point's increment
    assert m.q[-1] == pytest.approx(q_star, rel=1e-2)
    assert m.mean[-1] / m.mean[-2] == pytest.approx(1.0, abs=1e-3)
    mu1_star = theory.gauss(sech4, 0, math.sqrt(q_star))
    mu2_star = theory.gauss(lambda x: sech4(x) ** 2, 0, math.sqrt(q_star))
    assert m.spread[-1] - m.spread[-2] == pytest.approx(mu2_star / mu1_star**2 - 1, rel=1e-2)
    gaussian = theory.spectrum_moments("tanh", sigma_w2, sigma_b2, 400, "gaussian")
    np.testing.assert_allclose(gaussian.spread - m.spread, np.arange(1, 401), rtol=1e-12)
    with pytest.raises(ValueError, match="choose one of gaussian, orthogonal"):
        theory.spectrum_moments("tanh", 1.0, 0.0, 3, "haar")


@pytest.mark.parametrize("act, init, per_layer", [
    ("relu", ["init=scaled", "init.sigma_w2=2"], 2.0),
    ("relu", ["init=scaled", "init.sigma_w2=2", "init.distribution=orthogonal"], 1.0),
])
def test_measured_relu_spread_follows_theory_at_small_depth_over_width(act, init, per_layer):
    """At depth 8, width 256 (L / n = 1/32) a ReLU net's spread is within 20% of 2L
    (Gaussian) and L (orthogonal); 4 examples of one draw."""
    s = cfg(f"act={act}", *init, "bias=false", "depth=8", "width=256", "dtype=float64")
    frame = jacobian_spectrum(propbench.build_model(s), torch.randn(4, 256, dtype=torch.float64)).frame
    spread = (frame["var_sq"] / frame["mean_sq"] ** 2).groupby(frame["layer"]).mean()
    np.testing.assert_allclose(spread.to_numpy(), per_layer * spread.index.to_numpy(), rtol=0.2)
