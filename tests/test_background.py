"""A sweep job's figure and summary, finished by a forked child."""

import json
import os

import pytest

from propbench import background
from propbench.results import write_error

pytestmark = pytest.mark.skipif(not background.available(), reason="needs os.fork (Linux)")


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    monkeypatch.setattr(background, "_warm", False)
    monkeypatch.setattr(background, "_pending", [])
    yield
    background.wait_all()


def test_the_first_work_runs_in_place_the_next_in_a_child(tmp_path):
    pids = tmp_path / "pids"

    def work():
        with open(pids, "a") as f:
            f.write(f"{os.getpid()}\n")

    background.submit(work, lambda err, text: None)
    assert pids.read_text().split() == [str(os.getpid())]  # done before submit returned
    background.submit(work, lambda err, text: None)
    background.wait_all()
    first, second = pids.read_text().split()
    assert first == str(os.getpid()) and second != first
    assert background.pending() == 0


def test_a_failing_child_records_the_error_and_nothing_complete(tmp_path):
    background.submit(lambda: None, lambda err, text: None)  # the in-place warm-up

    def work():
        (tmp_path / "propagation.png").write_bytes(b"half")
        raise RuntimeError("figure failed")

    background.submit(work, lambda err, text: write_error(tmp_path, err, text))
    background.wait_all()
    error = json.loads((tmp_path / "error.json").read_text())
    assert "figure failed" in json.dumps(error)
    assert not (tmp_path / "summary.json").exists()


def test_no_more_children_than_allowed_at_once(tmp_path, monkeypatch):
    monkeypatch.setattr(background, "MAX_CHILDREN", 1)
    background.submit(lambda: None, lambda err, text: None)
    for i in range(3):
        background.submit(lambda i=i: (tmp_path / f"{i}").write_text("done"),
                          lambda err, text: None)
        assert len(background._pending) <= 1
    background.wait_all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0", "1", "2"]
