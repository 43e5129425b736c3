"""Mean-field theory against closed forms, and measurement against theory."""

import math

import numpy as np
import pytest

import propbench
from propbench import theory
from propbench.activations import ACTIVATIONS
from tests.conftest import cfg

PDF0 = 1 / math.sqrt(2 * math.pi)


@pytest.mark.parametrize("q", [0.01, 1.0, 3.0, 1e4])
def test_rectifier_moments_are_exact(q):
    mean, second, dsecond = theory.moments("relu", q)
    assert second == pytest.approx(q / 2, rel=1e-12)
    assert mean == pytest.approx(math.sqrt(q) * PDF0, rel=1e-12)
    assert dsecond == pytest.approx(0.5, rel=1e-12)
    a = 0.25
    mean, second, _ = theory.moments("prelu", q, a)
    assert second == pytest.approx(q * (1 + a * a) / 2, rel=1e-12)
    assert mean == pytest.approx(math.sqrt(q) * (1 - a) * PDF0, rel=1e-12)


def _reference(act, q, points=2_000_001):
    """A brute-force check: Simpson's rule on a fine grid (smooth parts are exact to 1e-12)."""
    f = theory.phi(act).f
    z = np.linspace(-12, 12, points)
    y = f(math.sqrt(q) * z) * np.exp(-z * z / 2) * PDF0
    h = z[1] - z[0]
    return h / 3 * (y[0] + y[-1] + 4 * y[1:-1:2].sum() + 2 * y[2:-1:2].sum())


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_gaussian_means_to_1e8_for_every_activation(act):
    for q in (0.3, 2.0):
        assert theory.moments(act, q)[0] == pytest.approx(_reference(act, q), abs=1e-8)


def test_closed_forms_of_smooth_and_kinked_means():
    # GELU: E[x Phi(x)] = q E[phi_N(x)] = q / sqrt(2 pi (1 + q)) (Stein's lemma)
    for q in (0.5, 2.0):
        assert theory.moments("gelu", q)[0] == pytest.approx(q / math.sqrt(2 * math.pi * (1 + q)), abs=1e-10)
    # ELU at q = 1: 1/sqrt(2 pi) + e^{1/2} Phi(-1) - 1/2
    elu = PDF0 + math.exp(0.5) * 0.5 * math.erfc(1 / math.sqrt(2)) - 0.5
    assert theory.moments("elu", 1.0)[0] == pytest.approx(elu, abs=1e-12)
    # tanh at huge variance: 1 - E[tanh^2] = E[sech^2] ~ 2 phi(0) / sqrt(q)
    assert theory.moments("tanh", 1e6)[1] == pytest.approx(1 - 2 * PDF0 / 1e3, abs=1e-8)


def test_selu_with_sigma_w2_one_keeps_mean_zero_and_variance_one():
    mean, second, _ = theory.moments("selu", 1.0)
    assert abs(mean) < 1e-12 and second == pytest.approx(1.0, abs=1e-12)
    predicted = theory.predict("selu", 1.0, 0.0, depth=30)
    np.testing.assert_allclose(predicted.post_var, 1.0, atol=1e-10)
    np.testing.assert_allclose(predicted.post_mean, 0.0, atol=1e-10)


def test_pytorch_default_relu_shrinks_six_fold_without_bias():
    predicted = theory.predict("relu", 1 / 3, 0.0, depth=10)
    np.testing.assert_allclose(predicted.q[1:] / predicted.q[:-1], 1 / 6, rtol=1e-12)
    np.testing.assert_allclose(predicted.chi, 1 / 6, rtol=1e-12)


def test_tanh_edge_of_chaos_at_sigma_b2_005():
    # Schoenholz et al. 2017, fig. 1: sigma_w^2 ~ 1.76 at sigma_b^2 = 0.05
    assert theory.critical_sigma_w2("tanh", 0.05) == pytest.approx(1.76, abs=0.01)
    assert theory.critical_sigma_w2("relu", 0.0) == pytest.approx(2.0, rel=1e-9)
    assert theory.chi1("tanh", 1.5, 0.05) < 1 < theory.chi1("tanh", 2.5, 0.05)


