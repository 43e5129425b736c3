"""Schemas, config groups and validation (no torch needed)."""

import pytest

from propbench.config import PropbenchConfig, compose, group_options, settings
from propbench.errors import ConfigError


# what an option needs besides its name
NEEDS = {"custom": ["model._target_=torch.nn.Linear", "model.in_features=4",
                    "model.out_features=2", "input.shape=[4]"],
         "fixup": ["model=resmlp"]}  # refused on plain models


@pytest.mark.parametrize("group", ["model", "act", "init"])
def test_every_option_of_every_group_composes_and_validates(group):
    for option in group_options(group):
        s = settings(compose([f"{group}={option}", *NEEDS.get(option, [])]))
        assert getattr(s, group).name == option


def test_defaults_are_the_documented_ones():
    s = settings(compose([]))
    assert (s.model.name, s.act.name, s.init.name) == ("mlp", "relu", "default")
    assert (s.depth, s.width, s.batch_size, s.trials, s.device, s.dtype.value, s.bias) == (
        10, 256, 256, 1, "auto", "float32", True)
    assert s.init.bias.value == "default"  # init=default keeps PyTorch's bias
    assert settings(compose(["init=kaiming"])).init.bias.value == "zeros"
    assert PropbenchConfig() == s  # the dataclass's defaults are the composed ones


def test_each_scheme_has_only_its_own_parameters():
    cfg = compose(["init=scaled"])
    assert set(cfg.init) == {"name", "sigma_w2", "sigma_b2", "mode", "distribution"}
    assert set(compose(["init=normal"]).init) == {"name", "std", "bias"}


def test_required_groups_and_options_exist():
    assert set(group_options("model")) == {"mlp", "cnn", "resmlp", "resnet", "transformer", "custom"}
    assert {"relu", "tanh", "selu", "prelu", "leaky_relu", "gelu", "silu", "elu", "sigmoid",
            "linear"} <= set(group_options("act"))
    assert {"default", "kaiming", "xavier", "lecun", "orthogonal", "scaled"} <= set(group_options("init"))


def test_slopes_default_to_pytorchs():
    assert settings(compose(["act=prelu"])).act.slope == 0.25
    assert settings(compose(["act=leaky_relu"])).act.slope == 0.01
    assert settings(compose(["act=prelu", "act.slope=0.1"])).act.slope == 0.1


@pytest.mark.parametrize("overrides, message", [
    (["depth=0"], "depth=0: must be >= 1"),
    (["depth=-1"], "depth=-1: must be >= 1"),
    (["width=0"], "width=0: must be >= 1"),
    (["batch_size=0"], "batch_size=0"),
    (["trials=0"], "trials=0"),
    (["seed=-2"], "seed=-2"),
    (["device=gpu"], "device=gpu: choose auto, cpu, cuda or cuda:N"),
    (["init=kaiming", "init.gain=-1"], "init.gain=-1: must be a finite number > 0"),
    (["init=kaiming", "init.gain=nan"], "init.gain=nan"),
    (["init=kaiming", "init.std=2"], "init.std=2: init=kaiming takes only gain, mode, bias"),
    (["init=kaiming", "init.mode=null"], "init.mode=null: init=kaiming needs"),
    (["init=uniform", "init.a=1", "init.b=0"], "need a < b"),
    (["act=prelu", "act.slope=-0.5"], "act.slope=-0.5: prelu needs a finite slope >= 0"),
    (["act=prelu", "act.slope=nan"], "act.slope=nan"),
    (["act=relu", "act.slope=0.1"], "only leaky_relu and prelu take a slope"),
    (["model=cnn", "model.kernel_size=4"], "model.kernel_size=4: must be odd"),
    (["init.name=kaiming"], "init.name=kaiming: choose the option as init=kaiming"),
    (["+foo=1"], "foo: unknown key"),
    (["+model.foo=1"], "model.foo: unknown key; model=mlp takes only norm"),
    (["+model._target_=torch.nn.Linear"], "a model of your own is model=custom model._target_="),
    (["input.shape=[3]"], "input: only model=custom takes it"),
    (["model=custom", "input.shape=[4]"], "model._target_: model=custom needs the factory"),
    (["model=custom", "model._target_=torch.nn.Linearr", "input.shape=[4]"],
     "model._target_=torch.nn.Linearr: cannot be imported (AttributeError"),
    (["model=custom", "model._target_=no_such_package.build", "input.shape=[4]"],
     "cannot be imported (ModuleNotFoundError: no module named 'no_such_package')"),
    (["model=custom", "model._target_=torch.nn"], "is a module, not a class or function"),
    (["model=custom", "model._target_=torch.nn.Linear"], "input.shape: model=custom needs"),
    (["model=custom", "model._target_=torch.nn.Linear", "input.shape=[4,0]"], "input.shape=0"),
    (["model=custom", "model._target_=torch.nn.Embedding", "input.shape=[4]", "input.kind=tokens"],
     "input.vocab_size=None: input.kind=tokens needs"),
    (["model=custom", "model._target_=torch.nn.Linear", "input.shape=[4]", "init=kaiming"],
     "init=kaiming: model=custom keeps the layers and init its factory builds"),
    (["model=custom", "model._target_=torch.nn.Linear", "input.shape=[4]", "+probe.sites.x=mid"],
     "probe.sites.x=mid: choose one of pre, norm, post"),
])
def test_out_of_range_values_are_refused_with_one_line(overrides, message):
    with pytest.raises(ConfigError) as err:
        settings(compose(overrides))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_custom_model_keys_are_the_factorys_arguments():
    s = settings(compose(["model=custom", "model._target_=torch.nn.TransformerEncoder",
                          "model.encoder_layer._target_=torch.nn.TransformerEncoderLayer",
                          "model.encoder_layer.d_model=16", "model.num_layers=2",
                          "input.shape=[8,16]", "input.kind=normal"]))
    assert s.model._target_ == "torch.nn.TransformerEncoder"
    assert s.model.kwargs == {"encoder_layer": {"_target_": "torch.nn.TransformerEncoderLayer",
                                                "d_model": 16}, "num_layers": 2}
    assert (s.input.shape, s.input.kind.value, s.input.vocab_size) == ([8, 16], "normal", None)
    assert (s.probe.blocks, s.probe.output, s.probe.sites) == ("auto", None, {})
