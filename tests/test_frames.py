"""One set of dtypes from probe(), run(), load() and a sweep; Parquet beside CSV."""

import numpy as np
import pandas as pd
import pytest
import torch

import propbench
from propbench.frames import ALL_TYPES, typed
from propbench.results import STATS, STATS_PARQUET
from tests.conftest import cfg, layer_var

CONFIG = ("depth=6", "width=32", "batch_size=16", "init=scaled", "init.sigma_w2=2.0",
          "init.sigma_b2=0", "trials=2")


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    return folder, propbench.run(cfg(*CONFIG), folder)


def expected_types(frame):
    return {c: str(ALL_TYPES[c]) for c in frame.columns if c in ALL_TYPES}


def test_run_and_load_give_the_same_dtypes(run_folder):
    folder, result = run_folder
    loaded = propbench.load(folder)
    assert loaded.dtypes.to_dict() == result.frame.dtypes.to_dict()
    assert {c: str(t) for c, t in result.frame.dtypes.items() if c in ALL_TYPES} \
        == expected_types(result.frame)
    for label in ("module", "site", "quantity", "model", "act", "init", "norm", "dtype"):
        assert isinstance(loaded[label].dtype, pd.CategoricalDtype), label
    # sigma_b2 = 0 is a float column, not int64 as CSV inference would make it
    assert loaded["sigma_b2"].dtype == np.float64 and (loaded["sigma_b2"] == 0).all()
    assert loaded["sigma_w2"].iloc[0] == pytest.approx(2.0, rel=0.1)
    assert loaded["depth"].dtype == np.int64
    pd.testing.assert_frame_equal(loaded, result.frame, rtol=1e-8)


def test_probe_has_the_contract_dtypes():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(),
                              torch.nn.Linear(64, 64), torch.nn.ReLU())
    for layer in net[::2]:
        torch.nn.init.kaiming_normal_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
    frame = propbench.probe(net, torch.randn(512, 64))
    assert {c: str(t) for c, t in frame.dtypes.items()} == expected_types(frame)
    assert set(frame["site"].cat.categories) == {"pre", "post", "weight"}
    # Kaiming, Var(W) = 2/fan_in, on unit inputs: Var(pre) = 2, so E[relu(pre)^2] = 1 and
    # Var(relu(pre)) = 1 - 1/pi, in both layers (width 64: a 30% finite-width allowance)
    post = frame[(frame.site == "post") & (frame.quantity == "activation")]
    assert post["second_moment"].to_numpy() == pytest.approx([1.0, 1.0], rel=0.3)
    assert layer_var(frame) == pytest.approx([1 - 1 / np.pi] * 2, rel=0.3)


def test_a_sweep_frame_has_the_contract_dtypes(tmp_path):
    report = propbench.run_sweep({"depth": 3, "act": ["relu", "tanh"], "width": 8,
                                  "batch_size": 4}, tmp_path / "sweep", quiet=True)
    loaded = propbench.load(tmp_path / "sweep")
    for frame in (report.frame, loaded):
        assert {c: str(t) for c, t in frame.dtypes.items() if c in ALL_TYPES} == expected_types(frame)
        assert list(frame["act"].cat.categories) == ["relu", "tanh"]


def test_typed_leaves_other_columns_and_refuses_bad_values():
    frame = typed(pd.DataFrame({"layer": ["1", "2"], "site": ["pre", "post"], "extra": ["a", 1]}))
    assert frame["layer"].dtype == np.int64 and frame["extra"].dtype == object
    with pytest.raises((ValueError, TypeError)):
        typed(pd.DataFrame({"layer": ["one"]}))


def test_parquet_beside_csv_and_load_reads_either(run_folder, tmp_path):
    pytest.importorskip("pyarrow")
    folder, result = run_folder
    assert (folder / STATS_PARQUET).exists()
    from_parquet = propbench.load(folder / STATS_PARQUET)
    pd.testing.assert_frame_equal(from_parquet, result.frame)  # exact: no decimal round trip
    only_parquet = tmp_path / "run"
    only_parquet.mkdir()
    for name in (STATS_PARQUET, "summary.json"):
        (only_parquet / name).write_bytes((folder / name).read_bytes())
    assert not (only_parquet / STATS).exists()
    pd.testing.assert_frame_equal(propbench.load(only_parquet), result.frame)


def test_without_pyarrow_only_csv_is_written(tmp_path, monkeypatch):
    from propbench import results

    monkeypatch.setattr(results, "has_parquet", lambda: False)
    propbench.run(cfg("depth=2", "width=8", "batch_size=4"), tmp_path)
    assert (tmp_path / STATS).exists() and not (tmp_path / STATS_PARQUET).exists()
