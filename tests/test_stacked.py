"""Trials stacked into one network give each trial the statistics of its own network."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

import propbench
from propbench import devices
from propbench.config import settings
from propbench.errors import ConfigError
from propbench.models import build_model
from propbench.probes import probe, probe_trials
from propbench.runner import draw_inputs, execute
from propbench.stacked import stack

from .conftest import cfg, layer_var, per_layer_factor

STATS = ["var", "second_moment", "channel_var"]


def sequential_and_stacked(overrides, trials=3, pairs=False):
    s = settings(cfg(*overrides))
    models = [build_model(s, seed=100 + t) for t in range(trials)]
    inputs = [draw_inputs(s, models[0].input_shape, 200 + t) for t in range(trials)]
    seeds = [300 + t for t in range(trials)]
    sequential = pd.concat(
        [probe(m, x, m.probed_modules(), seed=g, pairs=pairs).assign(trial=t)
         for t, (m, x, g) in enumerate(zip(models, inputs, seeds))],
        ignore_index=True,
    )
    stacked = probe_trials(stack(models), inputs, seeds=seeds, pairs=pairs)
    return sequential[stacked.columns], stacked


def assert_same(sequential, stacked, rtol):
    numbers = ["mean", *STATS, "channel_mean_sq"]
    pd.testing.assert_frame_equal(sequential.drop(columns=numbers), stacked.drop(columns=numbers))
    for column in STATS:
        np.testing.assert_allclose(stacked[column], sequential[column], rtol=rtol, err_msg=column)
    scale = np.sqrt(sequential["second_moment"])  # means can be ~0 (BatchNorm): absolute
    np.testing.assert_array_less(np.abs(stacked["mean"] - sequential["mean"]), rtol * scale + 1e-300)


@pytest.mark.parametrize("overrides", [
    ["act=relu", "init=default"],
    ["act=prelu", "init=kaiming", "bias=false"],
    ["act=tanh", "model.norm=batchnorm"],
    ["model=cnn", "width=4", "model.image_size=8", "model.stage_every=2", "model.pool=max"],
    ["model=cnn", "width=4", "model.image_size=8", "model.norm=batchnorm", "act=selu"],
    ["model=resmlp", "init=kaiming"],
    ["model=resmlp", "model.norm=layernorm", "model.alpha=inv_sqrt_depth", "act=tanh"],
    ["model=resmlp", "model.order=post", "model.norm=batchnorm", "model.branch_layers=3"],
    ["model=resmlp", "model.nf=true", "model.alpha=0.2"],
    ["model=resmlp", "init=fixup"],
    ["model=resnet", "width=4", "model.image_size=8", "model.stage_every=2",
     "model.channel_growth=2", "model.pool=avg", "model.nf=true"],
    ["model=resnet", "width=4", "model.image_size=8", "model.stage_every=2",
     "model.channel_growth=2", "model.norm=layernorm"],
    ["model=resnet", "width=4", "model.image_size=8", "model.stage_every=3",
     "model.channel_growth=2", "model.norm=batchnorm", "model.order=post", "model.pool=max"],
], ids=["relu", "prelu-nobias", "tanh-bn", "cnn-pool", "cnn-bn", "resmlp", "resmlp-ln",
        "resmlp-post-bn", "resmlp-nf", "resmlp-fixup", "resnet-nf", "resnet-gn", "resnet-post-bn"])
def test_each_trial_matches_its_own_network_float64(overrides):
    sequential, stacked = sequential_and_stacked(
        ["depth=5", "width=24", "batch_size=8", "dtype=float64", *overrides])
    assert sorted(stacked.trial.unique()) == [0, 1, 2]
    assert_same(sequential, stacked, rtol=1e-12)
    # the trials really differ: stacking did not copy one network three times
    first = stacked[stacked.trial == 0]["var"].to_numpy()
    assert not np.allclose(first, stacked[stacked.trial == 1]["var"].to_numpy())


def test_float32_and_pairs_match():
    sequential, stacked = sequential_and_stacked(
        ["depth=8", "width=32", "batch_size=16", "correlation=0.5", "act=tanh"], pairs=True)
    assert (stacked.quantity == "correlation").any()
    assert_same(sequential, stacked, rtol=1e-4)


def test_the_careful_pass_counts_the_same_overflow():
    """A net that overflows float32 part way: both paths fall back to the careful pass and
    count the same non-finite elements per layer."""
    overrides = ["depth=40", "width=32", "batch_size=8", "init=kaiming", "init.gain=40"]
    sequential, stacked = sequential_and_stacked(overrides)
    assert sequential["nonfinite"].sum() > 0
    np.testing.assert_array_equal(stacked["nonfinite"], sequential["nonfinite"])
    finite = np.isfinite(sequential["var"]) & (sequential["nonfinite"] == 0)
    np.testing.assert_allclose(stacked["var"][finite], sequential["var"][finite], rtol=1e-4)


def test_split_is_a_view_per_trial():
    s = settings(cfg("model=cnn", "depth=2", "width=3", "model.image_size=4", "batch_size=2"))
    stacked = stack([build_model(s, seed=t) for t in range(4)])
    x = stacked.merge([torch.full((2, 3, 4, 4), float(t)) for t in range(4)])
    assert x.shape == (2, 12, 4, 4)
    view = stacked.split(x)
    assert view.shape == (4, 2, 3, 4, 4) and view.data_ptr() == x.data_ptr()
    assert [view[t].unique().item() for t in range(4)] == [0.0, 1.0, 2.0, 3.0]
    weight = stacked.blocks[0].conv.weight
    assert stacked.split(weight, weight=True).shape == (4, 3, 3, 3, 3)


def test_run_in_chunks_equals_one_at_a_time():
    """trials=5 in stacked chunks of 2 (2 + 2 + 1) gives the frame of five single runs, and
    the physics of the stacked path is right: ReLU with torch's default init loses ~6x."""
    base = ["depth=6", "width=128", "batch_size=64", "trials=5", "dtype=float64", "bias=false"]
    one = execute(cfg(*base, "trial_batch=1"))
    chunked = execute(cfg(*base, "trial_batch=2"))
    assert chunked.summary["trials_at_once"] == 2
    assert sorted(chunked.frame.trial.unique()) == [0, 1, 2, 3, 4]
    assert_same(one.frame, chunked.frame, rtol=1e-11)  # float64 round-off of bmm vs addmm, 6 layers
    factor = per_layer_factor(layer_var(chunked.frame, "pre"))
    assert factor == pytest.approx(1 / 6, rel=0.1)


