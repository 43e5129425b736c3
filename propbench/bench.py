"""``python -m propbench.bench``: what probing costs, measured against the network itself.

For each case (an MLP of a given depth, width and batch) three variants run in one process,
interleaved, after warm-up, and are reported as medians over repeats:

- ``bare``: ``model(x).backward(g)`` with no hooks;
- ``probe``: :func:`propbench.probe`, collecting every statistic the CLI records;
- ``naive``: the tutorial way, forward and full backward hooks that call ``.var().item()``
  per layer into Python lists (one host sync per tensor), kept as the comparator.

Peak memory of ``bare`` and ``probe`` is the CUDA allocator's peak, or on the CPU the rise
of the peak resident memory over the set-up, measured in fresh subprocesses (the median of
three per variant) after the variant's one-time costs (a first call on a tiny net), with
glibc told to return every freed block of 64 KiB or more (so that the resident size follows
the live tensors).
The start-up of the CLI and the cost of a sweep of tiny jobs are timed too. Each row has the target
it is held to and whether it met it; the table is printed and written as CSV. Ratios are
the figures to quote: absolute times hold only for the device they were taken on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional

# The inits a case is timed with: a stable signal, PyTorch's default (the gradient vanishes
# to ~1e-40, subnormal), and one that overflows float32 part way.
INITS = {"kaiming": ("init=kaiming",), "default": ("init=default",),
         "normal std=3": ("init=normal", "init.std=3")}
# (name, depth, width, batch, probe/bare target) per device type; each case with every init
CASES = {
    "cpu": [("mlp d50 w1024 b256", 50, 1024, 256, 1.10), ("mlp d50 w256 b256", 50, 256, 256, 1.30)],
    "cuda": [("mlp d50 w1024 b1024", 50, 1024, 1024, 1.10), ("mlp d50 w256 b256", 50, 256, 256, 1.25)],
}
# (trials, depth, width, batch) probed sequentially and stacked; the speed-up target per device
TRIALS_CASE = (32, 50, 256, 256)
TRIALS_SPEEDUP_TARGET = {"cuda": 8.0, "cpu": None}
MEMORY_TARGET = 1.05
STARTUP_TARGET_S = 1.5
JOBLIB_SPEEDUP_TARGET = 1.6


@dataclass
class Row:
    case: str
    metric: str
    value: float
    unit: str
    target: Optional[str] = None
    ok: Optional[bool] = None


def _setup(depth: int, width: int, batch: int, device: Any,
           init: tuple[str, ...] = INITS["kaiming"]) -> tuple[Any, Any, Any]:
    import torch

    from propbench import build_model, compose

    model = build_model(compose([f"depth={depth}", f"width={width}", *init])).to(device)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, width, generator=generator).to(device)
    g = torch.randn(batch, width, generator=generator).to(device)
    return model, x, g


def _variants(model: Any, x: Any, g: Any) -> dict[str, Callable[[], Any]]:
    from propbench import probe

    modules = model.probed_modules()

    def bare() -> None:
        model.zero_grad(set_to_none=True)
        model(x).backward(g)

    def probed() -> None:
        probe(model, x, modules, cotangent=g)

    def naive() -> None:
        stats: list[float] = []
        handles = []
        for m in modules:
            handles.append(m.register_forward_hook(lambda m, i, o: stats.append(o.var().item())))
            handles.append(m.register_full_backward_hook(
                lambda m, gi, go: stats.append(go[0].var().item())))
        try:
            model.zero_grad(set_to_none=True)
            with warnings.catch_warnings():  # torch's note that the inputs need no grad
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                model(x).backward(g)
        finally:
            for h in handles:
                h.remove()

    return {name: partial(seconds, fn, x.device)
            for name, fn in (("bare", bare), ("probe", probed), ("naive", naive))}


def seconds(fn: Callable[[], Any], device: Any) -> float:
    """Wall time of ``fn()``, the device's queued work included (CUDA: synchronized)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def time_case(depth: int, width: int, batch: int, device: Any, repeats: int,
              init: tuple[str, ...] = INITS["kaiming"]) -> dict[str, float]:
    """Median seconds per variant, interleaved (the order rotates every repeat)."""
    model, x, g = _setup(depth, width, batch, device, init)
    variants = _variants(model, x, g)
    names = list(variants)
    for name in names:  # warm-up
        variants[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % 3:] + names[:r % 3]:
            times[name].append(variants[name]())
    return {n: statistics.median(t) for n, t in times.items()}


