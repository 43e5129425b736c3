"""The probe's numbers equal statistics computed directly from the tensors."""

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from propbench.probes import FRAME_COLUMNS, probe


class Recorder:
    """Keeps full copies of outputs and their gradients (what the probe must not do)."""

    def __init__(self, modules):
        self.outputs, self.grads = {}, {}
        for name, m in modules:
            m.register_forward_hook(self.hook(name))

    def hook(self, name):
        def forward(module, args, output):
            self.outputs[name] = output.detach().clone()
            output.register_hook(lambda g: self.grads.__setitem__(name, g.detach().clone()))
        return forward


def reference(t):
    t = t.double()
    return t.mean().item(), t.var(unbiased=False).item(), (t * t).mean().item()


def row(frame, module, site, quantity):
    rows = frame[(frame.module == module) & (frame.site == site) & (frame.quantity == quantity)]
    assert len(rows) == 1
    return rows.iloc[0]


def mlp(inplace=False):
    return nn.Sequential(nn.Linear(32, 48), nn.BatchNorm1d(48), nn.ReLU(inplace=inplace),
                         nn.Linear(48, 16), nn.Tanh())


@pytest.mark.parametrize("inplace", [False, True])
def test_forward_backward_and_weight_statistics_are_exact(inplace):
    torch.manual_seed(0)
    net = mlp(inplace)
    ref_net = mlp(False)
    ref_net.load_state_dict(net.state_dict())
    rec = Recorder([(n, m) for n, m in ref_net.named_children()])
    x = torch.randn(64, 32)
    cot = torch.randn(64, 16)
    frame = probe(net, x, cotangent=cot)
    ref_net(x).backward(cot)

    assert list(frame.columns) == FRAME_COLUMNS
    sites = {"0": ("pre", 1), "1": ("norm", 1), "2": ("post", 1), "3": ("pre", 2), "4": ("post", 2)}
    for name, (site, layer) in sites.items():
        for quantity, tensors in (("activation", rec.outputs), ("gradient", rec.grads)):
            r = row(frame, name, site, quantity)
            mean, var, second = reference(tensors[name])
            assert r.layer == layer and r.n == tensors[name].numel() and r.nonfinite == 0
            assert r["mean"] == pytest.approx(mean, rel=1e-5, abs=1e-7)
            assert r["var"] == pytest.approx(var, rel=1e-5)
            assert r["second_moment"] == pytest.approx(second, rel=1e-5)
    for name in ("0", "3"):
        r = row(frame, name, "weight", "gradient")
        assert r["var"] == pytest.approx(reference(getattr(ref_net, name).weight.grad)[1], rel=1e-5)


def test_conv_statistics_include_per_channel_spp_terms():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
    x = torch.randn(16, 3, 10, 10)
    frame = probe(net, x)
    out = net(x).detach().double()
    r = row(frame, "1", "post", "activation")
    channel_mean = out.mean(dim=(0, 2, 3))
    channel_var = out.var(dim=(0, 2, 3), unbiased=False)
    assert r.channel_mean_sq == pytest.approx(channel_mean.square().mean().item(), rel=1e-5)
    assert r.channel_var == pytest.approx(channel_var.mean().item(), rel=1e-5)
    assert r["var"] == pytest.approx(out.var(unbiased=False).item(), rel=1e-5)
    weight = row(frame, "0", "weight", "gradient")
    assert np.isnan(weight.channel_var)  # per-channel terms are for activations only


def test_hooks_are_removed_and_grads_are_this_backward():
    net = mlp()
    x = torch.randn(8, 32)
    probe(net, x)
    frame = probe(net, x, seed=1)  # grads are zeroed first, not accumulated
    assert all(not m._forward_hooks for m in net.modules())
    w = net[3].weight.grad.double()
    assert row(frame, "3", "weight", "gradient")["second_moment"] == pytest.approx(
        (w * w).mean().item(), rel=1e-5)


def test_cotangent_is_seeded_standard_normal():
    net = nn.Sequential(nn.Linear(256, 256), nn.Identity())
    x = torch.randn(512, 256)
    a, b, c = probe(net, x, seed=0), probe(net, x, seed=0), probe(net, x, seed=1)
    grad = lambda f: row(f, "0", "pre", "gradient")
    assert grad(a)["var"] == grad(b)["var"] != grad(c)["var"]
    assert grad(a)["var"] == pytest.approx(1.0, abs=0.01)  # 131072 N(0,1) draws


def test_overflow_is_counted_not_fatal():
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU())
    with torch.no_grad():
        net[0].weight.fill_(1e20)
        net[2].weight.fill_(1e20)
    frame = probe(net, torch.ones(3, 4))
    act = frame[frame.quantity == "activation"].set_index(["layer", "site"])
    assert act.loc[(1, "pre"), "nonfinite"] == 0  # 4e20 is finite in float32...
    assert act.loc[(2, "pre"), "nonfinite"] == 12  # ...1.6e41 is not: all 3 x 4 elements
    assert np.isnan(act.loc[(2, "pre"), "var"])


def test_default_modules_classify_leaves_and_skip_others():
    net = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.0), nn.LayerNorm(8), nn.GELU(), nn.Flatten())
    frame = probe(net, torch.randn(4, 8))
    acts = frame[frame.quantity == "activation"]
    assert list(zip(acts.module, acts.site)) == [("0", "pre"), ("2", "norm"), ("3", "post")]


