import math

import pytest
import torch
from torch import nn

from propbench.activations import kaiming_gain, make_activation
from propbench.errors import ConfigError


@pytest.mark.parametrize("name, slope, gain", [
    ("relu", None, math.sqrt(2)),
    ("tanh", None, 5 / 3),
    ("selu", None, 3 / 4),  # PyTorch's table, not LeCun's 1
    ("sigmoid", None, 1.0),
    ("linear", None, 1.0),
    ("leaky_relu", 0.01, math.sqrt(2 / (1 + 0.01**2))),
    ("prelu", 0.25, math.sqrt(2 / (1 + 0.25**2))),  # the gap calculate_gain leaves
    ("gelu", None, math.sqrt(2)),  # kaiming_normal_'s default nonlinearity
])
def test_kaiming_gains(name, slope, gain):
    assert kaiming_gain(name, slope) == pytest.approx(gain, rel=1e-12)


def test_gains_match_calculate_gain_where_torch_has_one():
    assert kaiming_gain("leaky_relu", 0.2) == pytest.approx(nn.init.calculate_gain("leaky_relu", 0.2))
    for name in ("relu", "tanh", "selu", "sigmoid", "linear"):
        assert kaiming_gain(name) == pytest.approx(nn.init.calculate_gain(name))


def test_prelu_starts_at_its_slope():
    prelu = make_activation("prelu", 0.1)
    assert isinstance(prelu, nn.PReLU)
    assert prelu(torch.tensor([-2.0, 3.0])).tolist() == pytest.approx([-0.2, 3.0])


def test_unknown_activation_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="act=nope: unknown; choose one of relu"):
        make_activation("nope")
