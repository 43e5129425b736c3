import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import propbench

ROOT = Path(__file__).resolve().parents[1]


def cfg(*overrides):
    """The composed config for these overrides (as the CLI would see them)."""
    return propbench.compose(list(overrides))


def layer_var(frame, site="post", quantity="activation"):
    """Mean over trials of the variance per layer, as a NumPy array (layer 1 first)."""
    rows = frame[(frame.site == site) & (frame.quantity == quantity)]
    return rows.groupby("layer")["var"].mean().to_numpy()


def per_layer_factor(var):
    """Geometric-mean factor by which the variance changes from one layer to the next."""
    return float(np.exp(np.mean(np.diff(np.log(var)))))


def toy_experiment(folder, claim, expect, **columns):
    """A one-job sweep folder whose first job records an experiment with one expectation
    (``expect``: its YAML flow mapping), and that job's row of the sweep table: status ok,
    both verdicts stable unless ``columns`` say otherwise."""
    import pandas as pd

    hydra = folder / "0" / ".hydra"
    hydra.mkdir(parents=True)
    (hydra / "config.yaml").write_text(
        f"experiment:\n  name: toy\n  claim: {claim}\n  source: a paper\n  expect:\n    - {expect}\n")
    row = {"job": 0, "status": "ok", "error": "", "activation_verdict": "stable",
           "activation_log10_ratio": 0.0, "gradient_verdict": "stable",
           "gradient_log10_ratio": 0.0, **columns}
    return pd.DataFrame({key: [value] for key, value in row.items()})


def cli(*args, cwd, env=None, timeout=300):
    """Run ``python -m propbench ARGS`` in ``cwd``; return the CompletedProcess."""
    full_env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    # this checkout's propbench, whatever is installed (other paths kept after it)
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "propbench", *args],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture(scope="session")
def cuda_device():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    return torch.device("cuda")


@pytest.fixture
def small_disk(tmp_path):
    """A folder on its own 2 MB tmpfs (a disk that fills up), mounted read-write; skipped where
    mounting is not possible (not Linux, not root). Unmounted afterwards."""
    if sys.platform != "linux":
        pytest.skip("mounting a tmpfs needs Linux")
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)],
                           capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def fill(disk, leave=150_000):
    """Fill ``disk`` up to ``leave`` bytes free with a file (returned, to delete later)."""
    filler = disk / "filler"
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    filler.write_bytes(b"\0" * max(free - leave, 0))
    return filler
