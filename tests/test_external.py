"""Models written elsewhere: what they take and return, what cannot be probed, and the model
left exactly as it was."""

from collections import OrderedDict

import pandas as pd
import pytest
import torch
from torch import nn

from propbench.errors import ProbeError
from propbench.probes import probe


class Outputs(OrderedDict):
    """Like transformers' ModelOutput: an ordered dict of tensors (None entries absent)."""


class DictModel(nn.Module):
    """Keyword inputs; a dict output with a non-tensor first."""

    def __init__(self, kind=Outputs):
        super().__init__()
        self.body, self.head = nn.Linear(6, 6), nn.Linear(6, 3)
        self.kind = kind

    def forward(self, input_ids, scale=1.0):
        hidden = torch.relu(self.body(input_ids)) * scale
        if self.kind is tuple:
            return (hidden, self.head(hidden))
        return self.kind(cache=[1, 2], last_hidden_state=hidden, logits=self.head(hidden))


def grad_row(frame, module):
    return frame[(frame.module == module) & (frame.quantity == "gradient") & (frame.site == "pre")].iloc[0]


def test_dict_inputs_and_the_first_tensor_of_the_output():
    torch.manual_seed(0)
    net = DictModel()
    x = torch.randn(16, 6)
    frame = probe(net, {"input_ids": x, "scale": 2.0})
    assert frame.attrs["output"] == "last_hidden_state"
    # backpropagated from last_hidden_state: the head, after it, gets no gradient
    assert set(frame[frame.quantity == "gradient"].module) == {"body"}
    picked = probe(net, {"input_ids": x}, output="logits")
    assert picked.attrs["output"] == "logits" and "head" in set(picked[picked.quantity == "gradient"].module)


def test_the_output_key_picks_the_tensor_backpropagated():
    torch.manual_seed(0)
    net = DictModel(tuple)
    x = torch.randn(32, 6)
    cotangent = torch.randn(32, 3)
    frame = probe(net, x, output=1, cotangent=cotangent)
    assert frame.attrs["output"] == "1"
    net.zero_grad()
    net(x)[1].backward(cotangent)
    expected = net.head.weight.grad.double().var(unbiased=False).item()
    weight = frame[(frame.module == "head") & (frame.site == "weight")].iloc[0]
    assert weight["var"] == pytest.approx(expected, rel=1e-5)
    by_callable = probe(net, x, output=lambda out: out[1], cotangent=cotangent)
    pd.testing.assert_frame_equal(by_callable, frame)
    assert probe(net, x).attrs["output"] == "[0]"


@pytest.mark.parametrize("output, message", [
    ("logitz", "output='logitz': no such entry in the model's Outputs; its tensors: last_hidden_state, logits"),
    ("cache", "output=cache: is list, not a tensor"),
])
def test_a_wrong_output_key_names_the_tensors(output, message):
    with pytest.raises(ProbeError, match=message.replace("(", r"\(").replace("[", r"\[")):
        probe(DictModel(), {"input_ids": torch.randn(2, 6)}, output=output)


def test_a_model_returning_no_tensor_is_refused():
    class Words(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(2, 2)

        def forward(self, x):
            self.linear(x)
            return {"text": "hello"}

    with pytest.raises(ProbeError, match="returned dict with no tensor in it"):
        probe(Words(), torch.randn(2, 2))


def test_the_model_is_left_exactly_as_it_was():
    """BatchNorm in train mode updates its running statistics on every forward pass; the
    probe restores them, and every mode and requires_grad flag."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5),
                        nn.Linear(8, 8), nn.BatchNorm1d(8))
    net[3].eval()  # a mixed-mode model stays mixed
    net[4].bias.requires_grad_(False)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    modes = [m.training for m in net.modules()]
    frame = probe(net, torch.randn(32, 8) * 3 + 1)
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "a buffer changed"
    assert int(after["1.num_batches_tracked"]) == 0
    assert [m.training for m in net.modules()] == modes
    assert [p.requires_grad for p in net.parameters()] == [True, True, True, True, True, False, True, True]
    assert net[4].bias.grad is None and len(frame) > 0
    # and the pass saw batch statistics: BatchNorm's output is normalized
    norm = frame[(frame.module == "1") & (frame.quantity == "activation")].iloc[0]
    assert norm["var"] == pytest.approx(1.0, rel=1e-3)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's own, importing dynamo
def test_a_compiled_model_is_probed_through_its_original_module():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8))
    x = torch.randn(4, 8)
    compiled = torch.compile(net)  # compiles lazily: probing must not trigger it
    pd.testing.assert_frame_equal(probe(compiled, x), probe(net, x))
    assert not any(m._forward_hooks for m in net.modules())


def test_meta_device_and_parameterless_models_get_one_clear_line():
    with torch.device("meta"):
        meta = nn.Linear(4, 4)
    with pytest.raises(ProbeError, match="meta device .* model.to_empty") as err:
        probe(meta, torch.randn(2, 4))
    assert "\n" not in str(err.value)
    with pytest.raises(ProbeError, match="Sequential has no floating-point parameter"):
        probe(nn.Sequential(nn.ReLU()), torch.randn(2, 4))
    with pytest.raises(ProbeError, match="probe needs an nn.Module, got function"):
        probe(lambda x: x, torch.randn(2, 4))


def test_a_tapped_module_that_never_runs_is_named():
    """nn.MultiheadAttention reads out_proj's weight without calling it."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    with pytest.warns(UserWarning, match=r"1 tapped module\(s\) never ran: self_attn.out_proj"):
        probe(layer, torch.randn(2, 5, 16))