def trials_case(device: Any, repeats: int) -> dict[str, float]:
    """Median seconds of T single-trial probes one after another and of one stacked probe
    of the same T networks, inputs and cotangents (interleaved, after warm-up)."""
    from propbench import compose
    from propbench.config import settings
    from propbench.models import build_model
    from propbench.probes import probe, probe_trials
    from propbench.runner import draw_inputs
    from propbench.stacked import stack

    trials, depth, width, batch = TRIALS_CASE
    s = settings(compose([f"depth={depth}", f"width={width}", f"batch_size={batch}",
                          "init=kaiming"]))
    models = [build_model(s, seed=t) for t in range(trials)]
    inputs = [draw_inputs(s, (width,), 1000 + t) for t in range(trials)]
    stacked = stack(models).to(device)
    models = [m.to(device) for m in models]
    on_device = [x.to(device) for x in inputs]

    def sequential() -> None:
        for t, (model, x) in enumerate(zip(models, on_device)):
            probe(model, x, model.probed_modules(), seed=t)

    def batched() -> None:
        probe_trials(stacked, inputs, seeds=list(range(trials)))

    variants = {"sequential": sequential, "stacked": batched}
    for fn in variants.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(repeats):
        for name in (list(variants) if r % 2 == 0 else list(variants)[::-1]):
            times[name].append(seconds(variants[name], device))
    return {name: statistics.median(t) for name, t in times.items()}


def trials_rows(device: Any, repeats: int) -> list[Row]:
    trials, depth, width, batch = TRIALS_CASE
    t = trials_case(device, repeats)
    speedup = t["sequential"] / t["stacked"]
    goal = TRIALS_SPEEDUP_TARGET[device.type]
    case = f"trials={trials} d{depth} w{width} b{batch}"
    return [Row(case, f"{trials} sequential probes", t["sequential"] * 1e3, "ms"),
            Row(case, "stacked speed-up over sequential", speedup, "x",
                f">= {goal}" if goal else None, speedup >= goal if goal else None)]


_PEAK_RISE = """
import ctypes, sys, torch
from propbench.bench import _setup, _variants

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

small, small_x, small_g = _setup(2, 16, 8, torch.device("cpu"))
_variants(small, small_x, small_g)[{variant!r}]()  # one-time costs (imports, caches) first
model, x, g = _setup({depth}, {width}, {batch}, torch.device("cpu"))
run = _variants(model, x, g)[{variant!r}]
ctypes.CDLL("libc.so.6").malloc_trim(0)  # give back what set-up freed, so the pass shows
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
before = status("VmRSS:")
run()
print(status("VmHWM:") - before)
"""


# glibc maps every block of 64 KiB or more on its own and unmaps it when freed, so that the
# resident size follows the live tensors (by default it keeps freed memory for reuse, and
# the high-water mark then depends on the order of allocations: 28-63 MB for the same pass).
_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def _cpu_peak_rise(depth: int, width: int, batch: int, variant: str) -> float:
    """Bytes by which one pass raises the peak RSS of a fresh process over its set-up
    (Linux: the kernel's high-water mark, reset right before the pass), after the same
    variant ran once on a tiny net (its one-time costs are not the pass's)."""
    code = _PEAK_RISE.format(depth=depth, width=width, batch=batch, variant=variant)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, **_MALLOC_ENV})
    return float(out.stdout.strip())


def memory_case(depth: int, width: int, batch: int, device: Any) -> dict[str, float]:
    """Peak bytes of one bare and one probed pass."""
    if device.type == "cuda":
        import torch

        model, x, g = _setup(depth, width, batch, device)
        variants = _variants(model, x, g)
        peaks = {}
        for name in ("bare", "probe"):
            variants[name]()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            variants[name]()
            torch.cuda.synchronize()
            peaks[name] = torch.cuda.max_memory_allocated(device) - base
        return peaks
    # resident pages vary by several percent from process to process: median of three each
    return {name: statistics.median(_cpu_peak_rise(depth, width, batch, name) for _ in range(3))
            for name in ("bare", "probe")}


