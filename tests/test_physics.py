"""The measured propagation agrees with the known per-layer factors.

Sizes and tolerances: width 512, batch 256, 4 trials. Over 5 seeds, one trial's fitted
per-layer factor scatters by about 2% (ReLU + kaiming: sd 0.020; ReLU + default: sd 0.0034
around 0.169), so the mean of 4 trials scatters by about 1%; tolerances of 3.5-5% are
3.5-5 sd while the factors being told apart (1 vs 1.0625, 1/6, 1/2) differ by far more.
"""

import math

import numpy as np
import pytest

import propbench
from tests.conftest import cfg, layer_var, per_layer_factor

SIZE = ("width=512", "batch_size=256", "trials=4")


def measure(*overrides, depth=30):
    return propbench.run(cfg(f"depth={depth}", *SIZE, *overrides)).frame


def test_relu_kaiming_keeps_variance_forward_and_backward():
    frame = measure("act=relu", "init=kaiming")
    post = layer_var(frame)
    assert per_layer_factor(post) == pytest.approx(1.0, abs=0.035)
    assert np.all((post / post[0] > 0.5) & (post / post[0] < 2.0))
    assert per_layer_factor(layer_var(frame, "pre", "gradient")) == pytest.approx(1.0, abs=0.035)
    assert layer_var(frame, "pre")[0] == pytest.approx(2.0, rel=0.03)  # 2 x input variance 1


def test_relu_default_init_loses_six_fold_per_layer():
    # Var(W) = 1/(3 fan_in) and E[relu(x)^2] = Var(x)/2: factor 1/6 each way.
    frame = measure("act=relu", "init=default", "bias=false", depth=10)
    assert per_layer_factor(layer_var(frame)) == pytest.approx(1 / 6, rel=0.05)
    backward = layer_var(frame, "pre", "gradient")[::-1]  # in the order the gradient travels
    assert per_layer_factor(backward) == pytest.approx(1 / 6, rel=0.05)


def test_relu_default_init_settles_on_the_bias_floor():
    # q* = q*/6 + Var(bias), Var(bias) = 1/(3 fan_in)  =>  q* = (6/5) / (3 * 512)
    pre = layer_var(measure("act=relu", "init=default"), "pre")
    assert pre[-10:].mean() == pytest.approx(6 / 5 / (3 * 512), rel=0.08)


def test_relu_xavier_halves_per_layer():
    assert per_layer_factor(layer_var(measure("act=relu", "init=xavier"))) == pytest.approx(0.5, abs=0.02)


def test_prelu_needs_its_own_gain():
    flat = per_layer_factor(layer_var(measure("act=prelu", "init=kaiming")))
    relu_gain = per_layer_factor(layer_var(measure("act=prelu", "init=kaiming", f"init.gain={math.sqrt(2)}")))
    assert flat == pytest.approx(1.0, abs=0.035)
    assert relu_gain == pytest.approx(1 + 0.25**2, abs=0.035)  # 1.0625 per layer
    assert relu_gain - flat > 0.03


def selu_second_moment(q):
    """E[selu(sqrt(q) z)^2] and E[selu(sqrt(q) z)], z ~ N(0, 1), on a fine grid."""
    z = np.linspace(-12, 12, 200_001)
    density = np.exp(-z**2 / 2) / math.sqrt(2 * math.pi)
    alpha, scale = 1.6732632423543772, 1.0507009873554805
    x = math.sqrt(q) * z
    y = scale * np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))
    weights = np.full_like(z, z[1] - z[0])  # the trapezoid rule on a uniform grid (np.trapezoid
    weights[[0, -1]] /= 2                    # is NumPy >= 2 only)
    return float(weights @ (y**2 * density)), float(weights @ (y * density))


def test_selu_lecun_self_normalizes_and_pytorch_gain_decays():
    lecun = measure("act=selu", "init=lecun")
    post = lecun[(lecun.site == "post") & (lecun.quantity == "activation")].groupby("layer")
    assert post["var"].mean().iloc[9:].to_numpy() == pytest.approx(1.0, abs=0.05)
    assert post["mean"].mean().iloc[9:].abs().max() < 0.03

    # kaiming gives SELU PyTorch's gain 3/4: sigma_w^2 = 9/16 < 1. Mean-field recursion
    # q_{l+1} = (9/16) E[selu(sqrt(q_l) z)^2], q_1 = 9/16 (inputs have variance 1).
    measured = layer_var(measure("act=selu", "init=kaiming"))
    q, predicted = 9 / 16, []
    for _ in range(30):
        second, mean = selu_second_moment(q)
        predicted.append(second - mean**2)
        q = 9 / 16 * second
    assert measured[-1] < 0.1 * measured[0]  # decays ...
    np.testing.assert_allclose(measured, predicted, rtol=0.1)  # ... as the recursion says


def test_batchnorm_normalizes_every_layer():
    frame = measure("act=relu", "init=default", "model.norm=batchnorm", depth=10)
    assert layer_var(frame, "norm") == pytest.approx(1.0, abs=1e-3)
    assert per_layer_factor(layer_var(frame)) == pytest.approx(1.0, abs=0.01)


def test_inputs_and_weights_are_independent_streams():
    # Linear net, LeCun init: Var(pre_1) = Var(x) = 1. Drawing x from the weights' stream
    # makes x a copy of the first weight rows and doubles this (the classic bug).
    pre = layer_var(measure("act=linear", "init=lecun", depth=3), "pre")
    assert pre[0] == pytest.approx(1.0, rel=0.02)


def test_cnn_kaiming_fan_in_keeps_forward_and_default_loses_six_fold():
    common = ("model=cnn", "width=64", "batch_size=32", "model.image_size=16", "trials=2")
    kaiming = propbench.run(cfg("depth=20", "act=relu", "init=kaiming", *common)).frame
    assert per_layer_factor(layer_var(kaiming)) == pytest.approx(1.0, abs=0.05)
    default = propbench.run(cfg("depth=6", "act=relu", "init=default", "bias=false", *common)).frame
    assert per_layer_factor(layer_var(default)[1:]) == pytest.approx(1 / 6, rel=0.08)


def test_float64_extends_the_range_before_overflow():
    common = ("init=normal", "init.std=3", "depth=120", "width=64", "batch_size=32")
    f32 = propbench.run(cfg(*common)).summary["activation"]["first_nonfinite_layer"]
    f64 = propbench.run(cfg(*common, "dtype=float64")).summary["activation"]["first_nonfinite_layer"]
    # per layer the variance grows by width * std^2 / 2 = 288 (10^2.46); elements overflow
    # when the std passes 3.4e38 (float32) or 1.8e308 (float64): about layers 31 and 250
    assert 25 <= f32 <= 40
    assert f64 is None or f64 > 100
