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