def test_c_map_against_the_arc_cosine_kernel():
    for c in (-0.9, 0.0, 0.5, 0.99):
        t = math.acos(c)
        exact = 2.0 / (2 * math.pi) * (math.sin(t) + (math.pi - t) * c)
        assert theory.correlation_product("relu", 2.0, 2.0, c) == pytest.approx(exact, abs=1e-10)
    assert theory.correlation_product("tanh", 1.3, 1.3, 1.0) == pytest.approx(
        theory.moments("tanh", 1.3)[1], abs=1e-12)


def _relu_kernel(q, c):
    """E[relu(u1) relu(u2)], the arc-cosine kernel of degree 1 (Cho & Saul 2009), written
    without cancellation near c = +-1: pi - acos(c) = acos(-c), 1 - c^2 = (1 - c)(1 + c)."""
    return q / (2 * math.pi) * (math.sqrt((1 - c) * (1 + c)) + math.acos(-c) * c)


NEAR_ONE = [sign * (1 - m * 10.0**-e) for e in range(1, 11) for m in (1, 3) for sign in (1, -1)]


@pytest.mark.parametrize("act, slope", [("relu", None), ("leaky_relu", 0.01), ("prelu", 0.25),
                                        ("prelu", -0.5)])
def test_c_map_of_rectifiers_near_c_one_matches_the_closed_form_to_1e14(act, slope):
    # phi(x) = a x + (1 - a) relu(x) and E[u1 relu(u2)] = c q / 2, so
    # E[phi(u1) phi(u2)] = a q c + (1 - a)^2 * the ReLU kernel. The bend the inner average
    # makes of the kink has width sqrt(1 - c^2): 1 - c from 1e-1 to 1e-10 (and c near -1)
    # tests its breakpoints; unresolved it cost 5.9e-9 (ReLU, 1 - c = 2e-5).
    a = 0.0 if slope is None else slope
    for q in (0.5, 2.0, 1e4):
        for c in NEAR_ONE:
            exact = a * q * c + (1 - a) ** 2 * _relu_kernel(q, c)
            assert theory.correlation_product(act, q, q, c, slope) == pytest.approx(exact, abs=1e-14 * q)


def test_selu_c_map_near_c_one_to_1e14():
    # 30-digit values at q = 1: the inner mean of SELU in closed form (erfc, exp), the outer
    # integral by mpmath's adaptive quadrature split at the bend
    reference = {2: 0.9893602184730145, 4: 0.9998929177029569, 6: 0.9999989285001074,
                 8: 0.9999999892843251, 10: 0.9999999998928426}
    for e, value in reference.items():
        assert theory.correlation_product("selu", 1.0, 1.0, 1 - 10.0**-e) == pytest.approx(value, abs=1e-14)


def test_fixed_points_and_depth_scales():
    ordered = theory.depth_scales("tanh", 1.5, 0.05)
    assert ordered["c_star"] == 1.0
    assert ordered["xi_c"] == pytest.approx(-1 / math.log(ordered["chi_1"]), rel=1e-9)
    assert ordered["q_star"] == pytest.approx(theory.qmap("tanh", ordered["q_star"], 1.5, 0.05), rel=1e-9)
    chaotic = theory.depth_scales("tanh", 3.0, 0.05)
    assert chaotic["chi_1"] > 1 and chaotic["c_star"] < 1
    critical = theory.depth_scales("relu", 2.0, 0.0)
    assert critical["xi_q"] == math.inf and critical["xi_c"] == math.inf
    assert theory.fixed_point("relu", 2.0, 0.1) == math.inf


def test_auto_gain():
    assert theory.auto_gain("relu") == pytest.approx(math.sqrt(2), rel=1e-12)
    assert theory.auto_gain("prelu", 0.25) == pytest.approx(math.sqrt(2 / 1.0625), rel=1e-12)
    assert theory.auto_gain("selu") == pytest.approx(1.0, rel=1e-12)  # LeCun's, not 3/4
    assert 1.5 < theory.auto_gain("tanh") < 5 / 3  # calculate_gain says 5/3
    assert theory.auto_gain("gelu") > math.sqrt(2)  # the borrowed sqrt(2) is too small


