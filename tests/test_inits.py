"""Each scheme draws what its formula says, and the same numbers as torch's own functions."""

import math
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
