"""Recognition by rule: every torch activation, other libraries' projections, activations and
normalizations the probe has never heard of, and the user's own classification."""

import inspect
import warnings

import pytest
import torch
from torch import nn

from propbench.errors import ProbeError, ProbeWarning
from propbench.probes import probe
from propbench.sites import classify, is_activation, recognised


def _torch_activations():
    from torch.nn.modules import activation

    return [c for _, c in inspect.getmembers(activation, inspect.isclass)
            if c.__module__ == activation.__name__ and c is not nn.MultiheadAttention]


class Conv1D(nn.Module):
    """transformers' GPT-2 projection: weight stored (in, out), y = x W + b."""

    def __init__(self, nf, nx):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(nx, nf) * nx**-0.5)
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x):
        return torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight).view(*x.shape[:-1], -1)


class NewGELUActivation(nn.Module):  # transformers' name for the tanh approximation
    def forward(self, x):
        return nn.functional.gelu(x, approximate="tanh")


class TimmStyleGELU(nn.Module):  # a class defined in a library's `activations` module
    def forward(self, x):
        return nn.functional.gelu(x)


TimmStyleGELU.__module__ = "somelib.layers.activations"


class SquaredReLU(nn.Module):
    def forward(self, x):
        return torch.relu(x) ** 2


class RMSNorm(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


@pytest.mark.parametrize("cls", _torch_activations(), ids=lambda c: c.__name__)
def test_every_torch_activation_is_a_post_site(cls):
    module = cls(1) if cls in (nn.GLU, nn.Softmax, nn.Softmin, nn.LogSoftmax) else (
        cls(0.5, 0.0) if cls is nn.Threshold else cls())
    assert classify(module) == "post"


@pytest.mark.parametrize("module, site", [
    (Conv1D(8, 4), "pre"), (nn.Linear(4, 4), "pre"), (nn.Conv3d(2, 2, 1), "pre"),
    (nn.Bilinear(3, 3, 2), "pre"), (nn.Embedding(10, 4), None), (nn.PReLU(), "post"),
    (NewGELUActivation(), "post"), (TimmStyleGELU(), "post"), (SquaredReLU(), "post"),
    (RMSNorm(4), "norm"), (nn.LayerNorm(4), "norm"), (nn.GroupNorm(2, 4), "norm"),
    (nn.Dropout(), None), (nn.MaxPool2d(2), None), (nn.MultiheadAttention(4, 1), None),
    (nn.Identity(), None), (nn.Sequential(nn.Linear(2, 2)), None),
], ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else str(v))
def test_library_modules_are_recognised_by_rule(module, site):
    assert classify(module) == site


def test_transformers_activations_all_recognised():
    activations = pytest.importorskip("transformers.activations")
    for name, entry in activations.ACT2CLS.items():
        cls = entry[0] if isinstance(entry, tuple) else entry
        assert is_activation(cls.__new__(cls)), name


def test_a_gpt2_style_mlp_is_measured_not_empty():
    """Conv1D and NewGELUActivation were unknown: the frame was empty and the verdict {}."""
    torch.manual_seed(0)
    net = nn.Sequential(Conv1D(64, 32), NewGELUActivation(), Conv1D(32, 64))
    x = torch.randn(16, 32)
    frame = probe(net, x)
    acts = frame[frame.quantity == "activation"]
    assert list(zip(acts.layer, acts.module, acts.site)) == [(1, "0", "pre"), (1, "1", "post"),
                                                             (2, "2", "pre")]
    hidden = x @ net[0].weight
    assert acts.iloc[0]["var"] == pytest.approx(hidden.double().var(unbiased=False).item(), rel=1e-5)


def test_sites_classify_by_class_by_glob_or_leave_out():
    net = nn.Sequential(nn.Linear(8, 8), SquaredReLU(), nn.Linear(8, 8), nn.Tanh())
    assert recognised(net, {SquaredReLU: None, "3": None}) == {net[0]: "pre", net[2]: "pre"}
    assert recognised(net, {"Squared*": "norm"})[net[1]] == "norm"  # a class-name glob
    frame = probe(net, torch.randn(4, 8), sites={"1": "norm"})
    assert set(frame[frame.module == "1"].site) == {"norm"}
    with pytest.raises(ProbeError, match=r"sites\['1'\]='middle': choose one of pre, norm, post"):
        probe(net, torch.randn(4, 8), sites={"1": "middle"})


def test_a_probe_site_attribute_wins():
    act = SquaredReLU()
    act.probe_site = "norm"
    assert classify(act) == "norm"


def test_nothing_recognised_is_said_not_silent():
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.s = nn.Parameter(torch.ones(()))

        def forward(self, x):
            return x * self.s

    with pytest.warns(ProbeWarning, match="no layer recognised"):
        frame = probe(Scale(), torch.randn(4, 3))
    assert frame.empty
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        probe(nn.Sequential(nn.Linear(3, 3), nn.ReLU()), torch.randn(4, 3))  # no warning
