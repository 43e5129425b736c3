"""The verdict: did the signal survive the trip through the layers?

For ``activation``: r = Var(post-activation at the last layer) / Var(at the first layer).
For ``gradient``: r = Var(gradient w.r.t. the pre-activation at the first layer) /
Var(at the last layer) -- the backward signal travels from the last layer to the first.
Variances are averaged over trials first. ``stable`` if |log10 r| <= 1 (less than a
factor 10 end to end), ``vanishing`` below -1, ``exploding`` above 1 or as soon as any
element overflowed to inf/NaN; ``first_nonfinite_layer`` names where, counted in the
direction the signal travels (forward: lowest layer, backward: highest).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import pandas as pd

THRESHOLD = 1.0  # |log10 r| above this is vanishing/exploding

# quantity -> (site whose variance is compared, True if the signal runs from layer 1 up)
SIGNALS = {"activation": ("post", True), "gradient": ("pre", False)}


def layer_variance(frame: pd.DataFrame, quantity: str, site: str) -> pd.Series:
    """Mean over trials of ``var`` per layer, for one quantity and site."""
    rows = frame[(frame["quantity"] == quantity) & (frame["site"] == site) & (frame["layer"] >= 1)]
    return rows.groupby("layer")["var"].mean()


def first_nonfinite_layer(frame: pd.DataFrame, quantity: str) -> Optional[int]:
    """The first layer, in the direction ``quantity`` travels, where the signal itself (not
    a weight's gradient, which turns NaN as soon as its input overflows) has an inf/NaN."""
    forward = SIGNALS[quantity][1]
    signal = (frame["quantity"] == quantity) & (frame["site"] != "weight")
    bad = frame.loc[signal & (frame["nonfinite"] > 0), "layer"]
    if bad.empty:
        return None
    return int(bad.min() if forward else bad.max())


def first_zero_layer(frame: pd.DataFrame, quantity: str) -> Optional[int]:
    """The first layer, in the direction ``quantity`` travels, whose signal variance is
    exactly 0 (it underflowed, or every element is equal)."""
    site, forward = SIGNALS[quantity]
    var = layer_variance(frame, quantity, site)
    zero = var.index[var == 0]
    if len(zero) == 0:
        return None
    return int(zero.min() if forward else zero.max())


def _log10_ratio(start: float, end: float) -> float:
    """log10(end / start); -inf when nothing arrives (end == 0, including 0 -> 0: a dead
    signal has vanished), +inf when something arrives from nothing, NaN if either is NaN."""
    if math.isnan(start) or math.isnan(end):
        return float("nan")
    if end == 0:
        return float("-inf")
    if start == 0:
        return float("inf")
    return math.log10(end) - math.log10(start)  # no overflow in end / start


def _ratio(start: float, end: float) -> float:
    """end / start (Python floats: overflow gives inf, never an error); 0 for 0 -> 0."""
    if start == 0:
        return 0.0 if end == 0 else math.inf
    return end / start


def judge(log10_ratio: float, overflowed: bool) -> str:
    if overflowed or math.isnan(log10_ratio) or log10_ratio > THRESHOLD:
        return "exploding"
    return "vanishing" if log10_ratio < -THRESHOLD else "stable"


def summarize(frame: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """``{quantity: {ratio, log10_ratio, verdict, first_nonfinite_layer, start_var,
    end_var}}`` for a frame from :func:`propbench.probe`, :func:`propbench.run` or
    :func:`propbench.load`."""
    out = {}
    for quantity, (site, forward) in SIGNALS.items():
        var = layer_variance(frame, quantity, site)
        if var.empty:
            continue
        start, end = float(var.iloc[0]), float(var.iloc[-1])
        if not forward:
            start, end = end, start
        first_bad = first_nonfinite_layer(frame, quantity)
        log10_ratio = _log10_ratio(start, end)
        out[quantity] = {
            "ratio": _ratio(start, end),
            "log10_ratio": log10_ratio,
            "verdict": judge(log10_ratio, first_bad is not None),
            "first_nonfinite_layer": first_bad,
            "first_zero_layer": first_zero_layer(frame, quantity),
            "start_var": float(start),  # where the signal enters
            "end_var": float(end),  # where it leaves
        }
    return out


def range_warning(summary: dict[str, Any], dtype: str) -> Optional[str]:
    """One line saying where the signal left the float range, or None if it never did."""
    parts = []
    for quantity in SIGNALS:
        result = summary.get(quantity)
        if not result:
            continue
        if result["first_nonfinite_layer"] is not None:
            parts.append(f"{quantity} overflowed to inf/NaN from layer {result['first_nonfinite_layer']}")
        elif result.get("first_zero_layer") is not None:
            parts.append(f"{quantity} underflowed to 0 from layer {result['first_zero_layer']}")
    if not parts:
        return None
    hint = "; dtype=float64 extends the range" if dtype == "float32" else ""
    return f"{'; '.join(parts)} ({dtype}{hint})"


def describe(quantity: str, result: dict[str, Any]) -> str:
    """One line for the console: quantity, verdict and the end-to-end ratio."""
    what = {
        "activation": "post-activation variance, last / first layer",
        "gradient": "pre-activation gradient variance, first / last layer",
    }[quantity]
    if result["first_nonfinite_layer"] is not None:
        detail = f"non-finite values from layer {result['first_nonfinite_layer']}"
    elif result["log10_ratio"] == -math.inf:
        detail = f"{what}: exactly 0 at the end"
    elif result["log10_ratio"] == math.inf:
        detail = f"{what}: 0 where it enters"
    else:
        detail = f"{what} = 10^{result['log10_ratio']:+.2f}"
    return f"{quantity + ':':<11} {result['verdict']:<9} ({detail})"
