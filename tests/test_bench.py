"""The benchmark runs (its thresholds live in its own pass/fail column, not here)."""

import torch

from propbench.bench import INITS, Row, memory_case, table, time_case


def test_every_variant_is_timed_and_measured():
    times = time_case(depth=3, width=16, batch=8, device=torch.device("cpu"), repeats=2,
                      init=INITS["normal std=3"])
    assert set(times) == {"bare", "probe", "naive"} and all(t > 0 for t in times.values())
    # autograd keeps the 8 post-activations of 1 MiB (512 x 512 float32): the peak rises by
    # at least that, probed or bare, and the probe adds no copy of them
    memory = memory_case(depth=8, width=512, batch=512, device=torch.device("cpu"))
    assert set(memory) == {"bare", "probe"}
    assert all(m > 8 * 2**20 for m in memory.values()), memory
    assert memory["probe"] < memory["bare"] + 8 * 2**20, memory


def test_table_shows_targets_and_misses():
    text = table([Row("case", "probe/bare time", 1.2, "x", "<= 1.1", False),
                  Row("case", "bare forward+backward", 12.0, "ms")])
    assert "NO" in text and "<= 1.1" in text and "12ms" in text