def test_frame_carries_theory_and_summary_states_it(tmp_path):
    result = propbench.run(cfg("depth=4", "width=64", "batch_size=32", "act=tanh", "init=xavier"), tmp_path)
    frame, block = result.frame, result.summary["theory"]
    assert frame.loc[frame.site == "pre", "theory"].notna().all()
    assert block["applies"] and {"chi_1", "q_star", "xi_q", "xi_c", "c_star"} <= set(block)
    assert propbench.load(tmp_path)["theory"].notna().any()
    bn = propbench.run(cfg("depth=4", "width=64", "batch_size=32", "model.norm=batchnorm"))
    assert bn.frame["theory"].isna().all()
    assert not bn.summary["theory"]["applies"] and "BatchNorm" in bn.summary["theory"]["note"]


def test_uniform_and_normal_of_equal_variance_share_a_prediction():
    std = 0.05
    normal = propbench.run(cfg("depth=3", "width=32", "batch_size=8", "init=normal", f"init.std={std}")).frame
    bound = std * math.sqrt(3)
    uniform = propbench.run(cfg("depth=3", "width=32", "batch_size=8", "init=uniform",
                                f"init.a={-bound}", f"init.b={bound}")).frame
    np.testing.assert_allclose(normal["theory"], uniform["theory"], rtol=1e-12)
    skewed = propbench.run(cfg("depth=3", "width=32", "batch_size=8", "init=uniform", "init.a=0", "init.b=0.1")).frame
    assert skewed["theory"].isna().all()  # non-zero-mean weights: no prediction


def test_scaled_init_and_auto_gain_draw_what_they_say():
    model = propbench.build_model(cfg("depth=2", "width=512", "init=scaled", "init.sigma_w2=2.5",
                                      "init.sigma_b2=0.3"))
    layer = model.blocks[0].linear
    assert layer.weight.var().item() == pytest.approx(2.5 / 512, rel=0.02)
    assert layer.bias.var().item() == pytest.approx(0.3, rel=0.25)  # 512 draws: sd 6%
    auto = propbench.build_model(cfg("depth=1", "width=512", "act=gelu", "init=kaiming", "init.gain=auto"))
    assert auto.blocks[0].linear.weight.var().item() == pytest.approx(
        theory.auto_gain("gelu") ** 2 / 512, rel=0.02)


# Measurement against theory. Mean-field theory predicts the expectation over weight draws;
# one draw scatters around it. For a ReLU net the log of a layer's squared norm has variance
# about 5 l / n at depth l and width n (Hanin & Nica 2019, "Products of many large random
# matrices and gradients in deep neural networks"); the batch hardly helps, since the
# scatter comes from the shared weights. Averaging T independent draws divides it by T, so
# we hold layer l to 3.5 sd, 3.5 sqrt(5 l / (n T)) (+1% for the batch's own sampling
# noise): 5% at layer 1 and 16% at layer 10 for n = 1024, T = 24. Smoother activations
# scatter less. (Measured, ReLU + kaiming, n = 1024, T = 2, 4 seeds: layer 1 within 0.5%,
# layer 10 within 6-21%, as this law says.)
def tolerance(width, trials, depth):
    return 3.5 * np.sqrt(5 * np.arange(1, depth + 1) / (width * trials)) + 0.01


MATCHED = {"relu": "kaiming", "leaky_relu": "kaiming", "prelu": "kaiming", "elu": "kaiming",
           "gelu": "kaiming", "silu": "kaiming", "tanh": "xavier", "sigmoid": "xavier",
           "linear": "lecun", "selu": "lecun"}


def deviation(frame, quantity, site):
    rows = frame[(frame.site == site) & (frame.quantity == quantity)].groupby("layer")
    return np.abs(rows["var"].mean().to_numpy() / rows["theory"].first().to_numpy() - 1)


