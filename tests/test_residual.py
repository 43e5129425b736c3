"""Residual models: each block ordering against a hand-written forward, the block and branch
rows against stored tensors, Fixup, alpha = 0, normalizer-free blocks, the residual theory
against closed forms and against measurement."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import propbench
from propbench import theory
from propbench.config import settings
from propbench.models import build_model
from propbench.probes import probe
from propbench.residual import nf_betas, nf_gamma
from propbench.runner import draw_inputs
from tests.conftest import cfg, cli

SMALL = ["depth=3", "width=16", "batch_size=8", "dtype=float64", "init=kaiming"]
RELU_NF_GAMMA = 1 / math.sqrt(0.5 - 1 / (2 * math.pi))  # Brock et al. 2021: 1.7139


def reference_forward(model, x, s):
    """The residual network written out by hand from its parameters (no module calls)."""
    m = s.model
    alpha = 1 / math.sqrt(s.depth) if m.alpha == "inv_sqrt_depth" else float(m.alpha)
    betas = nf_betas([False] * s.depth, alpha) if m.nf else [1.0] * s.depth
    gamma = nf_gamma("relu") if m.nf else None

    def weight(linear):
        w = linear.weight
        if gamma is not None:  # scaled weight standardization, per output unit
            w = gamma * (w - w.mean(1, keepdim=True)) / (w.std(1, unbiased=False, keepdim=True)
                                                         * math.sqrt(w.shape[1]))
        return w

    def norm(h, layer):
        if m.norm.value == "batchnorm":
            return (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + layer.eps)
        if m.norm.value == "layernorm":
            mean, var = h.mean(1, keepdim=True), h.var(1, unbiased=False, keepdim=True)
            return (h - mean) / torch.sqrt(var + layer.eps)
        return h

    for block, beta in zip(model.blocks, betas):
        h = x / beta
        for k, sub in enumerate(block.branch):
            last = k == len(block.branch) - 1
            if m.order.value == "pre":
                h = norm(h, getattr(sub, "norm", None))
                h = torch.relu(h) @ weight(sub.linear).T + sub.linear.bias
            else:
                h = norm(h @ weight(sub.linear).T + sub.linear.bias, getattr(sub, "norm", None))
                h = h if last else torch.relu(h)
        x = x + alpha * h
        x = torch.relu(x) if m.order.value == "post" else x
    return x


@pytest.mark.parametrize("overrides", [
    [], ["model.norm=layernorm"], ["model.norm=batchnorm", "model.branch_layers=3"],
    ["model.order=post"], ["model.order=post", "model.norm=batchnorm"],
    ["model.order=post", "model.norm=layernorm", "model.branch_layers=1"],
    ["model.alpha=inv_sqrt_depth"], ["model.nf=true", "model.alpha=0.2"],
], ids=["pre", "pre-ln", "pre-bn-m3", "post", "post-bn", "post-ln-m1", "inv-sqrt", "nf"])
def test_each_block_ordering_matches_a_hand_written_forward(overrides):
    s = settings(cfg("model=resmlp", *SMALL, *overrides))
    model = build_model(s)
    x = draw_inputs(s, model.input_shape, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference_forward(model, x, s), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("order, norm", [("pre", "layernorm"), ("post", "batchnorm"),
                                         ("pre", "none")])
def test_resnet_blocks_match_a_hand_written_forward(order, norm):
    """Two stages of two blocks (4 -> 8 channels, an average pool between), the 1x1
    shortcuts where the channels change, written out with F.conv2d."""
    s = settings(cfg("model=resnet", "depth=4", "width=4", "model.image_size=8",
                     "model.stage_every=2", "model.channel_growth=2", "model.pool=avg",
                     f"model.order={order}", f"model.norm={norm}", "model.alpha=0.7",
                     "batch_size=3", "dtype=float64", "init=kaiming"))
    model = build_model(s)
    x = draw_inputs(s, model.input_shape, 1)

    def conv(h, layer):
        return F.conv2d(h, layer.weight, layer.bias, padding=layer.kernel_size[0] // 2)

    def normalize(h):
        dims = (0, 2, 3) if norm == "batchnorm" else (1, 2, 3)  # GroupNorm(1): per example
        if norm == "none":
            return h
        return (h - h.mean(dims, keepdim=True)) / torch.sqrt(h.var(dims, unbiased=False, keepdim=True) + 1e-5)

    h = x
    for i, block in enumerate(model.blocks):
        if i == 2:
            h = F.avg_pool2d(h, 2)
        b = h
        for k, sub in enumerate(block.branch):
            if order == "pre":
                b = conv(torch.relu(normalize(b)), sub.conv)
            else:
                b = normalize(conv(b, sub.conv))
                b = b if k == len(block.branch) - 1 else torch.relu(b)
        skip = h
        if i in (0, 2):  # 3 -> 4 and 4 -> 8 channels
            skip = conv(h, block.shortcut.conv)
            skip = normalize(skip) if order == "post" else skip
        h = skip + 0.7 * b
        h = torch.relu(h) if order == "post" else h
    with torch.no_grad():
        torch.testing.assert_close(model.blocks(x), h, rtol=1e-10, atol=1e-12)


def test_pre_and_post_orderings_put_their_layers_where_the_papers_do():
    pre = build_model(cfg("model=resmlp", "model.norm=batchnorm", *SMALL))
    post = build_model(cfg("model=resmlp", "model.norm=batchnorm", "model.order=post", *SMALL))
    assert [n for n, _ in pre.blocks[0].branch[0].named_children()] == ["norm", "act", "linear"]
    assert [n for n, _ in post.blocks[0].branch[0].named_children()] == ["linear", "norm", "act"]
    assert [n for n, _ in post.blocks[0].branch[1].named_children()] == ["linear", "norm"]
    assert post.blocks[0].act is not None and pre.blocks[0].act is None  # ReLU after the sum


class Recorder:
    """Full copies of module outputs and their gradients (what the probe must not keep)."""

    def __init__(self, named):
        self.outputs, self.grads = {}, {}
        for name, module in named:
            module.register_forward_hook(self.hook(name))

    def hook(self, name):
        def forward(module, args, output):
            self.outputs[name] = output.detach().clone()
            output.register_hook(lambda g: self.grads.__setitem__(name, g.detach().clone()))
        return forward


@pytest.mark.parametrize("model", ["resmlp", "resnet"])
def test_block_and_branch_rows_are_the_statistics_of_the_stored_tensors(model):
    extra = (["model.image_size=6", "model.in_channels=3", "model.stage_every=2",
              "model.channel_growth=2"] if model == "resnet" else [])
    s = settings(cfg(f"model={model}", *SMALL, "model.alpha=0.5", *extra))
    net, twin = build_model(s), build_model(s)
    names = dict(twin.named_modules())
    recorder = Recorder((n, m) for n, m in names.items() if n.count(".") <= 2 and n.startswith("blocks."))
    x = draw_inputs(s, net.input_shape, 3)
    frame = probe(net, x, seed=5)
    out = twin(x)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(5), dtype=out.dtype))
    for i in range(s.depth):
        for site, name in (("block", f"blocks.{i}"), ("branch", f"blocks.{i}.branch")):
            for quantity, tensors in (("activation", recorder.outputs), ("gradient", recorder.grads)):
                row = frame[(frame.module == name) & (frame.quantity == quantity)]
                assert len(row) == 1 and row.site.iloc[0] == site
                row, t = row.iloc[0], tensors[name]
                assert row.layer == i + 1 and pd.isna(row.sublayer) and row.n == t.numel()
                assert row["var"] == pytest.approx(t.var(unbiased=False).item(), rel=1e-10)
                assert row["mean"] == pytest.approx(t.mean().item(), rel=1e-8, abs=1e-12)
                if model == "resnet":  # Brock et al.'s signal-propagation statistics
                    assert row.channel_mean_sq == pytest.approx(
                        t.mean((0, 2, 3)).square().mean().item(), rel=1e-8)
                    assert row.channel_var == pytest.approx(
                        t.var((0, 2, 3), unbiased=False).mean().item(), rel=1e-10)
                else:
                    assert np.isnan(row.channel_var)
        # the branch's own rows: layer = block, sublayer = 1..branch_layers
        inside = frame[(frame.layer == i + 1) & frame.site.isin(["pre", "post"])]
        assert sorted(inside.sublayer.unique()) == [1, 2]
    # the stream really is x + alpha * branch(x)
    block = recorder.outputs
    expected = (block["blocks.1.shortcut"] if "blocks.1.shortcut" in block else block["blocks.0"])
    torch.testing.assert_close(block["blocks.1"], expected + 0.5 * block["blocks.1.branch"])


def test_resnet_uses_1x1_shortcuts_where_the_shape_changes_only():
    model = build_model(cfg("model=resnet", "depth=6", "width=4", "model.image_size=8",
                            "model.stage_every=2", "model.channel_growth=2", "model.pool=avg",
                            "model.norm=layernorm"))
    shortcuts = [b.shortcut for b in model.blocks]
    assert [s is not None for s in shortcuts] == [True, False, True, False, True, False]
    assert [s.conv.kernel_size for s in shortcuts if s is not None] == [(1, 1)] * 3
    assert [(s.conv.in_channels, s.conv.out_channels) for s in shortcuts if s is not None] == [
        (3, 4), (4, 8), (8, 16)]
    assert [b.pool is not None for b in model.blocks] == [False, False, True, False, True, False]
    assert isinstance(model.blocks[0].branch[1].norm, torch.nn.GroupNorm)
    assert model.blocks[0].branch[1].norm.num_groups == 1  # over channels and positions
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 10)


def test_plain_models_keep_their_frame_with_an_empty_sublayer_column():
    frame = propbench.run(cfg("depth=3", "width=8", "batch_size=4")).frame
    assert frame.sublayer.isna().all()
    assert not frame.site.isin(["block", "branch"]).any()
    ln = propbench.run(cfg("depth=3", "width=64", "batch_size=8", "model.norm=layernorm")).frame
    norm = ln[(ln.site == "norm") & (ln.quantity == "activation")]
    assert len(norm) == 3 and np.allclose(norm["mean"], 0, atol=1e-6)
    assert np.allclose(norm["var"], 1, atol=1e-3)  # every example normalized over its units


def test_fixup_zeroes_each_branch_s_last_layer_and_scales_the_others():
    depth, layers, width = 16, 3, 512
    model = build_model(cfg("model=resmlp", "init=fixup", f"depth={depth}", f"width={width}",
                            f"model.branch_layers={layers}"))
    for weights in model.branches():
        assert torch.count_nonzero(weights[-1].weight) == 0 and torch.count_nonzero(weights[-1].bias) == 0
        for linear in weights[:-1]:  # He (2 / fan_in) times depth^(-1/(m-1)) = 1/4
            assert linear.weight.var().item() == pytest.approx(2 / width / 4, rel=0.02)
    frame = propbench.run(cfg("model=resmlp", "init=fixup", "depth=6", "width=64",
                              "batch_size=16")).frame
    stream = frame[(frame.site == "block")].pivot(index="layer", columns="quantity", values="var")
    assert stream["activation"].nunique() == 1 and stream["gradient"].nunique() == 1  # identity
    weight = frame[(frame.site == "weight")]
    last = weight[weight.sublayer == 2]
    assert (last["var"] > 0).all()  # the gradient reaches every branch's last layer


def test_alpha_zero_is_the_identity():
    s = settings(cfg("model=resmlp", "model.alpha=0", *SMALL))
    model = build_model(s)
    x = draw_inputs(s, model.input_shape, 0)
    with torch.no_grad():
        torch.testing.assert_close(model(x), x, rtol=0, atol=0)
    frame = probe(model, x, seed=2)
    blocks = frame[frame.site == "block"]
    act = blocks[blocks.quantity == "activation"]["var"].to_numpy()
    assert np.all(act == act[0]) and act[0] == pytest.approx(x.var(unbiased=False).item(), rel=1e-12)
    grad = blocks[blocks.quantity == "gradient"]["var"].to_numpy()
    assert np.all(grad == grad[0])
    branch_grads = frame[(frame.quantity == "gradient") & (frame.site == "branch")]
    assert (branch_grads["var"] == 0).all()  # alpha = 0: nothing flows into the branch


def test_normalizer_free_stream_grows_by_alpha_squared_per_block():
    assert nf_gamma("relu") == pytest.approx(RELU_NF_GAMMA, rel=1e-10)
    assert nf_betas([False, False, True, False], 0.2) == pytest.approx(
        [1, math.sqrt(1.04), math.sqrt(1.08), math.sqrt(1.04)])
    frame = propbench.run(cfg("model=resmlp", "model.nf=true", "model.alpha=0.5", "depth=8",
                              "width=512", "batch_size=32", "trials=4", "init=kaiming")).frame
    stream = frame[(frame.site == "block") & (frame.quantity == "activation")].groupby("layer")["var"].mean()
    expected = 1 + 0.25 * np.arange(1, 9)  # Var_l = Var_(l-1) + alpha^2, Var_0 = 1
    np.testing.assert_allclose(stream.to_numpy(), expected, rtol=0.05)
    branch = frame[(frame.site == "branch") & (frame.quantity == "activation")]
    np.testing.assert_allclose(branch["var"], 1.0, rtol=0.1)  # unit-variance branches


def test_verdict_is_read_on_the_stream():
    result = propbench.run(cfg("model=resmlp", "init=kaiming", "model.branch_layers=1",
                               "depth=12", "width=256", "batch_size=64", "bias=false"))
    summary = result.summary
    assert summary["activation"]["site"] == "block"
    # q_L / q_1 = 2^(L-1): log10 = 11 * 0.301 = 3.31 forward, the same backward
    assert summary["activation"]["log10_ratio"] == pytest.approx(11 * math.log10(2), abs=0.3)
    assert summary["gradient"]["log10_ratio"] == pytest.approx(11 * math.log10(2), abs=0.3)
    assert summary["activation"]["verdict"] == summary["gradient"]["verdict"] == "exploding"


# --- theory ---------------------------------------------------------------------------------

@pytest.mark.parametrize("depth", [5, 20, 100])
def test_residual_closed_form_relu_he_one_branch_layer(depth):
    for alpha in (1.0, 1 / math.sqrt(depth), 0.0, 0.3):
        p = theory.predict_residual("relu", 2.0, 0.0, depth, 1, alpha)
        factor = 1 + alpha**2
        np.testing.assert_allclose(p.stream, factor ** np.arange(1, depth + 1), rtol=1e-10)
        np.testing.assert_allclose(p.grad_stream, factor ** np.arange(depth - 1, -1, -1), rtol=1e-10)
        np.testing.assert_allclose(p.chi_branch, 1.0, rtol=1e-10)
    p = theory.predict_residual("relu", 2.0, 0.0, depth, 1, 1 / math.sqrt(depth))
    assert p.stream[-1] == pytest.approx((1 + 1 / depth) ** depth, rel=1e-10)  # -> e


def test_residual_layernorm_grows_linearly_and_its_gradient_harmonically():
    """With LayerNorm the branch sees variance 1 whatever the stream: B = sigma_w2 E[phi^2]
    (= 1 for ReLU + He), so q_l = 1 + l alpha^2; backward each block adds alpha^2 / q."""
    p = theory.predict_residual("relu", 2.0, 0.0, 10, 2, 1.0, layernorm=True)
    np.testing.assert_allclose(p.stream, 1 + np.arange(1, 11), rtol=1e-10)
    q_in = np.arange(1, 11)  # block l's input variance
    np.testing.assert_allclose(p.chi_branch, 1 / q_in, rtol=1e-10)
    # prod (1 + 1/q) telescopes: (q + 1) / q, so the gradient at block 1 is 11 / 2... times 1
    assert p.grad_stream[0] == pytest.approx(np.prod(1 + 1 / q_in[1:]), rel=1e-10)


def _tolerance(layers, width, trials):
    """The plain case's bound (tests/test_theory.py): 3.5 sd of the log-variance scatter of
    ``layers`` weight layers, sqrt(5 layers / (width trials)), +1%. A block's stream has
    crossed at most ``branch_layers`` layers per block; a sum of branches scatters less
    than a chain, so this bound is conservative."""
    return 3.5 * np.sqrt(5 * np.asarray(layers) / (width * trials)) + 0.01


@pytest.mark.parametrize("overrides, trials", [
    (["model.norm=none", "act=relu", "init=kaiming"], 4),
    (["model.norm=layernorm", "act=relu", "init=kaiming"], 4),
    pytest.param(["model.norm=none", "act=tanh", "init=xavier", "model.alpha=inv_sqrt_depth"], 8,
                 marks=pytest.mark.slow),
    pytest.param(["model.norm=layernorm", "act=gelu", "init=kaiming", "model.alpha=0.5"], 8,
                 marks=pytest.mark.slow),
], ids=["relu", "relu-ln", "tanh-inv-sqrt", "gelu-ln"])
def test_measured_residual_stream_follows_the_theory(overrides, trials):
    width, depth, m = 1024, 5, 2
    frame = propbench.run(cfg("model=resmlp", f"depth={depth}", f"width={width}",
                              "batch_size=16", f"trials={trials}", *overrides)).frame
    assert frame["theory"][frame.site.isin(["block", "branch", "pre", "post"])].notna().all()
    blocks = np.arange(1, depth + 1)
    for quantity, layers in (("activation", blocks * m), ("gradient", (depth + 1 - blocks) * m)):
        for site in ("block", "branch"):
            rows = frame[(frame.site == site) & (frame.quantity == quantity)].groupby("layer")
            deviation = np.abs(rows["var"].mean() / rows["theory"].first() - 1).to_numpy()
            assert np.all(deviation < _tolerance(layers, width, trials)), (quantity, site, deviation)
    inner = frame[(frame.site.isin(["pre", "post"])) & (frame.quantity == "activation")]
    by_row = inner.groupby(["layer", "sublayer", "site"], observed=True)[["var", "theory"]].mean()
    deviation = np.abs(by_row["var"] / by_row["theory"] - 1).to_numpy()
    assert np.all(deviation < _tolerance(depth * m, width, trials))


def test_theory_is_declined_where_it_does_not_apply():
    for overrides, note in ((["model.order=post"], "order=post"),
                            (["model.norm=batchnorm"], "BatchNorm"),
                            (["model.nf=true"], "weight standardization")):
        result = propbench.run(cfg("model=resmlp", "depth=2", "width=8", "batch_size=4", *overrides))
        assert result.frame["theory"].isna().all()
        assert not result.summary["theory"]["applies"] and note in result.summary["theory"]["note"]
    fixup = propbench.run(cfg("model=resmlp", "init=fixup", "depth=3", "width=8", "batch_size=4"))
    stream = fixup.frame[(fixup.frame.site == "block") & (fixup.frame.quantity == "activation")]
    np.testing.assert_allclose(stream["theory"], 1.0)  # zero last layers: the identity


def test_cli_runs_a_residual_network_end_to_end(tmp_path):
    proc = cli("model=resnet", "depth=4", "width=4", "model.image_size=8", "batch_size=4",
               "model.stage_every=2", "model.channel_growth=2", "model.nf=true",
               "model.alpha=0.2", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "block output variance, last / first block" in proc.stdout
    frame = propbench.load(tmp_path / "run")
    assert {"block", "branch"} <= set(frame.site) and frame.sublayer.notna().any()
    assert (tmp_path / "run" / "propagation.png").exists()


def test_normalizer_free_resnet_resets_at_transitions_and_has_no_channel_means():
    """alpha = 0.5, two stages of 3 blocks: 1 + l/4 within a stage, 1 + 1/4 again after the
    transition (its 1x1 shortcut sees x / beta). Each branch loses ~11% of its variance to
    the zero padding of its two 3x3 convolutions at 16x16, hence the 8% margin."""
    common = ["model=resnet", "model.alpha=0.5", "depth=6", "width=32", "model.in_channels=32",
              "model.image_size=16", "model.stage_every=3", "model.channel_growth=2",
              "batch_size=4", "trials=2", "init=kaiming"]
    nf = propbench.run(cfg(*common, "model.nf=true")).frame
    blocks = nf[(nf.site == "block") & (nf.quantity == "activation")].groupby("layer").mean(
        numeric_only=True)
    expected = 1 + 0.25 * np.array([1, 2, 3, 1, 2, 3])
    np.testing.assert_allclose(blocks["var"], expected, rtol=0.08)
    assert blocks["var"][4] < blocks["var"][3]  # the reset
    assert (blocks["channel_mean_sq"] < 0.01 * blocks["channel_var"]).all()
    plain = propbench.run(cfg(*common)).frame  # He init, no standardization: channel means
    means = plain[(plain.site == "block") & (plain.quantity == "activation")]
    assert (means["channel_mean_sq"] / means["channel_var"]).mean() > 0.1
