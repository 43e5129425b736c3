import math

import numpy as np
import pandas as pd
import pytest

import torch

import propbench
from propbench.verdict import describe, range_warning, summarize


def synthetic(post_var, grad_var, nonfinite_layer=None, quantity="activation"):
    rows = []
    for layer, (pv, gv) in enumerate(zip(post_var, grad_var), start=1):
        bad = int(layer == nonfinite_layer)
        rows.append(dict(trial=0, layer=layer, site="post", quantity="activation", var=pv,
                         nonfinite=bad if quantity == "activation" else 0))
        rows.append(dict(trial=0, layer=layer, site="pre", quantity="gradient", var=gv,
                         nonfinite=bad if quantity == "gradient" else 0))
    return pd.DataFrame(rows)


@pytest.mark.parametrize("end, verdict", [(1.0, "stable"), (9.0, "stable"), (0.11, "stable"),
                                          (0.09, "vanishing"), (11.0, "exploding")])
def test_thresholds_are_a_factor_ten(end, verdict):
    result = summarize(synthetic([1.0, 1.0, end], [1.0, 1.0, 1.0]))["activation"]
    assert result["verdict"] == verdict
    assert result["log10_ratio"] == pytest.approx(math.log10(end))


def test_gradient_ratio_is_first_over_last_layer():
    # the backward signal enters at the last layer: 4 there, 0.004 at layer 1 -> vanishing
    result = summarize(synthetic([1, 1, 1], [0.004, 0.04, 4.0]))["gradient"]
    assert result["log10_ratio"] == pytest.approx(-3)
    assert result["verdict"] == "vanishing"
    assert (result["start_var"], result["end_var"]) == (4.0, 0.004)


def test_overflow_is_exploding_and_located_in_travel_direction():
    forward = summarize(synthetic([1, np.inf, np.nan, np.nan], [1] * 4, nonfinite_layer=2))
    assert forward["activation"]["verdict"] == "exploding"
    assert forward["activation"]["first_nonfinite_layer"] == 2
    frame = synthetic([1] * 4, [np.nan, np.nan, 1, 1])
    frame.loc[(frame.quantity == "gradient") & frame.layer.isin([1, 2]), "nonfinite"] = 5
    backward = summarize(frame)["gradient"]
    assert backward["first_nonfinite_layer"] == 2  # the backward pass reaches layer 2 first
    assert backward["verdict"] == "exploding"
    assert "non-finite values from layer 2" in describe("gradient", backward)


def test_exact_zero_is_vanishing():
    result = summarize(synthetic([1.0, 1e-30, 0.0], [1, 1, 1]))["activation"]
    assert result["verdict"] == "vanishing" and result["log10_ratio"] == -math.inf
    assert "exactly 0" in describe("activation", result)


def test_trials_are_averaged():
    a, b = synthetic([1.0, 10.0], [1, 1]), synthetic([1.0, 30.0], [1, 1])
    b["trial"] = 1
    result = summarize(pd.concat([a, b]))["activation"]
    assert result["ratio"] == pytest.approx(20.0)


def test_dead_signal_is_vanishing_not_nan():
    # activations underflowed to 0, so every gradient is exactly 0 as well
    result = summarize(synthetic([1.0, 0.0, 0.0], [0.0, 0.0, 0.0]))["gradient"]
    assert result["verdict"] == "vanishing" and result["log10_ratio"] == -math.inf
    assert result["ratio"] == 0.0


def test_extreme_float64_ratios_do_not_overflow():
    result = summarize(synthetic([1e-300, 1.0, 1e300], [1, 1, 1]))["activation"]
    assert result["log10_ratio"] == pytest.approx(600)
    assert result["verdict"] == "exploding" and result["ratio"] == math.inf


def test_weight_gradient_nan_does_not_count_as_the_signal_overflowing():
    frame = synthetic([1, 1, 1], [1, 1, 1])
    weight = frame[frame.quantity == "gradient"].assign(site="weight", nonfinite=0)
    weight.loc[weight.layer == 3, "nonfinite"] = 7  # its forward input overflowed
    result = summarize(pd.concat([frame, weight]))["gradient"]
    assert result["first_nonfinite_layer"] is None


def test_a_constant_is_not_an_underflow():
    """A zero variance after a healthy one is a constant signal (a zero-initialized layer, a
    saturated gate); after a variance below TINY_VARIANCE it is an underflow."""
    constant = summarize(synthetic([1.0, 0.5, 0.0, 0.0], [1, 1, 1, 1]))["activation"]
    assert constant["first_zero_layer"] is None and constant["first_constant_layer"] == 3
    underflow = summarize(synthetic([1.0, 1e-20, 1e-80, 0.0], [1, 1, 1, 1]))["activation"]
    assert underflow["first_zero_layer"] == 4 and underflow["first_constant_layer"] is None
    assert "constant" in range_warning({"activation": constant}, "float32")
    assert "underflowed to 0 from layer 4" in range_warning({"activation": underflow}, "float32")


def test_one_unit_one_example_is_constant_not_underflow():
    frame = propbench.probe(torch.nn.Sequential(torch.nn.Linear(1, 1), torch.nn.ReLU()),
                            torch.ones(1, 1))
    result = summarize(frame)["activation"]
    assert result["first_constant_layer"] == 1 and result["first_zero_layer"] is None
