"""Blocks as the unit of depth, on hand-written stand-ins of torchvision's, timm's and a
transformer's structure: found by rule, recorded at their outputs (exactly), their inner
rows filed under their index, a reused module recorded per call, verdicts on the stream."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from propbench.blocks import find_blocks, select_blocks
from propbench.errors import ProbeError
from propbench.probes import probe
from propbench.verdict import describe, range_warning, summarize


class BasicBlock(nn.Module):
    """torchvision's: one ``relu`` module called twice, in place; a 1x1 shortcut conv where
    the shape changes; ``out += identity`` in place."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """torchvision's ResNet-18 layout at small width: stem, 4 stages of 2 blocks, head."""

    def __init__(self, widths=(8, 16, 32, 64)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        cin = widths[0]
        for i, w in enumerate(widths, 1):
            stride = 1 if i == 1 else 2
            setattr(self, f"layer{i}", nn.Sequential(BasicBlock(cin, w, stride), BasicBlock(w, w)))
            cin = w
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, 10)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet():
    torch.manual_seed(0)
    return ResNet()


def test_a_resnets_blocks_are_its_basic_blocks_in_order():
    net = resnet()
    paths = [p for p, _ in find_blocks(net)]
    assert paths == [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    assert select_blocks(net, "layer*.*") == find_blocks(net)  # outermost matches of a glob
    assert [p for p, _ in select_blocks(net, ["layer2.1", net.layer4[0]])] == ["layer2.1", "layer4.0"]
    with pytest.raises(ProbeError, match="'layer2.1.conv1' lies inside the block 'layer2.1'"):
        select_blocks(net, ["layer2.1", "layer2.1.conv1"])
    with pytest.raises(ProbeError, match="no module at 'layer9.0'; paths look like layer1.0, layer1.1"):
        select_blocks(net, ["layer9.0"])
    with pytest.raises(ProbeError, match="matches no module path"):
        select_blocks(net, "blocks.*")


def test_vgg_has_no_blocks_and_convnext_has_its_inner_ones():
    vgg = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3), nn.ReLU())
    assert find_blocks(vgg) == []

    class ConvNeXtBlock(nn.Sequential):
        pass

    class Stage(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.blocks = nn.Sequential(*[ConvNeXtBlock(nn.Conv2d(4, 4, 1), nn.GELU()) for _ in range(n)])

    convnext = nn.Module()
    convnext.stages = nn.Sequential(Stage(2), Stage(3))
    assert [p for p, _ in find_blocks(convnext)] == [
        "stages.0.blocks.0", "stages.0.blocks.1", "stages.1.blocks.0", "stages.1.blocks.1",
        "stages.1.blocks.2"]


class Reference:
    """Full copies of every call's output and of its gradient (what the probe must equal)."""

    def __init__(self, modules):
        self.outputs, self.grads = {}, {}
        for name, module in modules:
            module.register_forward_hook(self.hook(name))

    def hook(self, name):
        def forward(module, args, output):
            key = name if name not in self.outputs else f"{name}#2"
            self.outputs[key] = output.detach().double().clone()
            output.register_hook(lambda g: self.grads.__setitem__(key, g.detach().double().clone()))
        return forward


def var(t):
    return t.var(unbiased=False).item()


def test_block_rows_are_the_stream_exactly_and_inner_rows_carry_the_block_index():
    net, ref_net = resnet(), resnet()
    x, = torch.randn(4, 3, 16, 16),
    cotangent = torch.randn(4, 10)
    names = ["layer1.0", "layer2.0", "layer4.1", "layer1.0.relu"]
    ref = Reference([(n, ref_net.get_submodule(n)) for n in names])
    frame = probe(net, x, cotangent=cotangent)
    ref_net(x).backward(cotangent)

    block = frame[frame.site == "block"]
    assert sorted(block.layer.unique()) == list(range(1, 9))
    for name, layer in (("layer1.0", 1), ("layer2.0", 3), ("layer4.1", 8)):
        for quantity, tensors in (("activation", ref.outputs), ("gradient", ref.grads)):
            row = block[(block.module == name) & (block.quantity == quantity)].iloc[0]
            assert row.layer == layer
            assert row["var"] == pytest.approx(var(tensors[name]), rel=1e-5)
    # the one relu of a block, called twice: two rows, each its own call's tensor
    relu = frame[frame.module.str.startswith("layer1.0.relu") & (frame.quantity == "activation")]
    assert list(relu.module) == ["layer1.0.relu", "layer1.0.relu#2"]
    for _, row in relu.iterrows():
        assert row["var"] == pytest.approx(var(ref.outputs[row.module]), rel=1e-5)
        assert row.layer == 1
    # a shortcut conv is in its block, not a layer of its own; stem and head are outside
    layer_of = frame.drop_duplicates("module").set_index("module")["layer"]
    assert layer_of["layer2.0.downsample.0"] == layer_of["layer2.0.conv1"] == 3
    assert layer_of["conv1"] == layer_of["fc"] == 0


class PreNormBlock(nn.Module):
    """x + proj(attention(ln1 x)) + mlp(ln2 x) with separate q, k, v projections."""

    def __init__(self, d, zero_branches=False):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q, self.k, self.v, self.proj = (nn.Linear(d, d) for _ in range(4))
        self.fc1, self.act, self.fc2 = nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d)
        if zero_branches:  # zero-initialized residual branches (Goyal et al. 2017, "ReZero")
            for layer in (self.proj, self.fc2):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    def forward(self, x):
        h = self.ln1(x)
        weights = torch.softmax(self.q(h) @ self.k(h).transpose(1, 2) / h.shape[-1] ** 0.5, -1)
        x = x + self.proj(weights @ self.v(h))
        return x + self.fc2(self.act(self.fc1(self.ln2(x))))


