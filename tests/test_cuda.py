"""The CUDA path against the CPU and against float64 references (skipped without CUDA).

Where the CUDA path differs from the CPU's: the moments count non-finite elements on every
tensor (no host read inside a hook), stacked trials use grouped kernels, float64 runs on the
device, and the memory estimate must cover what the CUDA allocator really takes.
"""

import numpy as np
import pandas as pd
import pytest
import torch

from propbench.config import settings
from propbench.devices import estimate_bytes
from propbench.models import build_model
from propbench.moments import COLUMNS, moments
from propbench.probes import probe, probe_trials
from propbench.runner import draw_inputs, run
from propbench.stacked import stack

from .conftest import cfg
from .test_moments import reference, regimes

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("name,x", list(regimes().items()))
def test_moments_on_cuda_match_two_pass_float64(cuda_device, name, x):
    got = dict(zip(COLUMNS, moments(x.unsqueeze(0).to(cuda_device), per_channel=False)[0]))
    ref = reference(x)
    rtol = 1e-10 if x.dtype == torch.float64 else 1e-5
    assert got["var"] == pytest.approx(ref["var"], rel=rtol, abs=0), name
    assert got["nonfinite"] == 0


def test_nonfinite_counted_on_cuda(cuda_device):
    x = torch.randn(3, 1000)
    x[0, :7] = float("inf")
    x[1, 5] = float("nan")
    got = moments(x.to(cuda_device))
    assert got[:, 2].tolist() == [7, 1, 0]


@pytest.mark.parametrize("overrides", [
    ["act=relu", "init=default"],
    ["act=tanh", "model.norm=batchnorm"],
    ["model=cnn", "width=4", "model.image_size=8", "model.stage_every=2", "model.pool=max"],
], ids=["relu-default", "tanh-bn", "cnn"])
def test_stacked_trials_on_cuda_equal_the_cpu(cuda_device, overrides):
    s = settings(cfg("depth=6", "width=32", "batch_size=16", "dtype=float64", *overrides))
    models = [build_model(s, seed=10 + t) for t in range(3)]
    inputs = [draw_inputs(s, models[0].input_shape, 20 + t) for t in range(3)]
    seeds = [30, 31, 32]
    on_cpu = probe_trials(stack(models), inputs, seeds=seeds, pairs=True)
    on_gpu = probe_trials(stack(models).to(cuda_device), [x.to(cuda_device) for x in inputs],
                          seeds=seeds, pairs=True)
    pd.testing.assert_frame_equal(on_cpu[["trial", "layer", "site", "quantity"]],
                                  on_gpu[["trial", "layer", "site", "quantity"]])
    np.testing.assert_allclose(on_gpu["var"], on_cpu["var"], rtol=1e-9)


def test_float32_run_on_cuda_agrees_with_the_cpu(cuda_device, tmp_path):
    common = ["depth=20", "width=256", "batch_size=256", "act=prelu", "init=kaiming", "trials=2"]
    cpu = run(cfg(*common, "device=cpu"), out_dir=tmp_path / "cpu").frame
    gpu = run(cfg(*common, "device=cuda"), out_dir=tmp_path / "gpu").frame
    # float32 summation order differs (cuBLAS vs the CPU's BLAS): a few 1e-5 per layer
    np.testing.assert_allclose(gpu["var"], cpu["var"], rtol=2e-3)


def test_memory_estimate_covers_the_cuda_peak(cuda_device):
    s = settings(cfg("depth=100", "width=1024", "batch_size=512", "device=cuda"))
    model = build_model(s, seed=0).to(cuda_device)
    x = draw_inputs(s, model.input_shape, 1).to(cuda_device)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(cuda_device)
    start = torch.cuda.memory_allocated(cuda_device)
    probe(model, x, model.probed_modules(), keep_grads=False)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated(cuda_device)
    weights = start  # the model's parameters (and the input) were already on the device
    estimate = estimate_bytes(s) - 512 * 2**20  # the device holds no interpreter
    assert peak <= estimate, (peak, estimate)
    assert estimate <= 3 * peak, "the estimate should not refuse runs that fit by far"
    assert weights > 0