def test_explicit_modules_and_foreign_module_error():
    net = mlp()
    frame = probe(net, torch.randn(8, 32), modules=[net[3]])
    assert set(frame.module) == {"3"}
    with pytest.raises(ValueError, match="not a submodule"):
        probe(net, torch.randn(8, 32), modules=[nn.ReLU()])


def test_float64_model():
    net = mlp().double()
    frame = probe(net, torch.randn(8, 32, dtype=torch.float64))
    assert np.isfinite(frame["var"]).all()


def test_cuda_matches_cpu(cuda_device):
    torch.manual_seed(0)
    net = mlp()
    x = torch.randn(64, 32)
    cpu = probe(net, x)
    gpu = probe(net.to(cuda_device), x.to(cuda_device))
    np.testing.assert_allclose(gpu["var"], cpu["var"], rtol=1e-3)


def test_huge_finite_values_keep_a_finite_variance():
    # float32 elements ~1e20 are finite, their squares (1e40) are not: the reduction is
    # in float64 and reports the true variance.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 64, bias=False), nn.Identity())
    with torch.no_grad():
        net[0].weight.mul_(1e20)
    x = torch.randn(32, 64)
    frame = probe(net, x)
    pre = row(frame, "0", "pre", "activation")
    out = net(x).detach().double()
    assert pre.nonfinite == 0
    assert pre["var"] == pytest.approx(out.var(unbiased=False).item(), rel=1e-6)


def test_tiny_values_are_measured_in_float64():
    # elements ~1e-21: their float32 squares (1e-42) are subnormal and lose their digits
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 64, bias=False), nn.Identity())
    with torch.no_grad():
        net[0].weight.mul_(1e-21)
    x = torch.randn(32, 64)
    pre = row(probe(net, x), "0", "pre", "activation")
    out = net(x).detach().double()
    assert pre["var"] == pytest.approx(out.var(unbiased=False).item(), rel=1e-6)


def test_the_public_probe_is_the_function_after_any_import():
    import propbench
    import propbench.probes  # noqa: F401  (what runner and friends import)

    propbench.run(propbench.compose(["depth=2", "width=8", "batch_size=4"]))
    net = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
    assert callable(propbench.probe)
    assert len(propbench.probe(net, torch.randn(4, 8))) > 0


def test_freeing_gradients_as_they_land_changes_no_statistic():
    torch.manual_seed(0)
    net = mlp()
    x = torch.randn(16, 32)
    kept = probe(net, x)
    assert net[0].weight.grad is not None
    freed = probe(net, x, keep_grads=False)
    assert all(p.grad is None for p in net.parameters())  # no second copy of the weights
    pd.testing.assert_frame_equal(kept, freed)


def test_a_large_bias_does_not_cancel_the_variance():
    """Linear(256, 256) with a bias of 1000, then ReLU: the mean is ~1000 times the spread;
    float32 sums of squares lost the variance to cancellation (0.463 for 0.335)."""
    torch.manual_seed(0)
    for bias in (1e3, 1e4):
        net = nn.Sequential(nn.Linear(256, 256), nn.ReLU())
        with torch.no_grad():
            net[0].bias.fill_(bias)
        x = torch.randn(256, 256)
        post = row(probe(net, x), "1", "post", "activation")
        out = net(x).detach().double()
        assert post["var"] == pytest.approx(out.var(unbiased=False).item(), rel=1e-5)
        assert post["mean"] == pytest.approx(out.mean().item(), rel=1e-7)


@pytest.mark.parametrize("overrides", [["init=default"], ["init=kaiming"],
                                       ["init=normal", "init.std=3"]],
                         ids=["vanishing", "stable", "overflowing"])
def test_the_network_runs_once_per_trial(overrides, monkeypatch):
    """Whatever the signal does (gradients of 1e-40, float32 overflow), one forward and
    one backward per trial."""
    import propbench
    from propbench.models import DeepStack

    calls = []
    forward = DeepStack.forward
    monkeypatch.setattr(DeepStack, "forward", lambda self, x: calls.append(1) or forward(self, x))
    result = propbench.run(propbench.compose(
        ["depth=60", "width=32", "batch_size=16", "trials=3", "trial_batch=1", *overrides]))
    frame = getattr(result, "frame", result)
    assert len(calls) == 3 and sorted(frame.trial.unique()) == [0, 1, 2]


def test_uniform_positive_init_matches_float64_through_the_run():
    """init=uniform a=0.1 b=0.3, sigmoid: every activation has a mean far above its spread;
    the variance of the run's frame equals float64 torch.var of the same tensors."""
    import propbench
    from propbench.runner import draw_inputs
    from propbench.seeds import trial_seeds

    cfg = propbench.compose(["init=uniform", "init.a=0.1", "init.b=0.3", "act=sigmoid",
                             "depth=6", "width=32", "batch_size=16"])
    result = propbench.run(cfg)
    frame = getattr(result, "frame", result)
    model = propbench.build_model(cfg)
    x = draw_inputs(propbench.config.settings(cfg), model.input_shape, trial_seeds(0, 0).inputs)
    posts = []
    hooks = [block.act.register_forward_hook(lambda m, i, o: posts.append(o.detach().double()))
             for block in model.blocks]
    model(x)
    for hook in hooks:
        hook.remove()
    measured = frame[(frame.site == "post") & (frame.quantity == "activation")]["var"].to_numpy()
    expected = [t.var(unbiased=False).item() for t in posts]
    np.testing.assert_allclose(measured, expected, rtol=1e-5)
    assert expected[4] < 1e-6 and abs(posts[4].mean().item()) > 1e2 * expected[4] ** 0.5
