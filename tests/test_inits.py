"""Each scheme draws what its formula says, and the same numbers as torch's own functions."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from propbench.inits import INITS, BiasInit, Mode, init_model, resolve_gain, variance_scaling_


def init_cfg(name, **params):
    """The scheme ``name`` with its defaults, bias zeroed where it has one, and ``params``."""
    scheme = INITS[name]()
    for key, value in {"bias": "zeros", **params}.items():
        if hasattr(scheme, key):
            setattr(scheme, key, {"bias": BiasInit, "mode": Mode}.get(key, lambda v: v)(value))
    return scheme


# 512 x 512 weights: the sample variance of 262144 draws is within 1% (4 sd is 0.8%).
FAN = 512


@pytest.mark.parametrize("name, act, slope, expected_var", [
    ("kaiming", "relu", None, 2 / FAN),
    ("kaiming_uniform", "relu", None, 2 / FAN),
    ("kaiming", "prelu", 0.25, 2 / (1 + 0.0625) / FAN),
    ("kaiming", "selu", None, (3 / 4) ** 2 / FAN),
    ("kaiming", "tanh", None, (5 / 3) ** 2 / FAN),
    ("xavier", "relu", None, 2 / (FAN + FAN)),
    ("xavier_uniform", "relu", None, 2 / (FAN + FAN)),
    ("lecun", "selu", None, 1 / FAN),
    ("orthogonal", "relu", None, 1 / FAN),
    ("normal", "relu", None, 0.01**2),
    ("uniform", "relu", None, 0.1**2 / 12),
    ("default", "relu", None, 1 / (3 * FAN)),  # kaiming_uniform_(a=sqrt(5))
])
def test_weight_variance_matches_the_formula(name, act, slope, expected_var):
    layer = nn.Linear(FAN, FAN)
    torch.manual_seed(0)
    init_model(layer, init_cfg(name), act, slope)
    assert layer.weight.var().item() == pytest.approx(expected_var, rel=0.01)


def test_conv_fan_is_channels_times_kernel_area():
    conv = nn.Conv2d(64, 32, 3)
    torch.manual_seed(0)
    init_model(conv, init_cfg("kaiming", mode="fan_in"), "relu")
    assert conv.weight.var().item() == pytest.approx(2 / (64 * 9), rel=0.02)
    init_model(conv, init_cfg("kaiming", mode="fan_out"), "relu")
    assert conv.weight.var().item() == pytest.approx(2 / (32 * 9), rel=0.02)


@pytest.mark.parametrize("ours, theirs", [
    (("kaiming", "relu"), lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu")),
    (("kaiming_uniform", "relu"), lambda w: nn.init.kaiming_uniform_(w, nonlinearity="relu")),
    (("kaiming", "tanh"), lambda w: nn.init.kaiming_normal_(w, nonlinearity="tanh")),
    (("xavier", "relu"), lambda w: nn.init.xavier_normal_(w)),
    (("xavier_uniform", "relu"), lambda w: nn.init.xavier_uniform_(w)),
    (("orthogonal", "relu"), lambda w: nn.init.orthogonal_(w)),
])
def test_same_numbers_as_torch_init(ours, theirs):
    a, b = nn.Linear(64, 32), nn.Linear(64, 32)
    torch.manual_seed(3)
    init_model(a, init_cfg(ours[0]), ours[1])
    torch.manual_seed(3)
    theirs(b.weight)
    assert torch.equal(a.weight, b.weight)


def test_default_is_reset_parameters_with_its_bias():
    a, b = nn.Linear(64, 32), nn.Linear(64, 32)
    torch.manual_seed(1)
    a.reset_parameters()
    torch.manual_seed(1)
    init_model(b, init_cfg("default", bias="default"), "relu")
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert b.bias.abs().max() <= 1 / math.sqrt(64)


def test_bias_zeros_or_default_and_batchnorm_reset():
    net = nn.Sequential(nn.Linear(16, 16), nn.BatchNorm1d(16))
    with torch.no_grad():
        net[1].weight.fill_(3.0)
        net[1].bias.fill_(2.0)
    init_model(net, init_cfg("kaiming", bias="zeros"), "relu")
    assert torch.count_nonzero(net[0].bias) == 0
    assert torch.all(net[1].weight == 1) and torch.all(net[1].bias == 0)
    init_model(net, init_cfg("kaiming", bias="default"), "relu")
    assert torch.count_nonzero(net[0].bias) == 16
    assert net[0].bias.abs().max() <= 1 / 4  # U(-1/sqrt(fan_in), 1/sqrt(fan_in))


def test_gain_resolution():
    assert resolve_gain(init_cfg("kaiming"), "prelu", 0.25) == pytest.approx(math.sqrt(2 / 1.0625))
    assert resolve_gain(init_cfg("xavier"), "relu") == 1.0  # Glorot's gain, whatever the act
    assert resolve_gain(init_cfg("kaiming", gain=0.5), "relu") == 0.5  # explicit wins


def test_orthogonal_is_orthogonal_with_gain():
    layer = nn.Linear(64, 64)
    init_model(layer, init_cfg("orthogonal", gain=2.0), "relu")
    w = layer.weight.detach()
    assert torch.allclose(w @ w.T, 4 * torch.eye(64), atol=1e-4)


def test_variance_scaling_fan_avg():
    w = variance_scaling_(torch.empty(256, 1024), scale=1.0, mode="fan_avg")
    assert w.var().item() == pytest.approx(2 / (256 + 1024), rel=0.02)


# --- delta-orthogonal, orthogonal convolutions, LSUV ---------------------------------------

def test_delta_orthogonal_is_orthogonal_at_the_centre_and_zero_elsewhere():
    conv = nn.Conv2d(8, 16, 5)
    torch.manual_seed(0)
    init_model(conv, init_cfg("delta_orthogonal", gain=2.0), "tanh")
    w = conv.weight.detach()
    centre = w[:, :, 2, 2]
    assert torch.allclose(centre.T @ centre, 4 * torch.eye(8), atol=1e-5)  # orthonormal columns
    off = w.clone()
    off[:, :, 2, 2] = 0
    assert torch.count_nonzero(off) == 0
    # fan_in * Var(W) over the whole kernel is gain^2 fan_in / max(fan_in, fan_out), as orthogonal
    fan_in, fan_out = 8 * 25, 16 * 25
    assert float(w.pow(2).mean()) * fan_in == pytest.approx(4 * fan_in / max(fan_in, fan_out), rel=1e-5)
    square = nn.Conv2d(16, 16, 3)
    init_model(square, init_cfg("delta_orthogonal"), "tanh")
    c = square.weight.detach()[:, :, 1, 1]
    assert torch.allclose(c @ c.T, torch.eye(16), atol=1e-5)  # square: orthogonal both ways


def test_delta_orthogonal_refuses_fewer_outputs_than_inputs():
    from propbench.errors import ConfigError
    from propbench.inits import delta_orthogonal_

    with pytest.raises(ConfigError, match="4 output channels < 8 input channels"):
        delta_orthogonal_(torch.empty(4, 8, 3, 3))
    linear = nn.Linear(8, 4)  # a Linear layer (the CNN head) gets plain orthogonal rows
    init_model(linear, init_cfg("delta_orthogonal"), "tanh")
    assert torch.allclose(linear.weight @ linear.weight.T, torch.eye(4), atol=1e-5)


def test_orthogonal_conv_is_orthogonal_flattened_as_torch_does():
    conv = nn.Conv2d(32, 16, 3)  # out 16 <= in * k^2 = 288: orthonormal rows
    torch.manual_seed(2)
    init_model(conv, init_cfg("orthogonal"), "relu")
    flat = conv.weight.detach().reshape(16, -1)
    assert torch.allclose(flat @ flat.T, torch.eye(16), atol=1e-5)
    torch.manual_seed(2)
    reference = nn.init.orthogonal_(torch.empty(16, 32, 3, 3))
    assert torch.equal(conv.weight.detach(), reference)


@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_lsuv_reaches_unit_variance_per_layer(act):
    """Mishkin & Matas 2016: every Linear output has variance within tol of 1 on the inputs
    it was calibrated on, in forward order; with zero biases one rescaling is exact."""
    import propbench
    from propbench.models import draw_inputs
    from propbench.probes import probe
    from tests.conftest import cfg

    s = propbench.settings(cfg(f"act={act}", "init=lsuv", "depth=12", "width=128", "batch_size=128"))
    model = propbench.build_model(s, seed=5, input_seed=9)
    record = model.calibration
    assert len(record["variances"]) == 12
    assert all(abs(v - 1) <= 0.1 for v in record["variances"])
    assert all(0 <= i <= 10 for i in record["iterations"]) and sum(record["iterations"]) > 0
    frame = probe(model, draw_inputs(s, model.input_shape, 9))  # the same inputs
    pre = frame[(frame.site == "pre") & (frame.quantity == "activation")]["var"].to_numpy()
    np.testing.assert_allclose(pre, record["variances"], rtol=1e-5)
    assert np.abs(pre - 1).max() <= 0.1
    rescaled = np.array(record["iterations"]) > 0  # zero biases: exact after one rescaling
    assert np.abs(pre[rescaled] - 1).max() < 1e-4


def test_lsuv_iterates_with_a_bias_and_stops_at_max_iter():
    from propbench.inits import lsuv_

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 64))
    with torch.no_grad():
        for layer in (net[0], net[2]):
            layer.bias.normal_(0, 0.5)  # Var(s Wx + b) != s^2 Var(Wx): more than one step
    x = torch.randn(256, 64)
    strict = lsuv_(net, x, tol=1e-6, max_iter=50)
    assert all(abs(v - 1) <= 1e-6 for v in strict["variances"])
    assert max(strict["iterations"]) > 1
    with torch.no_grad():
        net[0].weight.mul_(100.0)
    capped = lsuv_(net, x, tol=1e-12, max_iter=1)
    assert capped["iterations"] == [1, 1]
