"""The notebook runs top to bottom on a tiny sweep, and is stored without outputs."""

import json
import math

import pytest

import propbench
from tests.conftest import ROOT

NOTEBOOK = ROOT / "notebooks" / "explore_sweep.ipynb"


def test_notebook_is_stored_without_outputs():
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    assert all(not c.get("outputs") and not c.get("execution_count")
               for c in cells if c["cell_type"] == "code")


def test_notebook_runs_on_a_fresh_clone(tmp_path, monkeypatch):
    """With no sweep where it looks, the notebook makes one (run_sweep) and explores it."""
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    sweep = tmp_path / "sweep"  # absent, as results/multirun/notebook_example on a fresh clone
    monkeypatch.setenv("PROPBENCH_SWEEP", str(sweep))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # this checkout's propbench, in the kernel too
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the figures were drawn
    table = propbench.load_sweep(sweep)
    assert len(table) == 8 and set(table["status"]) == {"ok"}
    # PyTorch's default init: a ReLU net's gradient falls 6x per layer (29 steps at depth 30)
    deep = table[(table["act"] == "relu") & (table["init"] == "default") & (table["depth"] == 30)]
    assert deep["gradient_log10_ratio"].item() == pytest.approx(29 * math.log10(1 / 6), abs=1.5)
