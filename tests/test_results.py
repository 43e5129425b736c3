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


def _copy(run_folder, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_folder, copy)
    return copy


def _edit_summary(folder, **changes):
    summary = json.loads((folder / "summary.json").read_text())
    (folder / "summary.json").write_text(json.dumps({**summary, **changes}))


@pytest.mark.parametrize("spoil, message", [
    (lambda f: _edit_summary(f, complete=False), "incomplete run (summary.json does not say complete)"),
    (lambda f: (f / "summary.json").write_text("[1]"), "corrupt (a JSON list, not an object)"),
    (lambda f: (f / "summary.json").write_text("[" * 200_000 + "]" * 200_000), "corrupt (nested too deeply)"),
    (lambda f: (f / "stats.csv").write_text("\n".join((f / "stats.csv").read_text().splitlines()[:-3]) + "\n"),
     "stats.csv: not the file of this run's attempt"),  # rows lost
    (lambda f: pd.read_csv(f / "stats.csv").drop(columns="act").to_csv(f / "stats.csv", index=False),
     "stats.csv: not the file of this run's attempt"),  # a config column lost
    (lambda f: (f / "stats.csv").unlink() or (f / "stats.csv").mkdir(), "stats.csv not a file"),
    (lambda f: (f / "propagation.png").write_bytes(b"another attempt's figure"),
     "propagation.png: not the file of this run's attempt"),
], ids=["not-complete", "summary-list", "summary-deep", "rows-lost", "column-lost", "stats-folder",
        "figure-replaced"])
def test_load_accepts_only_a_folder_whose_files_are_all_of_one_attempt(run_folder, tmp_path, spoil, message):
    copy = _copy(run_folder, tmp_path)
    spoil(copy)
    with pytest.raises(ResultsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        propbench.load(copy)


def test_every_file_is_recorded_with_its_attempt(run_folder):
    import hashlib

    summary = read_summary(run_folder)
    assert len(summary["attempt"]) == 32
    for name in ("stats.csv", "propagation.png"):
        assert summary["files"][name] == hashlib.sha256((run_folder / name).read_bytes()).hexdigest()


def test_results_written_before_attempt_ids_still_load_if_whole(run_folder, tmp_path):
    copy = _copy(run_folder, tmp_path)
    summary = json.loads((copy / "summary.json").read_text())
    del summary["files"], summary["attempt"]
    (copy / "summary.json").write_text(json.dumps(summary))
    assert len(propbench.load(copy)) == len(propbench.load(run_folder))
    pd.read_csv(copy / "stats.csv").drop(columns="act").to_csv(copy / "stats.csv", index=False)
    with pytest.raises(ResultsError, match="missing column\\(s\\) act"):
        propbench.load(copy)


def test_a_rerun_removes_the_old_summary_before_writing_anything(run_folder, tmp_path, monkeypatch):
    """Killed between the new stats.csv and the new summary, the folder is incomplete, never
    new statistics under the old summary."""
    from propbench import runner

    copy = _copy(run_folder, tmp_path)

    def killed(*args, **kwargs):
        assert not (copy / "summary.json").exists()  # gone before the new stats.csv lands
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "write_summary", killed)
    with pytest.raises(KeyboardInterrupt):
        propbench.run(cfg("depth=4", "width=16", "batch_size=8", "trials=2", "seed=5"), copy)
    with pytest.raises(ResultsError, match="incomplete run"):
        propbench.load(copy)
    assert runner.completed_config(copy) is None  # resume=true runs it again


def test_temporary_names_are_unique(tmp_path, monkeypatch):
    from propbench.results import atomic_write

    seen = []
    atomic_write(tmp_path / "a.txt", lambda tmp: seen.append(tmp) or tmp.write_text("1"))
    atomic_write(tmp_path / "a.txt", lambda tmp: seen.append(tmp) or tmp.write_text("2"))
    assert seen[0] != seen[1] and all(p.name.startswith(".a.txt.") for p in seen)
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_resume_keeps_a_run_whatever_says_only_how_it_runs(run_folder, tmp_path):
    copy = _copy(run_folder, tmp_path)
    kept = propbench.run(cfg("depth=4", "width=16", "batch_size=8", "trials=2", "resume=true",
                             "quiet=true", "trial_batch=1"), copy)
    assert kept.resumed
    again = propbench.run(cfg("depth=4", "width=16", "batch_size=8", "trials=2", "resume=true",
                              "seed=1"), copy)
    assert not again.resumed and read_summary(copy)["config"]["seed"] == 1