def test_trials_at_once():
    s = settings(cfg("trials=32", "depth=50", "width=256"))
    cpu = torch.device("cpu")
    per_trial = devices.estimate_bytes(s) - devices.estimate_bytes(s, 0)
    assert devices.trials_at_once(s, cpu) == min(32, devices.CPU_STACK_BYTES // per_trial) > 1
    big = settings(cfg("trials=32", "depth=50", "width=4096"))
    assert devices.trials_at_once(big, cpu) == 1  # 3.5 GiB of weights per trial
    assert devices.trials_at_once(settings(cfg("trials=5", "trial_batch=8")), cpu) == 5
    gpu = SimpleNamespace(type="cuda")
    original = devices.available_bytes
    try:
        devices.available_bytes = lambda device: 2 * (devices.estimate_bytes(s, 0) + 10 * per_trial)
        assert devices.trials_at_once(s, gpu) == 10
        devices.available_bytes = lambda device: 2**50
        assert devices.trials_at_once(s, gpu) == 32
    finally:
        devices.available_bytes = original


def test_a_stack_too_big_is_refused_naming_trial_batch():
    s = settings(cfg("trials=4", "trial_batch=4", "depth=50", "width=256"))
    original = devices.available_bytes
    try:
        devices.available_bytes = lambda device: devices.estimate_bytes(s, 2)
        with pytest.raises(ConfigError, match="4 trials at once.*lower trial_batch"):
            devices.check_memory(s, torch.device("cpu"), 4)
    finally:
        devices.available_bytes = original


def test_trial_batch_is_validated():
    with pytest.raises(ConfigError, match="trial_batch=0: must be >= 1"):
        propbench.run(cfg("trial_batch=0"))


def test_one_trial_shares_the_weights_of_its_network():
    """A single run is T = 1: its stacked network views the built one's weights, so a deep
    run never holds its weights twice."""
    for overrides in (["depth=3", "width=8"], ["model=cnn", "depth=2", "width=4", "model.image_size=4"]):
        model = build_model(settings(cfg(*overrides)))
        stacked = stack([model])
        for block, single in zip(stacked.blocks, model.blocks):
            weight = getattr(block, block.weight_name).weight
            assert weight.data_ptr() == getattr(single, single.weight_name).weight.data_ptr()
