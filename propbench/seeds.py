"""Independent random streams per trial, derived from the config's ``seed``.

Weights, inputs and the backward cotangent each get their own stream. Reusing one
generator state for two of them is a classic bug: the input becomes a copy of the first
weight matrix and the first layer's variance doubles.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Seeds:
    weights: int
    inputs: int
    cotangent: int


def trial_seeds(seed: int, trial: int) -> Seeds:
    """Three independent 63-bit seeds for ``trial`` of a run seeded with ``seed``
    (NumPy SeedSequence spawning: distinct trials and streams never share a state)."""
    streams = np.random.SeedSequence(seed, spawn_key=(trial,)).spawn(3)
    # shifted as a Python int: under NumPy 1.x, uint64 >> int is a float operation
    weights, inputs, cotangent = (int(s.generate_state(1, np.uint64)[0]) >> 1 for s in streams)
    return Seeds(weights, inputs, cotangent)
