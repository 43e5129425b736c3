"""Sweeps through the CLI: aggregation, launchers, failed and interrupted sweeps, report."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

import propbench
from propbench.sweep import aggregate
from tests.conftest import cli

TINY = ("width=8", "batch_size=4")


def report(folder, *args):
    return subprocess.run([sys.executable, "-m", "propbench.report", str(folder), *args],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def basic_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("basic")
    proc = cli("-m", "depth=2,3", "act=relu,tanh", "init=default,kaiming", *TINY,
               f"hydra.sweep.dir={root / 'sweep'}", cwd=root)
    assert proc.returncode == 0, proc.stderr
    return root / "sweep", proc


def test_sweep_folder_has_every_artifact(basic_sweep):
    folder, proc = basic_sweep
    names = {p.name for p in folder.iterdir()}
    assert {"jobs.json", "sweep.csv", "sweep_summary.csv", "summary.md", "grid_depth2.png",
            "grid_depth3.png", "heatmap_depth2.png", "heatmap_depth3.png"} <= names
    assert "8 jobs: 8 ok" in proc.stdout  # the table is printed at the end
    assert "[8/8]" in proc.stdout  # progress: jobs done / total


def test_sweep_tables_agree_with_each_job(basic_sweep):
    folder, _ = basic_sweep
    table = pd.read_csv(folder / "sweep_summary.csv")
    assert list(table["job"]) == list(range(8)) and set(table["status"]) == {"ok"}
    for _, row in table.iterrows():
        summary = json.loads((folder / str(row["job"]) / "summary.json").read_text())
        assert summary["config"]["act"]["name"] == row["act"]
        assert row["activation_verdict"] == summary["activation"]["verdict"]
        assert row["gradient_log10_ratio"] == pytest.approx(summary["gradient"]["log10_ratio"])
    frame = propbench.load(folder)  # the sweep's sweep.csv, every job stacked
    assert sorted(frame["job"].unique()) == list(range(8))
    job5 = propbench.load(folder / "5")
    pd.testing.assert_frame_equal(
        frame[frame.job == 5].drop(columns="job").reset_index(drop=True)[job5.columns],
        job5, check_dtype=False)


def test_report_reaggregates_a_finished_sweep(basic_sweep):
    folder, _ = basic_sweep
    proc = report(folder, "--no-figures")
    assert proc.returncode == 0, proc.stderr
    assert "8 jobs: 8 ok" in proc.stdout


@pytest.mark.parametrize("launcher", [
    ("hydra/launcher=joblib", "hydra.launcher.n_jobs=2"),
    pytest.param(("hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5"),
                 marks=pytest.mark.slow),
], ids=["joblib", "submitit_local"])
def test_launchers_give_the_same_numbers_as_the_basic_one(basic_sweep, tmp_path, launcher):
    proc = cli("-m", "depth=2,3", "act=relu,tanh", "init=default,kaiming", *TINY, *launcher,
               f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    ours, basic = propbench.load(tmp_path / "sweep"), propbench.load(basic_sweep[0])
    pd.testing.assert_frame_equal(ours.sort_values(["job", "trial", "quantity", "layer", "site"])
                                  .reset_index(drop=True),
                                  basic.sort_values(["job", "trial", "quantity", "layer", "site"])
                                  .reset_index(drop=True))


def test_a_failed_job_is_reported_and_the_others_kept(tmp_path):
    # HYDRA_FULL_ERROR skips the up-front check, so the bad job reaches its own run.
    proc = cli("-m", "depth=2,0,3", *TINY, f"hydra.sweep.dir={tmp_path / 's'}", cwd=tmp_path,
               env={"HYDRA_FULL_ERROR": "1"})
    assert proc.returncode == 1
    assert "1 failed" in proc.stderr
    table = pd.read_csv(tmp_path / "s" / "sweep_summary.csv")
    assert list(table["status"]) == ["ok", "failed", "ok"]
    assert "depth=0: must be >= 1" in table.loc[1, "error"]
    assert (tmp_path / "s" / "2" / "summary.json").exists()
    assert not (tmp_path / "s" / "1" / "stats.csv").exists()
    again = report(tmp_path / "s", "--no-figures")
    assert again.returncode == 1 and "failed: job 1 (depth=0" in again.stderr


def test_report_on_an_interrupted_sweep(tmp_path):
    sweep = tmp_path / "s"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "propbench", "-m", "depth=2,3,4,5,6,7,8,9,10,11,12,13", *TINY,
         f"hydra.sweep.dir={sweep}"], cwd=tmp_path, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (sweep / "1" / "summary.json").exists() and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=60)
    result = report(sweep, "--no-figures")
    assert result.returncode == 1
    table = pd.read_csv(sweep / "sweep_summary.csv")
    assert len(table) == 12 and table.loc[0, "status"] == "ok" and table.loc[1, "status"] == "ok"
    assert {"missing"} <= set(table["status"])
    assert "missing: job 11 (depth=13" in result.stderr


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "nope", "no such sweep folder"),
    (lambda p: p, "not a propbench sweep"),
])
def test_report_refuses_what_is_not_a_sweep(tmp_path, make, message):
    proc = report(make(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("propbench.report: error:") and message in proc.stderr


def test_aggregate_without_manifest_uses_job_folders(basic_sweep, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(basic_sweep[0], copy)
    (copy / "jobs.json").unlink()
    assert len(aggregate(copy, figures=False).table) == 8


def test_shipped_slurm_settings_compose(tmp_path):
    proc = cli("--cfg", "hydra", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "SlurmLauncher" in proc.stdout and "gpus_per_node: 1" in proc.stdout
    assert "partition: gpu" in proc.stdout


def test_an_interrupted_sweep_resumes_without_redoing_finished_jobs(tmp_path):
    sweep = tmp_path / "s"
    args = ["-m", "depth=2,3,4,5,6,7,8,9", *TINY, f"hydra.sweep.dir={sweep}"]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.Popen([sys.executable, "-m", "propbench", *args], cwd=tmp_path, env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (sweep / "2" / "summary.json").exists() and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)
    done = {j: (sweep / str(j) / "summary.json").stat().st_mtime_ns
            for j in range(8) if (sweep / str(j) / "summary.json").exists()}
    assert 3 <= len(done) < 8
    resumed = cli(*args, "resume=true", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.count("(kept: resume=true)") == len(done)
    for job, stamp in done.items():  # not redone
        assert (sweep / str(job) / "summary.json").stat().st_mtime_ns == stamp
    table = pd.read_csv(sweep / "sweep_summary.csv")
    assert set(table["status"]) == {"ok"} and len(table) == 8


def test_report_marks_a_hand_edited_job_corrupt(basic_sweep, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(basic_sweep[0], copy)
    stats = copy / "3" / "stats.csv"
    stats.write_text(stats.read_text()[:200])  # cut short
    proc = report(copy, "--no-figures")
    assert proc.returncode == 1
    assert "corrupt: job 3" in proc.stderr
    table = pd.read_csv(copy / "sweep_summary.csv")
    assert table.loc[3, "status"] == "corrupt" and set(table.drop(3)["status"]) == {"ok"}


def test_reading_results_never_executes_code(basic_sweep, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(basic_sweep[0], copy)
    marker = tmp_path / "pwned"
    (copy / "0" / ".hydra" / "config.yaml").write_text(
        f"!!python/object/apply:os.system ['touch {marker}']\n")
    aggregate(copy, figures=False)
    propbench.load(copy)
    assert not marker.exists()


def test_check_claim_holds_fails_and_lists_what_it_could_not_check(tmp_path):
    from propbench.sweep import check_claim

    hydra = tmp_path / "0" / ".hydra"
    hydra.mkdir(parents=True)
    (hydra / "config.yaml").write_text(
        "depth: 10\n"
        "experiment:\n  name: toy\n  claim: ReLU keeps it, tanh does not.\n  source: a paper\n"
        "  expect:\n"
        "    - {where: {act: relu}, quantity: activation, verdict: [stable]}\n"
        "    - {where: {act: tanh, depth: 10}, quantity: gradient, verdict: [exploding, vanishing]}\n"
        "    - {where: {act: gelu}, quantity: activation, verdict: [stable]}\n")
    table = pd.DataFrame({"act": ["relu", "relu", "tanh"], "depth": ["10", "20", "10"],
                          "activation_verdict": ["stable", "stable", "stable"],
                          "gradient_verdict": ["stable", "stable", "vanishing"]})
    claim = check_claim(tmp_path, table)
    assert (claim["name"], claim["source"]) == ("toy", "a paper")
    assert [c["held"] for c in claim["checks"]] == [True, True, None]  # gelu: no such job
    assert claim["checks"][1]["got"] == ["vanishing"] and claim["held"]
    table.loc[1, "activation_verdict"] = "exploding"
    assert not check_claim(tmp_path, table)["held"]
    (hydra / "config.yaml").write_text("depth: 10\n")
    assert check_claim(tmp_path, table) is None  # not an experiment


def test_check_claim_holds_a_log10_ratio_between_two_numbers(tmp_path):
    from propbench.sweep import SweepReport, check_claim, markdown

    hydra = tmp_path / "0" / ".hydra"
    hydra.mkdir(parents=True)
    (hydra / "config.yaml").write_text(
        "experiment:\n  name: toy\n  claim: doubles per block\n  source: a paper\n  expect:\n"
        "    - {where: {depth: 10}, quantity: activation, between: [2.6, 2.8]}\n")
    table = pd.DataFrame({"job": [0], "depth": ["10"], "status": ["ok"], "error": [""],
                          "activation_verdict": ["exploding"], "activation_log10_ratio": [2.71],
                          "gradient_verdict": ["stable"], "gradient_log10_ratio": [0.0]})
    claim = check_claim(tmp_path, table)
    assert claim["held"] and claim["checks"][0]["ratios"] == [2.71]
    text = markdown(SweepReport(tmp_path, table, pd.DataFrame(), claim), ["depth"])
    assert "activation expected log10 ratio in [+2.60, +2.80], got exploding (+2.71)" in text
    table.loc[0, "activation_log10_ratio"] = 2.9
    assert not check_claim(tmp_path, table)["held"]
