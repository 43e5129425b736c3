"""The transformer model: attention against PyTorch's own, whole blocks against
nn.TransformerEncoderLayer on the same weights, token similarity against a direct
computation, and the uniform-attention limit."""

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import propbench
from propbench.models import build_model
from propbench.probes import probe
from propbench.tokens import attention_entropy, token_similarity
from propbench.transformer import SelfAttention
from tests.conftest import cfg, toy_experiment

SMALL = ["model=transformer", "depth=3", "width=32", "batch_size=6", "model.tokens=10"]


@pytest.mark.parametrize("causal", [False, True])
def test_attention_equals_scaled_dot_product_attention_on_the_same_weights(causal):
    torch.manual_seed(0)
    attention = SelfAttention(32, 4, causal=causal, dtype=torch.float64)
    x = torch.randn(5, 7, 32, dtype=torch.float64)

    def heads(t):
        return t.view(5, 7, 4, 8).transpose(1, 2)

    q, k, v = (heads(layer(x)) for layer in (attention.query, attention.key, attention.value))
    mixed = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    expected = attention.out(mixed.transpose(1, 2).reshape(5, 7, 32))
    torch.testing.assert_close(attention(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("order", ["pre", "post"])
def test_a_block_equals_torch_transformer_encoder_layer(order):
    """A block (alpha 1, skips, LayerNorm, ReLU MLP of ratio 2) is PyTorch's encoder layer
    with norm_first = (order == pre), on the same weights."""
    s = propbench.settings(cfg(*SMALL, "depth=1", f"model.order={order}", "model.mlp_ratio=2",
                               "model.final_norm=false", "dtype=float64", "init=kaiming"))
    model = build_model(s)
    block = model.blocks[0]
    attention, mlp = block[0].branch, block[1].branch
    reference = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True,
                                           norm_first=order == "pre", dtype=torch.float64)
    with torch.no_grad():
        reference.self_attn.in_proj_weight.copy_(torch.cat(
            [attention.query.weight, attention.key.weight, attention.value.weight]))
        reference.self_attn.in_proj_bias.copy_(torch.cat(
            [attention.query.bias, attention.key.bias, attention.value.bias]))
        reference.self_attn.out_proj.weight.copy_(attention.out.weight)
        reference.self_attn.out_proj.bias.copy_(attention.out.bias)
        for mine, theirs in ((mlp.fc, reference.linear1), (mlp.proj, reference.linear2)):
            theirs.weight.copy_(mine.weight)
            theirs.bias.copy_(mine.bias)
    reference.eval()  # the fast path would differ only in summation order; keep the math path
    x = torch.randn(6, 10, 32, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-10, atol=1e-10)


def direct_similarity(x):
    """Mean over pairs i != j of cos(x_i, x_j), per example, by the full matrix."""
    u = F.normalize(x.double(), dim=-1)
    gram = u @ u.transpose(-2, -1)
    n = x.shape[1]
    return (gram.sum((-2, -1)) - gram.diagonal(dim1=-2, dim2=-1).sum(-1)) / (n * (n - 1))


def test_token_similarity_matches_a_direct_computation_on_the_stored_block_outputs():
    model = build_model(cfg(*SMALL, "model.residual=false", "model.mlp_ratio=0", "init=kaiming"))
    outputs = []
    handles = [block.register_forward_hook(lambda m, a, out: outputs.append(out.detach().clone()))
               for block in model.blocks]
    x = torch.randn(6, 10, 32)
    frame = probe(model, x, token_dim=1)
    for h in handles:
        h.remove()
    rows = frame[frame.quantity == "token_similarity"].sort_values("layer")
    assert list(rows.layer) == [1, 2, 3] and (rows.site == "block").all() and (rows.n == 6).all()
    direct = torch.stack([direct_similarity(out) for out in outputs])  # (blocks, batch)
    np.testing.assert_allclose(rows["mean"], direct.mean(1).numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(rows["var"], direct.var(1, correction=0).numpy(), rtol=1e-6, atol=1e-15)
    # pure attention without skips averages tokens: similarity rises block by block
    assert rows["mean"].is_monotonic_increasing


def test_token_similarity_limits():
    same = torch.randn(4, 1, 16).expand(4, 9, 16)
    torch.testing.assert_close(token_similarity(same), torch.ones(4, dtype=torch.float64))
    u = torch.eye(6).unsqueeze(0)  # orthogonal tokens
    torch.testing.assert_close(token_similarity(u), torch.zeros(1, dtype=torch.float64))
    # tokens on axis 2 of (batch, width, tokens)
    x = torch.randn(3, 5, 16)
    torch.testing.assert_close(token_similarity(x.transpose(1, 2), token_dim=2), direct_similarity(x))


@pytest.mark.parametrize("causal", [False, True])
def test_zero_query_and_key_weights_give_uniform_attention(causal):
    """q = k = 0: every score is 0, so each row is uniform over its keys (entropy log(N), or
    log(i + 1) for row i with a causal mask) and, without a mask, every token's output is
    out(mean of the values): one attention layer maps all tokens to the same vector."""
    tokens = 10
    s = propbench.settings(cfg(*SMALL, f"model.tokens={tokens}", "model.residual=false",
                               "model.mlp_ratio=0", "model.norm=none", "model.final_norm=false",
                               f"model.causal={str(causal).lower()}", "dtype=float64"))
    model = build_model(s)
    with torch.no_grad():
        for attention in model.attention():
            for layer in (attention.query, attention.key):
                layer.weight.zero_()
                layer.bias.zero_()
    x = torch.randn(6, tokens, 32, dtype=torch.float64)
    frame = probe(model, x, token_dim=1)
    entropy = frame[frame.quantity == "attention_entropy"].sort_values("layer")
    expected = np.mean(np.log(np.arange(1, tokens + 1))) if causal else math.log(tokens)
    np.testing.assert_allclose(entropy["mean"], expected, rtol=1e-12)
    assert (entropy.n == 6 * 4 * tokens).all()  # attention rows: batch x heads x tokens
    first = model.attention()[0]
    if causal:  # token i is out(mean of the first i + 1 values)
        prefix = first.value(x).cumsum(1) / torch.arange(1, tokens + 1).view(1, -1, 1)
        torch.testing.assert_close(first(x), first.out(prefix))
    else:
        torch.testing.assert_close(first(x), first.out(first.value(x).mean(1, keepdim=True)).expand_as(x))
        similarity = frame[frame.quantity == "token_similarity"]["mean"]
        np.testing.assert_allclose(similarity, 1.0, rtol=1e-12)


def test_attention_entropy_of_one_hot_rows_is_zero():
    p = torch.eye(5).expand(2, 3, 5, 5)
    torch.testing.assert_close(attention_entropy(p), torch.zeros(2, 3, 5, dtype=torch.float64))


def test_the_run_records_every_sublayer_and_trials_run_one_at_a_time():
    overrides = [*SMALL, "init=xavier", "trials=2"]
    result = propbench.run(cfg(*overrides))
    frame = result.frame
    assert result.summary["trials_at_once"] == 1
    one = frame[(frame.trial == 0)]
    sites = one[one.quantity == "activation"].groupby(["layer", "sublayer"], dropna=False)["site"]
    assert set(sites.get_group((1, 1))) == {"pre", "norm", "branch"}
    assert set(sites.get_group((1, 2))) == {"pre", "norm", "post", "branch"}
    assert set(one[one.sublayer.isna()].site) == {"block"}
    assert len(one[one.quantity == "attention_entropy"]) == 3
    # trial 0 of two is the single run; trial 1 is another network
    single = propbench.run(cfg(*SMALL, "init=xavier")).frame
    columns = ["layer", "module", "site", "quantity", "mean", "var"]
    np.testing.assert_allclose(one[columns[-1]].to_numpy(), single[columns[-1]].to_numpy(), rtol=1e-12)
    assert (one[columns[:4]].to_numpy() == single[columns[:4]].to_numpy()).all()
    other = frame[frame.trial == 1]
    assert not np.allclose(other["var"].to_numpy(), single["var"].to_numpy())


def test_alpha_inv_sqrt_depth_scales_every_branch():
    model = build_model(cfg(*SMALL, "depth=4", "model.alpha=inv_sqrt_depth"))
    assert {sub.alpha for block in model.blocks for sub in block} == {0.5}
    assert build_model(cfg(*SMALL, "model.final_norm=false")).final_norm is None


def test_the_summary_and_a_sweep_claim_read_token_similarity_by_value(tmp_path):
    import pandas as pd

    from propbench.sweep import SweepReport, check_claim, markdown

    result = propbench.run(cfg(*SMALL, "model.residual=false", "model.mlp_ratio=0", "init=xavier"))
    frame, summary = result.frame, result.summary
    similarity = frame[frame.quantity == "token_similarity"].set_index("layer")["mean"]
    assert summary["token_similarity"]["last_block"] == pytest.approx(similarity[3])
    assert summary["token_similarity"]["first_block"] == pytest.approx(similarity[1])
    assert summary["attention_entropy"]["last_block"] <= math.log(10)
    weights = frame[(frame.site == "weight") & (frame.quantity == "gradient")].groupby("layer")["var"].mean()
    assert summary["weight_gradient"]["log10_ratio"] == pytest.approx(np.log10(weights[3] / weights[1]))

    table = toy_experiment(
        tmp_path, "collapses",
        "{where: {model.residual: 'false'}, quantity: token_similarity, between: [0.9, 1.0]}",
        **{"model.residual": "false"}, activation_log10_ratio=0.1, token_similarity=0.97)
    claim = check_claim(tmp_path, table)
    assert claim["held"] and claim["checks"][0]["got"] == ["0.970"]
    text = markdown(SweepReport(tmp_path, table, pd.DataFrame(), claim), ["model.residual"])
    assert "token_similarity expected token_similarity in [+0.90, +1.00], got 0.970" in text
    assert "| 0.970 |" in text  # the table's column
    table.loc[0, "token_similarity"] = 0.5
    assert not check_claim(tmp_path, table)["held"]
