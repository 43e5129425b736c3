import torch
from torch import nn

import propbench
from propbench.seeds import trial_seeds
from tests.conftest import cfg


def test_mlp_blocks_and_names():
    model = propbench.build_model(cfg("depth=3", "width=8", "act=prelu", "model.norm=batchnorm"))
    names = [n for n, _ in model.named_modules()]
    assert {"blocks.0.linear", "blocks.0.norm", "blocks.0.act", "blocks.2.act"} <= set(names)
    assert isinstance(model.blocks[1].act, nn.PReLU)
    assert model.input_shape == (8,)
    assert model(torch.randn(5, 8)).shape == (5, 8)


def test_cnn_same_padding_pooling_and_head():
    model = propbench.build_model(cfg(
        "model=cnn", "depth=4", "width=6", "model.image_size=16", "model.pool=max",
        "model.stage_every=2", "model.kernel_size=5", "model.num_classes=7"))
    assert model.blocks[0].conv.in_channels == 3 and model.blocks[0].conv.padding == "same"
    assert model.blocks[0].pool is None and isinstance(model.blocks[1].pool, nn.MaxPool2d)
    x = torch.randn(2, 3, 16, 16)
    assert model.blocks(x).shape == (2, 6, 4, 4)  # pooled twice
    assert model(x).shape == (2, 7)


def test_pooling_stops_at_one_pixel():
    model = propbench.build_model(cfg("model=cnn", "depth=6", "width=4", "model.image_size=4",
                                      "model.pool=avg", "model.stage_every=1"))
    assert model(torch.randn(2, 3, 4, 4)).shape == (2, 10)


def test_same_seed_same_weights_and_global_rng_untouched():
    state = torch.random.get_rng_state()
    a = propbench.build_model(cfg("depth=2", "width=8", "init=kaiming"))
    b = propbench.build_model(cfg("depth=2", "width=8", "init=kaiming"))
    c = propbench.build_model(cfg("depth=2", "width=8", "init=kaiming", "seed=1"))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a.blocks[0].linear.weight, b.blocks[0].linear.weight)
    assert not torch.equal(a.blocks[0].linear.weight, c.blocks[0].linear.weight)


def test_float64():
    model = propbench.build_model(cfg("depth=2", "width=8", "dtype=float64", "act=prelu"))
    assert all(p.dtype == torch.float64 for p in model.parameters())


def test_streams_are_independent():
    seeds = trial_seeds(0, 0)
    assert len({seeds.weights, seeds.inputs, seeds.cotangent}) == 3
    assert trial_seeds(0, 1) != seeds and trial_seeds(1, 0) != seeds
    assert trial_seeds(0, 0) == seeds  # and reproducible


def test_cnn_channel_growth_widens_after_each_stage():
    model = propbench.build_model(cfg(
        "model=cnn", "depth=5", "width=4", "model.image_size=8", "model.pool=avg",
        "model.stage_every=2", "model.channel_growth=2"))
    channels = [(b.conv.in_channels, b.conv.out_channels) for b in model.blocks]
    assert channels == [(3, 4), (4, 4), (4, 8), (8, 8), (8, 16)]
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 10)


def test_cnn_widens_without_pooling():
    model = propbench.build_model(cfg("model=cnn", "depth=4", "width=4", "model.image_size=6",
                                      "model.stage_every=2", "model.channel_growth=3"))
    assert [b.conv.out_channels for b in model.blocks] == [4, 4, 12, 12]
    assert model.blocks(torch.randn(1, 3, 6, 6)).shape == (1, 12, 6, 6)
