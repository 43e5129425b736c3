"""The notebook runs top to bottom on a tiny sweep, and is stored without outputs."""

import json

import pytest

from tests.conftest import ROOT, cli

NOTEBOOK = ROOT / "notebooks" / "explore_sweep.ipynb"


def test_notebook_is_stored_without_outputs():
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    assert all(not c.get("outputs") and not c.get("execution_count")
               for c in cells if c["cell_type"] == "code")


def test_notebook_runs_on_a_tiny_sweep(tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    proc = cli("-m", "depth=2,3", "act=relu,tanh", "init=default,kaiming", "width=8",
               "batch_size=4", f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    monkeypatch.setenv("PROPBENCH_SWEEP", str(tmp_path / "sweep"))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the figures were drawn
