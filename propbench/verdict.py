"""The verdict: did the signal survive the trip through the layers?

For ``activation``: r = Var(post-activation at the last layer) / Var(at the first layer).
For ``gradient``: r = Var(gradient w.r.t. the pre-activation at the first layer) /
Var(at the last layer) -- the backward signal travels from the last layer to the first.
Variances are averaged over trials first. For residual networks (a frame with ``block``
rows) both are read on the stream instead: the variance of the blocks' outputs, last block
/ first block, and of the gradient with respect to them, first block / last block. ``stable`` if |log10 r| <= 1 (less than a
factor 10 end to end), ``vanishing`` below -1, ``exploding`` above 1 or as soon as any
element overflowed to inf/NaN; ``first_nonfinite_layer`` names where, counted in the
direction the signal travels (forward: lowest layer, backward: highest); ``undetermined``
with fewer than two layers (a ratio of a layer to itself says nothing).

A frame with ``block`` rows (a model probed by blocks, :mod:`propbench.blocks`) is judged on
the stream between blocks instead, both ways: its activation from the first block's output
to the last's, its gradient from the last block's output back to the first's. Rows outside
every block (layer 0: embedding, stem, head) never enter a verdict.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
import pandas as pd

THRESHOLD = 1.0  # |log10 r| above this is vanishing/exploding
# A variance below this is a signal on its way out of float range: float32 elements under
# 1e-15 (squares of subnormals are ~1e-80); a 0 after it is an underflow, not a constant.
TINY_VARIANCE = 1e-30

# quantity -> (site whose variance is compared, True if the signal runs from layer 1 up)
SIGNALS = {"activation": ("post", True), "gradient": ("pre", False)}


def signal_site(frame: pd.DataFrame, quantity: str) -> str:
    """The site a verdict reads: ``block`` where the frame has block rows of ``quantity``,
    else the one :data:`SIGNALS` names -- or ``pre`` where the frame has none of those (a
    model without activation modules)."""
    present = set(frame.loc[frame["quantity"] == quantity, "site"])
    if "block" in present:
        return "block"
    return SIGNALS[quantity][0] if SIGNALS[quantity][0] in present or "pre" not in present else "pre"


def layer_variance(frame: pd.DataFrame, quantity: str, site: str) -> pd.Series:
    """Mean over trials of ``var`` per layer, for one quantity and site."""
    rows = frame[(frame["quantity"] == quantity) & (frame["site"] == site) & (frame["layer"] >= 1)]
    return rows.groupby("layer")["var"].mean()


def first_nonfinite_layer(frame: pd.DataFrame, quantity: str) -> Optional[int]:
    """The first layer, in the direction ``quantity`` travels, where the signal itself (not
    a weight's gradient, which turns NaN as soon as its input overflows) has an inf/NaN."""
    forward = SIGNALS[quantity][1]
    signal = (frame["quantity"] == quantity) & (frame["site"] != "weight") & (frame["layer"] >= 1)
    bad = frame.loc[signal & (frame["nonfinite"] > 0), "layer"]
    if bad.empty:
        return None
    return int(bad.min() if forward else bad.max())


def _first_zero(frame: pd.DataFrame, quantity: str) -> tuple[Optional[int], bool]:
    """The first layer, in the direction ``quantity`` travels, whose signal variance is
    exactly 0, and whether it underflowed: the variance before it (in that direction) was
    already below ``TINY_VARIANCE``. Otherwise every element is equal: a zero-initialized
    layer, a saturated gate, a dead ReLU layer or a single element."""
    site, forward = signal_site(frame, quantity), SIGNALS[quantity][1]
    var = layer_variance(frame, quantity, site)
    if not forward:
        var = var.iloc[::-1]
    values = var.to_numpy()
    zero = (values == 0).nonzero()[0]
    if len(zero) == 0:
        return None, False
    i = int(zero[0])
    return int(var.index[i]), i > 0 and 0 < values[i - 1] < TINY_VARIANCE


def first_inf_variance_layer(frame: pd.DataFrame, quantity: str) -> Optional[int]:
    """The first layer, in the direction ``quantity`` travels, whose variance is beyond
    float64's range (inf) although every element is finite (float64 elements above ~1e154)."""
    site, forward = signal_site(frame, quantity), SIGNALS[quantity][1]
    rows = frame[(frame["quantity"] == quantity) & (frame["site"] == site) & (frame["layer"] >= 1)
                 & (frame["nonfinite"] == 0) & (frame["var"] == np.inf)]
    if rows.empty:
        return None
    return int(rows["layer"].min() if forward else rows["layer"].max())


def first_zero_layer(frame: pd.DataFrame, quantity: str) -> Optional[int]:
    """The first layer, in the direction ``quantity`` travels, where the signal underflowed
    to exactly 0 (its variance had fallen below ``TINY_VARIANCE`` on the way)."""
    layer, underflow = _first_zero(frame, quantity)
    return layer if underflow else None


def first_constant_layer(frame: pd.DataFrame, quantity: str) -> Optional[int]:
    """The first layer, in the direction ``quantity`` travels, whose signal is constant
    (variance exactly 0) without having underflowed."""
    layer, underflow = _first_zero(frame, quantity)
    return None if underflow else layer


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


def judge(log10_ratio: float, overflowed: bool, layers: int = 2) -> str:
    if layers < 2 and not overflowed:
        return "undetermined"
    if overflowed or math.isnan(log10_ratio) or log10_ratio > THRESHOLD:
        return "exploding"
    return "vanishing" if log10_ratio < -THRESHOLD else "stable"


def summarize(frame: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """``{quantity: {ratio, log10_ratio, verdict, first_nonfinite_layer, start_var,
    end_var}}`` for a frame from :func:`propbench.probe`, :func:`propbench.run` or
    :func:`propbench.load`."""
    out = {}
    for quantity, (_, forward) in SIGNALS.items():
        site = signal_site(frame, quantity)
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
            "verdict": judge(log10_ratio, first_bad is not None, len(var)),
            "site": site,  # the stream judged: block outputs, or post/pre of each layer
            "layers": len(var),
            "first_nonfinite_layer": first_bad,
            "first_zero_layer": first_zero_layer(frame, quantity),
            "first_constant_layer": first_constant_layer(frame, quantity),
            "first_inf_variance_layer": first_inf_variance_layer(frame, quantity),
            "start_var": float(start),  # where the signal enters
            "end_var": float(end),  # where it leaves
        }
    return out


def objective(summary: dict[str, Any], signal: str = "gradient") -> float:
    """The number a sweep job returns to Hydra's sweeper, to be minimized: |log10 r| of
    ``signal`` (``gradient``, ``activation``, or ``both``: the larger), 0 for a signal that
    keeps its variance end to end. A signal that left float range (overflow, underflow to 0)
    scores inf; a summary without that signal, NaN."""
    signals = list(SIGNALS) if signal == "both" else [signal]
    scores = []
    for quantity in signals:
        result = summary.get(quantity)
        if not result:
            return math.nan
        ratio = result["log10_ratio"]
        overflowed = result["first_nonfinite_layer"] is not None
        scores.append(math.inf if overflowed or ratio is None or math.isnan(ratio) else abs(ratio))
    return max(scores)


def _per_block(frame: pd.DataFrame, quantity: str, site: str, column: str) -> pd.Series:
    """``column`` per layer (block), averaged over a block's rows, then over trials."""
    rows = frame[(frame["quantity"] == quantity) & (frame["site"] == site) & (frame["layer"] >= 1)]
    keys = ["trial", "layer"] if "trial" in rows.columns else ["layer"]
    return rows.groupby(keys)[column].mean().groupby("layer").mean()


def token_summary(frame: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """What a transformer's frame adds to the summary, each only where the frame has it:
    ``token_similarity`` (its first_block, last_block and max over blocks; 1 = collapsed),
    ``attention_entropy`` (nats, first_block and last_block) and ``weight_gradient``: the
    weight-gradient variance per block (the mean over the block's weights), as the
    log10 ratio of the last block's to the first block's, the mean over blocks, and
    ``peak_block``, the block where it is largest (Xiong et al. 2020 compare these between
    pre- and post-LN)."""
    out: dict[str, dict[str, Any]] = {}
    for quantity, site in (("token_similarity", "block"), ("attention_entropy", "attention")):
        values = _per_block(frame, quantity, site, "mean")
        if len(values):
            out[quantity] = {"first_block": float(values.iloc[0]),
                             "last_block": float(values.iloc[-1]), "max": float(values.max())}
    if "token_similarity" in out:
        weights = _per_block(frame, "gradient", "weight", "var")
        if len(weights) > 1 and (weights > 0).all():
            out["weight_gradient"] = {
                "log10_ratio": float(np.log10(weights.iloc[-1] / weights.iloc[0])),
                "mean_var": float(weights.mean()),
                "peak_block": int(weights.idxmax()),
            }
    return out


def range_warning(summary: dict[str, Any], dtype: str) -> Optional[str]:
    """One line saying where the signal left the float range (or turned constant), or None."""
    exits, constants = [], []
    for quantity in SIGNALS:
        result = summary.get(quantity)
        if not result:
            continue
        if result["first_nonfinite_layer"] is not None:
            exits.append(f"{quantity} overflowed to inf/NaN from layer {result['first_nonfinite_layer']}")
        elif result.get("first_inf_variance_layer") is not None:
            exits.append(f"{quantity} variance beyond float64's range (elements finite) from "
                         f"layer {result['first_inf_variance_layer']}")
        elif result.get("first_zero_layer") is not None:
            exits.append(f"{quantity} underflowed to 0 from layer {result['first_zero_layer']}")
        elif result.get("first_constant_layer") is not None:
            constants.append(f"{quantity} is constant (variance exactly 0, not an underflow) "
                             f"from layer {result['first_constant_layer']}")
    if not exits and not constants:
        return None
    hint = "; dtype=float64 extends the range" if dtype == "float32" else ""
    parts = ([f"{'; '.join(exits)} ({dtype}{hint})"] if exits else []) + constants
    return "; ".join(parts)


def describe(quantity: str, result: dict[str, Any]) -> str:
    """One line for the console: quantity, verdict and the end-to-end ratio."""
    what = {
        "activation": "post-activation variance, last / first layer",
        "gradient": "pre-activation gradient variance, first / last layer",
    }[quantity]
    if result.get("site") == "pre" and quantity == "activation":
        what = "pre-activation variance, last / first layer"
    if result.get("site") == "block":
        what = {"activation": "block output variance, last / first block",
                "gradient": "block output gradient variance, first / last block"}[quantity]
    if result["verdict"] == "undetermined":
        detail = f"{result.get('layers', 1)} layer: no ratio to judge"
    elif result["first_nonfinite_layer"] is not None:
        detail = f"non-finite values from layer {result['first_nonfinite_layer']}"
    elif result["log10_ratio"] == -math.inf and result.get("first_constant_layer") is not None:
        detail = (f"{what}: constant from layer {result['first_constant_layer']} (variance exactly "
                  "0: a zero-initialized layer, a saturated gate or a dead layer, not an underflow)")
    elif result["log10_ratio"] == -math.inf:
        detail = f"{what}: exactly 0 at the end"
    elif result.get("first_inf_variance_layer") is not None:
        detail = f"{what}: beyond float64's range from layer {result['first_inf_variance_layer']}"
    elif result["log10_ratio"] == math.inf:
        detail = f"{what}: 0 where it enters"
    else:
        detail = f"{what} = 10^{result['log10_ratio']:+.2f}"
    return f"{quantity + ':':<11} {result['verdict']:<9} ({detail})"


def describe_spectrum(block: dict[str, Any]) -> str:
    """'spectrum:   spreading (var/mean^2 of s^2 = 36.4 at layer 16; theory 32.0)'."""
    theory = block.get("theory", {})
    expected = f"; theory {theory['spread']:.3g}" if theory.get("applies") else ""
    return (f"spectrum:   {block['verdict']:<9} (var/mean\u00b2 of s\u00b2 = {block['spread']:.3g} at "
            f"layer {block['last_layer']}{expected}; {', '.join(block['method'])})")