def _seconds(args: list[str], cwd: str, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "propbench", *args], cwd=cwd, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def startup_rows() -> list[Row]:
    with tempfile.TemporaryDirectory() as scratch:
        help_s = _seconds(["--help"], scratch)
        reject_s = _seconds(["act=nope"], scratch)
    target = f"<= {STARTUP_TARGET_S} s"
    return [Row("cli", "--help", help_s, "s", target, help_s <= STARTUP_TARGET_S),
            Row("cli", "rejected override", reject_s, "s", target, reject_s <= STARTUP_TARGET_S)]


def sweep_rows() -> list[Row]:
    """A 24-job sweep of tiny MLPs (depth 5, width 32): seconds per job with the basic
    launcher, and how much faster the joblib launcher with 2 workers finishes it. (Tiny jobs
    are bound by single-threaded Python; large ones already use every core through torch.)"""
    wall = {}
    with tempfile.TemporaryDirectory() as scratch:
        seeds = ",".join(map(str, range(24)))
        for launcher in ("basic", "joblib"):
            extra = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"] if launcher == "joblib" else []
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "propbench", "-m", "depth=5", "width=32",
                            "batch_size=32", f"seed={seeds}", *extra,
                            f"hydra.sweep.dir={scratch}/{launcher}"],
                           cwd=scratch, capture_output=True, check=True)
            wall[launcher] = time.perf_counter() - start
    per_job, speedup = wall["basic"] / 24, wall["basic"] / wall["joblib"]
    return [Row("sweep 24 x (d5 w32)", "basic launcher, per job", per_job, "s"),
            Row("sweep 24 x (d5 w32)", "joblib(2) speed-up over basic", speedup, "x",
                f">= {JOBLIB_SPEEDUP_TARGET}", speedup >= JOBLIB_SPEEDUP_TARGET)]


def run(device_name: str = "auto", repeats: int = 15, sweeps: bool = True) -> list[Row]:
    from propbench.devices import resolve_device

    device = resolve_device(device_name)
    rows: list[Row] = []
    for name, depth, width, batch, target in CASES[device.type]:
        for init_name, init in INITS.items():
            t = time_case(depth, width, batch, device, repeats, init)
            case = f"{name} {init_name}"
            rows.append(Row(case, "bare forward+backward", t["bare"] * 1e3, "ms"))
            for variant in ("probe", "naive"):
                ratio = t[variant] / t["bare"]
                goal = target if variant == "probe" else None
                rows.append(Row(case, f"{variant}/bare time", ratio, "x",
                                f"<= {goal}" if goal else None, ratio <= goal if goal else None))
        memory = memory_case(depth, width, batch, device)
        ratio = memory["probe"] / memory["bare"]
        rows.append(Row(name, "probe/bare peak memory", ratio, "x", f"<= {MEMORY_TARGET}",
                        ratio <= MEMORY_TARGET))
    rows += trials_rows(device, max(3, repeats // 3))
    rows += startup_rows()
    if sweeps:
        rows += sweep_rows()
    return rows


def device_label(device_name: str) -> str:
    from propbench.devices import device_name as describe, resolve_device

    return describe(resolve_device(device_name))


def table(rows: list[Row]) -> str:
    lines = [f"{'case':<28} {'metric':<32} {'value':>10}  {'target':<10} ok"]
    for r in rows:
        ok = "" if r.ok is None else ("yes" if r.ok else "NO")
        lines.append(f"{r.case:<28} {r.metric:<32} {r.value:>9.3g}{r.unit:<2} {r.target or '':<10} {ok}")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m propbench.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--repeats", type=int, default=15, help="timed repeats per variant")
    parser.add_argument("--no-sweeps", action="store_true", help="skip the sweep timings")
    parser.add_argument("--out", default=None, help="CSV path (default results/bench/<device>.csv)")
    args = parser.parse_args(argv)
    from propbench.errors import PropbenchError

    try:
        label = device_label(args.device)
        rows = run(args.device, args.repeats, not args.no_sweeps)
    except PropbenchError as err:
        print(f"propbench.bench: error: {err}", file=sys.stderr)
        return 2
    print(f"propbench.bench on {label}\n")
    print(table(rows))
    slug = "".join(c if c.isalnum() else "_" for c in label).strip("_").lower()
    out = Path(args.out or f"results/bench/{slug}.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    import pandas as pd

    frame = pd.DataFrame([vars(r) for r in rows])
    frame.insert(0, "device", label)
    frame.to_csv(out, index=False)
    meta = {"device": label, "python": platform.python_version(), "repeats": args.repeats,
            "threads": os.cpu_count()}
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0 if all(r.ok is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
