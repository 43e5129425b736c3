"""Device choice and a memory estimate made before anything is allocated."""

from __future__ import annotations

import os
import platform
from typing import Any

from propbench.activations import ACTIVATIONS
from propbench.config import DType, Norm
from propbench.errors import ConfigError

GIB = 2**30
_ITEMSIZE = {DType.float32: 4, DType.float64: 8}


def resolve_device(name: str) -> Any:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` -> torch.device, or a ConfigError that says
    what is visible. Imports torch (only here and after the config is valid)."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise ConfigError(
            f"device={name}: no CUDA device is available (torch {torch.__version__}, {build}); "
            "use device=cpu or device=auto"
        )
    index = int(name.split(":")[1]) if ":" in name else torch.cuda.current_device()
    count = torch.cuda.device_count()
    if index >= count:
        raise ConfigError(f"device={name}: only {count} CUDA device(s) visible (cuda:0..cuda:{count - 1})")
    return torch.device("cuda", index)


def device_name(device: Any) -> str:
    import torch

    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


_INTERPRETER = 512 * 2**20  # Python, torch, pandas, matplotlib


def estimate_bytes(s: Any, trials: int = 1) -> int:
    """Peak memory of ``trials`` trials probed at once, the interpreter included. Measured
    for one trial at depth 1000, width 512, batch 256: ReLU 2.26 GiB (this gives 2.4), GELU
    2.73 GiB (2.9)."""
    return trials * trial_bytes(s) + _INTERPRETER


def trial_bytes(s: Any) -> int:
    """One trial's share: the weights once (their gradients are freed as they land), the
    activations autograd keeps (the activation's ``saved_per_block``, +2 with a norm, per
    weight layer of a block, +1 for a residual stream)
    and a few in flight."""
    weight_factor, pixels = s.model.footprint()
    weights = s.depth * (s.width * s.width * weight_factor + 3 * s.width)
    saved = ACTIVATIONS[s.act.name].saved_per_block + (2 if s.model.norm != Norm.none else 0)
    saved = saved * s.model.layers_per_block() + (1 if s.model.residual else 0)  # + the stream
    activation = s.batch_size * s.width * pixels
    edges = s.model.edges(s.width, s.batch_size)
    return _ITEMSIZE[s.dtype] * (weights + s.depth * saved * activation + 4 * activation + edges)


def exact_bytes(n: int, sizes: Any, itemsize: int) -> int:
    """Memory of the exact Jacobian spectrum of one example (propbench.spectrum): the
    Jacobians (n inputs x m_l outputs at each layer, in the model's dtype) and one float64
    copy of the largest for the SVD, twice (its workspace)."""
    return n * sum(sizes) * itemsize + 2 * 8 * n * max(sizes)


def spectrum_bytes(s: Any) -> int:
    """Memory of ``spectrum.method=exact`` for one example (propbench.spectrum.exact_bytes):
    n x m Jacobians at each chosen layer, m = width x pixels bounding a block's output."""
    from propbench.config import default_layers

    layers = len(s.spectrum.layers or default_layers(s.depth))
    _, pixels = s.model.footprint()
    return exact_bytes(s.model.input_size(s.width), [s.width * pixels] * layers,
                       _ITEMSIZE[s.dtype])


def available_bytes(device: Any) -> int:
    if device.type == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")  # no /proc: total RAM


def check_memory(s: Any, device: Any, trials: int = 1) -> None:
    """Refuse, with what to lower, a config whose estimate for ``trials`` trials at once
    exceeds 90% of free memory. Weights are built on the CPU first, so it must hold them too."""
    need = estimate_bytes(s, trials)
    have = available_bytes(device)
    if s.spectrum.enabled and s.spectrum.method.value == "exact":
        exact = spectrum_bytes(s)
        if need + exact > 0.9 * have:
            raise ConfigError(
                f"spectrum.method=exact: the Jacobians need about {exact / GIB:.1f} GiB on "
                f"{device.type} but {have / GIB:.1f} GiB is free; use spectrum.method=auto "
                "(the estimate where they do not fit) or fewer spectrum.layers")
    if need > 0.9 * have:
        lower = "trial_batch, depth, width or batch_size" if trials > 1 else "depth, width or batch_size"
        if trials * _ITEMSIZE[s.dtype] * s.model.edges(s.width, s.batch_size) > need / 2:
            lower = "model.in_channels, model.num_classes or batch_size"  # the CNN's input, head
        raise ConfigError(
            f"depth={s.depth}, width={s.width}, batch_size={s.batch_size}"
            f"{f', {trials} trials at once' if trials > 1 else ''}: needs about "
            f"{need / GIB:.1f} GiB on {device.type} but {have / GIB:.1f} GiB is free; lower {lower}"
        )


# On the CPU stacking saves per-pass overhead (measured, 32 trials of d50 w256 b256: the
# stacked probe 1.4x faster than 32 single ones; d5 w32: 1.8x) but a batched matmul does
# not beat plain ones, so large stacks only cost memory.
CPU_STACK_BYTES = 2**30


def trials_at_once(s: Any, device: Any) -> int:
    """How many trials one stacked pass probes: ``trial_batch`` where set (at most
    ``trials``); else as many as fit in half the free memory on CUDA (stacking turns T
    launch-bound passes into one), and in at most ``CPU_STACK_BYTES`` on the CPU. A model
    that does not stack (``stackable``: the transformer) runs one trial at a time."""
    if not s.model.stackable:
        return 1
    if s.trial_batch is not None:
        return min(s.trial_batch, s.trials)
    if s.trials == 1:
        return 1
    budget = 0.5 * available_bytes(device) - _INTERPRETER
    if device.type != "cuda":
        budget = min(budget, CPU_STACK_BYTES)
    return max(1, min(s.trials, int(budget // max(trial_bytes(s), 1))))