class Transformer(nn.Module):
    def __init__(self, depth=6, d=32, zero_branches=False, head_scale=1.0):
        super().__init__()
        self.embed = nn.Linear(8, d)
        self.blocks = nn.ModuleList(PreNormBlock(d, zero_branches) for _ in range(depth))
        self.head = nn.Linear(d, 4)
        with torch.no_grad():
            self.head.weight.mul_(head_scale)

    def forward(self, x):
        x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def test_parallel_projections_share_their_blocks_layer():
    torch.manual_seed(0)
    frame = probe(Transformer(), torch.randn(4, 5, 8))
    pre = frame[(frame.site == "pre") & (frame.quantity == "activation")]
    layers = pre.set_index("module")["layer"]
    assert [layers[f"blocks.2.{n}"] for n in ("q", "k", "v", "proj", "fc1", "fc2")] == [3] * 6
    assert frame.attrs["blocks"] == "6 x PreNormBlock (blocks.0 .. blocks.5)"


def test_verdicts_read_the_stream_not_unrelated_layers_nor_the_head():
    """Zero-initialized branches: the stream is the embedding, unchanged through every
    block -- a ratio of exactly 1 both ways, whatever the head's scale. Read layer by layer
    the same model has a constant signal (the zeroed projections), which is no underflow."""
    torch.manual_seed(0)
    x = torch.randn(4, 5, 8)
    for head_scale in (1.0, 1e4):
        frame = probe(Transformer(zero_branches=True, head_scale=head_scale), x)
        summary = summarize(frame)
        for quantity in ("activation", "gradient"):
            assert summary[quantity]["site"] == "block" and summary[quantity]["layers"] == 6
            assert summary[quantity]["verdict"] == "stable"
            assert summary[quantity]["log10_ratio"] == pytest.approx(0.0, abs=1e-6)
    layerwise = summarize(probe(Transformer(zero_branches=True), x, blocks=False))
    gradient = layerwise["gradient"]  # q, k, v and fc1 get no gradient past zero weights
    assert gradient["first_constant_layer"] is not None and gradient["first_zero_layer"] is None
    assert "constant (variance exactly 0, not an underflow)" in range_warning(layerwise, "float32")


def test_a_residual_streams_gradient_is_judged_block_to_block():
    """Default-initialized branches add to the stream: its variance grows block by block,
    and the verdict's ratio is exactly last block over first block from the frame."""
    torch.manual_seed(0)
    frame = probe(Transformer(depth=8), torch.randn(8, 5, 8))
    stream = frame[(frame.site == "block") & (frame.quantity == "activation")].set_index("layer")["var"]
    assert np.all(np.diff(stream.to_numpy()) > 0)  # each branch adds variance
    result = summarize(frame)["activation"]
    assert result["log10_ratio"] == pytest.approx(math.log10(stream[8] / stream[1]), rel=1e-12)


def test_one_layer_is_undetermined_not_stable():
    frame = probe(nn.Sequential(nn.Linear(16, 16), nn.ReLU()), torch.randn(8, 16))
    summary = summarize(frame)
    assert summary["activation"]["verdict"] == summary["gradient"]["verdict"] == "undetermined"
    assert "1 layer: no ratio to judge" in describe("activation", summary["activation"])


class ViT(nn.Module):
    """timm's layout: patch embedding, a class token, pre-LN blocks, a head on the class token."""

    def __init__(self, depth=6, d=32, patch=4):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, d, patch, patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.blocks = nn.Sequential(*[PreNormBlock(d) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, 10)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = self.blocks(torch.cat([self.cls_token.expand(len(x), -1, -1), x], 1))
        return self.head(self.norm(x)[:, 0])


def test_the_cotangent_can_enter_at_the_last_block():
    """The head reads the class token only, so from the output the other tokens get no
    gradient at the last block; from the last block's output every element gets the
    standard-normal cotangent (variance 1 over 8 x 17 x 32 draws), and the head none."""
    torch.manual_seed(0)
    net, x = ViT(), torch.randn(8, 3, 16, 16)
    last = {}
    for start in ("output", "last_block"):
        frame = probe(net, x, backward_from=start)
        grads = frame[frame.quantity == "gradient"]
        last[start] = grads[(grads.site == "block") & (grads.layer == 6)].iloc[0]
    assert frame.attrs["output"] == "blocks.5 (the last block's output)"
    assert last["last_block"]["var"] == pytest.approx(1.0, abs=0.05)
    assert last["last_block"]["n"] == last["output"]["n"] == 8 * 17 * 32
    assert "head" not in set(grads.module) and "norm" not in set(grads.module)
    with pytest.raises(ProbeError, match="needs blocks"):
        probe(nn.Sequential(nn.Linear(2, 2)), torch.randn(2, 2), backward_from="last_block")
