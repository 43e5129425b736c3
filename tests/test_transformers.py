"""Hugging Face models built from small configs (no weights are downloaded), probed as their
users would: through the API and the CLI. Skipped without ``transformers``."""

import json

import numpy as np
import pytest
import torch

import propbench
from propbench.verdict import summarize
from tests.conftest import cli

transformers = pytest.importorskip("transformers")

N_LAYER = 4


def gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=N_LAYER, n_embd=64, n_head=4, vocab_size=512,
                                     n_positions=64)
    return transformers.GPT2Model(config).eval()  # eval: no dropout, so a reference pass agrees


def bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(num_hidden_layers=N_LAYER, hidden_size=64, num_attention_heads=4,
                                     intermediate_size=128, vocab_size=512, max_position_embeddings=64)
    return transformers.BertModel(config)


def tokens(batch=8, length=32):
    return torch.randint(0, 512, (batch, length), generator=torch.Generator().manual_seed(1))


def test_gpt2_blocks_are_its_hidden_states():
    model = gpt2()
    ids = tokens()
    frame = propbench.probe(model, ids)
    assert frame.attrs == {"output": "last_hidden_state", "blocks": "4 x GPT2Block (h.0 .. h.3)"}
    blocks = frame[(frame.site == "block") & (frame.quantity == "activation")]
    assert list(blocks.module) == [f"h.{i}" for i in range(N_LAYER)] and list(blocks.layer) == [1, 2, 3, 4]
    with torch.no_grad():  # hidden_states: the embeddings, then each block's output (ln_f on the last)
        hidden = model(ids, output_hidden_states=True).hidden_states
    for i in range(N_LAYER - 1):
        assert blocks.iloc[i]["var"] == pytest.approx(hidden[i + 1].double().var(unbiased=False).item(), rel=1e-5)
    # Conv1D projections and NewGELUActivation, four and one per block, filed under the block
    acts = frame[frame.quantity == "activation"]
    per_block = acts[acts.layer >= 1].groupby(["layer", "site"]).size().unstack()
    assert (per_block["pre"] == 4).all() and (per_block["post"] == 1).all() and (per_block["norm"] == 2).all()
    assert set(frame[frame.site == "post"].module.str.rsplit(".", n=1).str[-1]) == {"act"}
    assert len(frame[(frame.site == "weight")]) == 4 * N_LAYER
    summary = summarize(frame)
    assert summary["activation"]["site"] == summary["gradient"]["site"] == "block"
    assert summary["activation"]["layers"] == N_LAYER
    # ln_f (weight 1) divides the stream by its standard deviation: the N(0, 1) cotangent
    # reaches the last block's output with variance 1 / Var(stream) (measured 1.02 at d = 64)
    stream = frame[frame.site == "block"].groupby(["quantity", "layer"])["var"].first()
    assert stream["gradient"][N_LAYER] * stream["activation"][N_LAYER] == pytest.approx(1.0, abs=0.1)


def test_bert_takes_dict_inputs_and_its_stream_gradient_is_flat():
    """BERT's post-LN blocks end in a LayerNorm: the stream keeps variance 1 and its gradient
    changes by about 0.98 per block; q, k and v sit in their block, not at depths of their own."""
    model = bert()
    ids = tokens()
    frame = propbench.probe(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    assert frame.attrs["blocks"] == "4 x BertLayer (encoder.layer.0 .. encoder.layer.3)"
    stream = frame[frame.site == "block"].groupby(["quantity", "layer"])["var"].first()
    np.testing.assert_allclose(stream["activation"], 1.0, rtol=1e-3)  # LayerNorm, weight 1
    per_block = np.exp(np.mean(np.diff(np.log(stream["gradient"].to_numpy()))))
    assert 0.9 < per_block < 1.1
    layers = frame.drop_duplicates("module").set_index("module")["layer"]
    assert {layers[f"encoder.layer.2.attention.self.{n}"] for n in ("query", "key", "value")} == {3}
    assert summarize(frame)["gradient"]["verdict"] == "stable"


def test_a_hugging_face_model_is_left_unchanged():
    model = bert()  # train mode, as built
    before = {k: v.clone() for k, v in model.state_dict().items()}
    propbench.probe(model, tokens(), output="pooler_output")
    assert model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


GPT2_CLI = ["model=custom", "model._target_=transformers.GPT2Model",
            "model.config._target_=transformers.GPT2Config", f"model.config.n_layer={N_LAYER}",
            "model.config.n_embd=32", "model.config.n_head=2", "model.config.vocab_size=256",
            "input.shape=[16]", "input.kind=tokens", "input.vocab_size=256", "batch_size=4"]


def test_gpt2_from_the_cli(tmp_path):
    out = tmp_path / "run"
    proc = cli(*GPT2_CLI, f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "probed: 4 x GPT2Block (h.0 .. h.3); backpropagated from last_hidden_state" in proc.stdout
    assert "block output variance, last / first block" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["probe"]["output"] == "last_hidden_state" and summary["activation"]["site"] == "block"
    frame = propbench.load(out)
    assert sorted(frame[frame.site == "block"].layer.unique()) == [1, 2, 3, 4]
    assert frame.model.iloc[0] == "transformers.GPT2Model" and frame.depth.iloc[0] == N_LAYER
    # the same model through the API: the CLI's numbers
    api = propbench.run(propbench.compose(GPT2_CLI)).frame
    np.testing.assert_allclose(frame["var"], api["var"], rtol=1e-6)
