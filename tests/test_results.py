import json

import pandas as pd
import pytest

import propbench
from propbench.errors import ResultsError
from propbench.results import read_summary, write_stats, write_summary
from tests.conftest import cfg


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    propbench.run(cfg("depth=4", "width=16", "batch_size=8", "trials=2"), folder)
    return folder


def test_round_trip_keeps_every_number(run_folder):
    frame = propbench.load(run_folder)
    again = propbench.run(cfg("depth=4", "width=16", "batch_size=8", "trials=2")).frame
    pd.testing.assert_frame_equal(frame, again.astype(frame.dtypes.to_dict()), rtol=1e-8)
    assert sorted(frame.trial.unique()) == [0, 1]


def test_folder_contents_and_summary(run_folder):
    assert {p.name for p in run_folder.iterdir()} >= {"stats.csv", "summary.json", "propagation.png"}
    assert not list(run_folder.glob(".*.tmp"))
    summary = read_summary(run_folder)
    assert summary["complete"] is True
    assert summary["config"]["depth"] == 4 and summary["trials"] == 2
    assert {"torch", "numpy", "python", "propbench"} <= set(summary["versions"])
    assert summary["activation"]["verdict"] in ("stable", "vanishing", "exploding")


def test_non_finite_numbers_become_json_null(tmp_path):
    write_summary(tmp_path, {"activation": {"log10_ratio": float("-inf"), "ratio": float("nan")}})
    data = json.loads((tmp_path / "summary.json").read_text())  # strict JSON
    assert data["activation"] == {"log10_ratio": None, "ratio": None}


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing", "no such file or folder"),
    (lambda p: p, "not a propbench run folder"),
    (lambda p: (p / "stats.csv").write_text("trial,layer\n0,1\n") and p, "incomplete run"),
])
def test_load_refuses_what_is_not_a_complete_run(tmp_path, make, message):
    with pytest.raises(ResultsError, match=message):
        propbench.load(make(tmp_path))


def test_load_refuses_truncated_or_edited_csv(run_folder, tmp_path):
    text = (run_folder / "stats.csv").read_text()
    bad = tmp_path / "stats.csv"
    bad.write_text(text.replace(",mean,", ",average,"))
    with pytest.raises(ResultsError, match="missing column"):
        propbench.load(bad)
    bad.write_text(text.splitlines()[0] + "\n0,1,x,pre,activation,oops\n")
    with pytest.raises(ResultsError, match="malformed"):
        propbench.load(bad)


def test_stats_written_atomically(tmp_path, monkeypatch):
    write_stats(tmp_path, pd.DataFrame({"a": [1]}))
    before = (tmp_path / "stats.csv").read_bytes()

    def fail_midway(self, path, **kwargs):
        path.write_text("a\n2\n")  # half of the new file is on disk
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        write_stats(tmp_path, pd.DataFrame({"a": [2, 3]}))
    assert [p.name for p in tmp_path.iterdir()] == ["stats.csv"]  # no temporary left behind
    assert (tmp_path / "stats.csv").read_bytes() == before  # the old file, whole


def test_an_unaggregated_sweep_is_named_as_such(tmp_path):
    (tmp_path / "jobs.json").write_text('{"jobs": [{"job": 0, "overrides": ["depth=2"]}]}')
    for load in (propbench.load, propbench.load_sweep):
        with pytest.raises(ResultsError, match="sweep not aggregated yet; run python -m propbench.report"):
            load(tmp_path)


def test_load_sweep_refuses_a_run_folder(run_folder):
    with pytest.raises(ResultsError, match="not a propbench sweep"):
        propbench.load_sweep(run_folder)


def test_results_from_before_the_theory_column_still_load(run_folder, tmp_path):
    older = pd.read_csv(run_folder / "stats.csv").drop(columns="theory")
    path = tmp_path / "stats.csv"
    older.to_csv(path, index=False)
    frame = propbench.load(path)
    assert frame["theory"].isna().all() and len(frame) == len(older)
