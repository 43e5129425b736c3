"""The benchmark runs (its thresholds live in its own pass/fail column, not here)."""

import torch

from propbench.bench import Row, memory_case, table, time_case


def test_every_variant_is_timed_and_measured():
    times = time_case(depth=3, width=16, batch=8, device=torch.device("cpu"), repeats=2)
    assert set(times) == {"bare", "probe", "naive"} and all(t > 0 for t in times.values())
    memory = memory_case(depth=3, width=64, batch=32, device=torch.device("cpu"))
    assert set(memory) == {"bare", "probe"} and all(m >= 0 for m in memory.values())


def test_table_shows_targets_and_misses():
    text = table([Row("case", "probe/bare time", 1.2, "x", "<= 1.1", False),
                  Row("case", "bare forward+backward", 12.0, "ms")])
    assert "NO" in text and "<= 1.1" in text and "12ms" in text