@pytest.mark.slow
@pytest.mark.parametrize("act", sorted(MATCHED))
@pytest.mark.parametrize("init", ["matched", "default"])
def test_measured_activation_variance_follows_theory(act, init):
    scheme = MATCHED[act] if init == "matched" else "default"
    width, trials, depth = 1024, 24, 10
    frame = propbench.run(cfg(f"act={act}", f"init={scheme}", f"depth={depth}", f"width={width}",
                              "batch_size=32", f"trials={trials}")).frame
    assert np.all(deviation(frame, "activation", "post") < tolerance(width, trials, depth))
    assert np.all(deviation(frame, "activation", "pre") < tolerance(width, trials, depth))


@pytest.mark.parametrize("act, init", [("relu", "kaiming"), ("tanh", "xavier"), ("selu", "lecun"),
                                       ("relu", "default")])
def test_measured_variance_follows_theory_quick(act, init):
    width, trials, depth = 512, 16, 6
    frame = propbench.run(cfg(f"act={act}", f"init={init}", f"depth={depth}", f"width={width}",
                              "batch_size=32", f"trials={trials}")).frame
    for quantity, site in (("activation", "post"), ("gradient", "pre")):
        assert np.all(deviation(frame, quantity, site) < tolerance(width, trials, depth)), quantity


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_numpy_twins_equal_the_torch_activations(act):
    import torch

    from propbench.activations import make_activation

    slope = {"leaky_relu": 0.01, "prelu": 0.25}.get(act)
    x = torch.linspace(-6, 6, 1001, dtype=torch.float64, requires_grad=True)
    module = make_activation(act, slope).double()
    y = module(x)
    (grad,) = torch.autograd.grad(y.sum(), x)
    twin = theory.phi(act, slope)
    np.testing.assert_allclose(twin.f(x.detach().numpy()), y.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(twin.df(x.detach().numpy()), grad.numpy(), atol=1e-12)


def test_cnn_theory_column_is_the_recursion_with_conv_fans_and_its_head():
    """The CNN branch: fan_in = channels * k^2, the head's cotangent W^T g / (H W), no
    prediction for weight gradients (positions share weights) and none with pooling."""
    from propbench.inits import layer_variances

    overrides = ("model=cnn", "depth=3", "width=8", "model.image_size=6", "batch_size=4",
                 "init=kaiming")
    result = propbench.run(cfg(*overrides))
    frame, block = result.frame, result.summary["theory"]
    assert block["applies"] and block["note"].startswith("mean-field recursion per pixel with zero padding")
    assert block["sigma_w2"] == pytest.approx(2.0)  # He: fan_in Var(W) = 2 in every layer
    pre = frame[(frame.quantity == "activation") & (frame.site == "pre")].groupby("layer")["theory"].first()
    # layer 1: sigma_w2 times the share of the 3x3 taps inside a 6x6 image, (16/18)^2
    assert pre.iloc[0] == pytest.approx(2.0 * (16 / 18) ** 2)
    assert (np.diff(pre.to_numpy()) < 0).all()  # the borders keep taking their share
    weights = frame[(frame.quantity == "gradient") & (frame.site == "weight")]
    assert weights["theory"].isna().all()
    model = propbench.build_model(cfg(*overrides))
    (_, _, head_back), = layer_variances([model.head[-1]], model_init(overrides), "relu")
    grad_post = frame[(frame.quantity == "gradient") & (frame.site == "post")]
    last = grad_post[grad_post.layer == 3]["theory"].iloc[0]
    assert last == pytest.approx(head_back / 6**4)  # the cotangent W^T g / (H W) per position
    pooled = propbench.run(cfg(*overrides, "model.stage_every=1", "model.pool=avg"))
    assert pooled.frame["theory"].isna().all() and "pooling" in pooled.summary["theory"]["note"]


def model_init(overrides):
    return propbench.settings(cfg(*overrides)).init


def test_input_pairs_follow_the_c_map_to_order_or_chaos():
    common = ("act=tanh", "init=scaled", "init.sigma_b2=0.05", "depth=40", "width=512",
              "batch_size=128", "trials=2")
    chaotic = propbench.run(cfg(*common, "init.sigma_w2=3", "correlation=0.9")).frame
    ordered = propbench.run(cfg(*common, "init.sigma_w2=1.2", "correlation=0.3")).frame
    for frame, c_star in ((chaotic, theory.correlation_fixed_point("tanh", 3.0, 0.05)),
                          (ordered, 1.0)):
        rows = frame[(frame.quantity == "correlation") & (frame.site == "pre")].groupby("layer")
        measured, predicted = rows["mean"].mean().to_numpy(), rows["theory"].first().to_numpy()
        # 64 pairs x 2 trials of 512-unit cosines: the mean scatters by ~1%; c-map at width 512
        np.testing.assert_allclose(measured, predicted, atol=0.04)
        distance = np.abs(predicted - c_star)
        assert np.all(np.diff(distance) <= 1e-12) and distance[-1] < 0.05  # converging on c*
    assert ordered[ordered.quantity == "correlation"]["mean"].iloc[-1] > 0.95
    assert chaotic[chaotic.quantity == "correlation"]["mean"].iloc[-1] < 0.5


@pytest.mark.parametrize("overrides, message", [
    (["correlation=2"], "correlation=2.0: must be between -1 and 1"),
    (["correlation=0.5", "batch_size=7"], "batch_size=7: correlation needs pairs"),
    (["init=orthogonal", "init.gain=auto"], "init.gain=auto: only kaiming"),
    (["init=kaiming", "init.gain=abc"], "init.gain=abc: must be a number > 0, auto or null"),
    (["init=scaled", "init.sigma_b2=-1"], "init.sigma_b2=-1.0: must be a finite number >= 0"),
    (["init=scaled", "init.gain=2"], "init.gain=2: init=scaled takes only"),
])
def test_theory_options_are_validated(overrides, message):
    from propbench.config import settings
    from propbench.errors import ConfigError

    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        settings(cfg(*overrides))


def test_zero_padding_loses_the_missing_taps_share():
    # layer 1 of a 3x3 'same' conv on 16x16 standard-normal inputs: an edge row/column sees
    # 2 of 3 taps, so each dimension keeps on average 1 - 2 (1/3) / 16 = 23/24 of the input
    biased = theory.predict_conv("relu", 2.0, 0.1, 1, image_size=16, kernel_size=3)
    assert biased.q[0] == pytest.approx(2.0 * (23 / 24) ** 2 + 0.1, rel=1e-12)
    predicted = theory.predict_conv("relu", 2.0, 0.0, 24, image_size=16, kernel_size=3)
    loss = 1 - predicted.q[1:] / predicted.q[:-1]  # per layer: 5.7% at layer 2, 2.5% at 24
    assert np.all(np.diff(loss) < 0) and 0.02 < loss[-1] < 0.03
    pointwise = theory.predict_conv("tanh", 1.5, 0.05, 5, image_size=7, kernel_size=1)
    flat = theory.predict("tanh", 1.5, 0.05, 5)  # 1x1 convolutions: no border, the MLP's
    for field in ("q", "post_var", "chi", "grad_pre_var"):
        np.testing.assert_allclose(getattr(pointwise, field), getattr(flat, field), rtol=1e-12)


def test_wide_cnn_follows_the_padded_recursion():
    # 256 channels on 4x4 images, where the borders are most of the image. Measured over 16
    # trials, the per-trial sd of ln(var) is 0.08-0.11 for activations and 0.12-0.14 for
    # gradients (the head's 10 outputs make the cotangent noisy), layers 1-4; the mean of 8
    # trials scatters by 0.14 / sqrt(8) = 0.05, and we allow 0.2 (4 sd). Ignoring the borders
    # is off by 1.36x (layer 1) to 3.3x (layer 4) forward and 2.5x backward at layer 1.
    frame = propbench.run(cfg("model=cnn", "act=relu", "init=kaiming", "depth=4", "width=256",
                              "batch_size=8", "trials=8", "model.image_size=4")).frame
    for quantity, site in (("activation", "post"), ("activation", "pre"), ("gradient", "pre")):
        assert np.all(deviation(frame, quantity, site) < 0.2), (quantity, site)
    flat = theory.predict("relu", 2.0, 0.0, 4)
    rows = frame[(frame.quantity == "activation") & (frame.site == "post")]
    assert np.all(rows.groupby("layer")["var"].mean().to_numpy() * 1.3 < flat.post_var)
