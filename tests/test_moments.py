"""The moments of a tensor against float64 two-pass references, in every regime."""

import numpy as np
import pytest
import torch

from propbench.moments import COLUMNS, Moments, moments

F32 = torch.finfo(torch.float32)


def reference(x: torch.Tensor, channels: bool = False) -> dict[str, float]:
    """Two-pass float64 statistics of one slice (exact to float64 round-off)."""
    x = x.double()
    if x.abs().max() > 1e150:  # squares would overflow float64: scale exactly first
        scale = 2.0 ** 400
        ref = reference(x / scale, channels)
        return {k: v * (scale if k == "mean" else scale**2) for k, v in ref.items()}
    out = {"mean": x.mean().item(), "var": torch.var(x, correction=0).item()}
    if channels:
        per_channel = x.transpose(0, 1).reshape(x.shape[1], -1)
        out["channel_mean_sq"] = per_channel.mean(1).square().mean().item()
        out["channel_var"] = per_channel.var(1, correction=0).mean().item()
    return out


def regimes():
    g = torch.Generator().manual_seed(0)

    def normal(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

    return {
        "standard": normal(256, 256),
        "mean/sd=1e2": 1e2 + normal(256, 256),
        "mean/sd=1e4": 1e4 + normal(256, 256),
        "mean/sd=1e4 negative": -3e4 + 3 * normal(64, 512),
        "relu of bias 1000": torch.relu(1000 + normal(256, 256)),
        "sigmoid saturated": torch.sigmoid(20 + 1e-3 * normal(128, 64)),
        "subnormal float32": normal(256, 256) * 1e-40,
        "tiny float32": normal(256, 256) * 1e-21,
        "huge float32": normal(256, 256) * 1e37,
        "near float32 max": torch.tensor([F32.max, -F32.max, 0.5 * F32.max, 1.0]),
        "float64 standard": normal(128, 128, dtype=torch.float64),
        "float64 mean/sd=1e4": 1e4 + normal(128, 128, dtype=torch.float64),
        "float64 1e150": normal(128, 128, dtype=torch.float64) * 1e150,
        "float64 1e-300": normal(128, 128, dtype=torch.float64) * 1e-150,
        "float64 1e-160": normal(128, 128, dtype=torch.float64) * 1e-140,
        "one element": torch.tensor([3.0]),
        "constant": torch.full((32, 32), 0.25),
    }


@pytest.mark.parametrize("name,x", list(regimes().items()))
def test_mean_and_variance_match_two_pass_float64(name, x):
    got = dict(zip(COLUMNS, moments(x.unsqueeze(0), per_channel=False)[0]))
    ref = reference(x)
    rtol = 1e-10 if x.dtype == torch.float64 else 1e-5
    assert got["var"] == pytest.approx(ref["var"], rel=rtol, abs=0), name
    spread = np.sqrt(ref["var"] + ref["mean"] ** 2)  # a mean near 0 is held to the scale
    assert abs(got["mean"] - ref["mean"]) <= rtol * spread
    assert got["nonfinite"] == 0
    assert np.isnan(got["channel_mean_sq"]) and np.isnan(got["channel_var"])


@pytest.mark.parametrize("offset,scale,dtype", [
    (0.0, 1.0, torch.float32), (1e3, 1.0, torch.float32), (1e4, 1.0, torch.float32),
    (0.0, 1e-42, torch.float32), (0.0, 1e36, torch.float32), (1e4, 1.0, torch.float64),
    (0.0, 1e140, torch.float64),
])
def test_channel_statistics_match_two_pass_float64(offset, scale, dtype):
    g = torch.Generator().manual_seed(1)
    x = (offset + torch.randn(8, 6, 5, 5, generator=g, dtype=torch.float64)
         * torch.linspace(0.5, 2, 6, dtype=torch.float64)[:, None, None]) * scale
    x = x.to(dtype)
    got = dict(zip(COLUMNS, moments(x.unsqueeze(0))[0]))
    ref = reference(x, channels=True)
    rtol = 1e-10 if dtype == torch.float64 else 1e-5
    for key in ("var", "channel_mean_sq", "channel_var"):
        assert got[key] == pytest.approx(ref[key], rel=rtol, abs=0), key


def test_nonfinite_elements_are_counted_exactly():
    x = torch.randn(3, 1000)
    x[0, :7] = float("inf")
    x[1, 5] = float("nan")
    x[1, 6] = -float("inf")
    got = moments(x)
    assert got[:, 2].tolist() == [7, 2, 0]
    assert not np.isfinite(got[0, 1]) and not np.isfinite(got[1, 1])
    assert got[2, 1] == pytest.approx(torch.var(x[2].double(), correction=0).item(), rel=1e-5)


def test_float64_beyond_float64_squares():
    """Elements of 1e200 are finite; their variance (1e400) is not representable: inf, not
    NaN, and no element is counted as non-finite."""
    x = torch.randn(1, 64, dtype=torch.float64) * 1e200
    got = moments(x)[0]
    assert got[1] == np.inf and got[2] == 0 and np.isfinite(got[0])


def test_trials_are_reduced_separately():
    x = torch.stack([torch.randn(50, 40) * s + m for s, m in ((1, 0), (3, 1e4), (1e-30, 0))])
    got = moments(x)
    for t in range(3):
        assert got[t, 1] == pytest.approx(reference(x[t])["var"], rel=1e-5)


def test_many_records_one_transfer():
    reduction = Moments()
    g = torch.Generator().manual_seed(2)
    tensors = [torch.randn(1, 10 + i, 7, generator=g) * (i + 1) for i in range(5)]
    for t in tensors:
        reduction.add(t, per_channel=False)
    reduction.add_pairs(torch.randn(1, 8, 16))
    stats = reduction.finish()
    assert stats.shape == (6, 1, 5)
    for i, t in enumerate(tensors):
        assert stats[i, 0, 1] == pytest.approx(reference(t[0])["var"], rel=1e-5)
    assert reduction.workspace == {}


def test_pairs_give_the_cosine_of_each_pair():
    a = torch.randn(1, 4, 32)
    b = 0.6 * a + 0.8 * torch.randn(1, 4, 32)
    x = torch.stack([a, b], dim=2).reshape(1, 8, 32)
    reduction = Moments()
    reduction.add_pairs(x)
    got = reduction.finish()[0, 0]
    cosine = torch.nn.functional.cosine_similarity(a[0].double(), b[0].double(), dim=-1)
    assert got[0] == pytest.approx(cosine.mean().item(), rel=1e-12)
    assert got[1] == pytest.approx(cosine.var(correction=0).item(), rel=1e-9)


def float32_cases():
    """Float32 CPU tensors on the float32 path (see propbench.moments) or sent to the exact
    one, with data that trips naive float32 sums: +-c values (a dot product's per-lane
    accumulators drift by 1.8e-5 on +-0.1), 2^18 and 2^20 elements (row norms), scales
    past float32's squares, a sum past float32's range."""
    g = torch.Generator().manual_seed(5)

    def signs(*shape):
        return (torch.randint(0, 2, shape, generator=g) * 2 - 1).float()

    return {
        "+-0.1, 2^16": (signs(256, 256) * 0.1, "float32"),
        "+-1/3, 2^18": (signs(512, 512) / 3, "float32"),
        "uniform(0, 1), 2^18": (torch.rand(512, 512, generator=g), "float32"),
        "relu(normal), 2^20": (torch.relu(torch.randn(1024, 1024, generator=g)), "float32"),
        "normal * 1e25, 2^18": (torch.randn(512, 512, generator=g) * 1e25, "float32"),
        "normal * 1e-41 (subnormal), 2^18": (
            (torch.randn(512, 512, generator=g, dtype=torch.float64) * 1e-41).float(), "float32"),
        "3e38 + 1e36 normal (sum overflows)": (
            torch.full((4096,), 3e38) + torch.randn(4096, generator=g) * 1e36, "exact"),
        "mean/sd = 4 (E[x^2]/var = 17)": (4 + torch.randn(256, 256, generator=g), "exact"),
        "zeros": (torch.zeros(64, 64), "exact"),
    }


@pytest.mark.parametrize("name", list(float32_cases()))
def test_float32_sums_are_kept_only_where_exact(name, monkeypatch):
    x, path = float32_cases()[name]
    exact = []
    original = Moments._add_exact
    monkeypatch.setattr(Moments, "_add_exact",
                        lambda self, v, grouped: exact.append(1) or original(self, v, grouped))
    got = dict(zip(COLUMNS, moments(x.unsqueeze(0), per_channel=False)[0]))
    ref = reference(x)
    assert ("exact" if exact else "float32") == path
    assert got["var"] == pytest.approx(ref["var"], rel=1e-6, abs=0)
    assert abs(got["mean"] - ref["mean"]) <= 1e-6 * np.sqrt(ref["var"] + ref["mean"] ** 2)


def test_float32_slices_of_every_kind_in_one_record():
    """Trials reduced together: a standard slice, a tiny one (scaled by 2^100), a huge one
    (scaled by 2^-100) and one with NaNs, each exact and its non-finite count exact."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(4, 128, 128, generator=g, dtype=torch.float64)
    x[1] *= 1e-30
    x[2] *= 1e30
    x = x.float()
    x[3, 5, :9] = float("nan")
    got = moments(x)
    assert got[:, 2].tolist() == [0, 0, 0, 9]
    for t in range(3):
        assert got[t, 1] == pytest.approx(reference(x[t])["var"], rel=1e-6)
    assert np.isnan(got[3, 1])
