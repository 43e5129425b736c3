"""Theory beside measurement: the mean-field prediction for a configured network, as the
frame's ``theory`` column and the summary's ``theory`` block.

The prediction applies to the MLP without normalization, for every init whose weights are
zero-mean. For the CNN it is the same recursion per pixel with ``fan_in = channels * k^2``,
zero padding included (:func:`propbench.theory.predict_conv`): at 16x16 the borders cost 8%
of the variance at layer 1 and 2.5% a layer by layer 24. Where theory does not apply
(BatchNorm, pooling) the column stays empty and the summary says why.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
import pandas as pd

from propbench import theory

# (quantity, site) -> the Prediction field that predicts that row's variance
PREDICTED = {
    ("activation", "pre"): "q",
    ("activation", "post"): "post_var",
    ("gradient", "post"): "grad_post_var",
    ("gradient", "pre"): "grad_pre_var",
    ("gradient", "weight"): "grad_weight_var",
    ("correlation", "pre"): "correlation",  # the mean correlation, not a variance
}


def why_not(s: Any) -> Optional[str]:
    """Why no mean-field line can be drawn for this config, or None if one can."""
    if s.model.norm == "batchnorm":
        return "BatchNorm normalizes with batch statistics; the mean-field recursion does not model it"
    if s.model.name == "cnn" and s.model.stage_every > 0 and s.model.pool != "none":
        return "pooling mixes positions; the mean-field recursion does not model it"
    return None


def prediction(s: Any, model: Any) -> tuple[Optional[theory.Prediction], str, Optional[tuple]]:
    """(prediction, note, (sigma_w2, sigma_b2) of a middle layer) for the network ``model``
    built from settings ``s``; prediction None with the reason when theory does not apply."""
    from propbench.inits import WEIGHTED_TYPES, layer_variances

    weighted = [m for m in model.probed_modules() if isinstance(m, WEIGHTED_TYPES)]
    variances = layer_variances(weighted, s.init, s.act.name, s.act.slope)
    if variances is None:
        return None, "the weights are not zero-mean (uniform with a != -b)", None
    w2, b2, back = (list(v) for v in zip(*variances))
    middle = len(w2) // 2
    reason = why_not(s)
    if reason:
        return None, reason, (w2[middle], b2[middle])
    cotangent_var, note = 1.0, "mean-field recursion (infinite width)"
    if s.model.name == "cnn":
        head = model.head[-1]
        (_, _, head_back), = layer_variances([head], s.init, s.act.name, s.act.slope)
        pixels = s.model.image_size**2
        # dL/d(last post-activation) = W_head^T g / (H W) at every position
        cotangent_var = head_back / pixels**2
        note = ("mean-field recursion per pixel with zero padding (infinite width); the "
                "correlation ignores the borders")
        predicted = theory.predict_conv(s.act.name, w2, b2, s.depth, s.model.image_size,
                                        s.model.kernel_size, s.act.slope, backward_w2=back,
                                        cotangent_var=cotangent_var, c0=s.correlation)
        return predicted, note, (w2[middle], b2[middle])
    predicted = theory.predict(s.act.name, w2, b2, s.depth, s.act.slope, batch=s.batch_size,
                               backward_w2=back, cotangent_var=cotangent_var, c0=s.correlation)
    return predicted, note, (w2[middle], b2[middle])


def theory_column(frame: pd.DataFrame, predicted: Optional[theory.Prediction]) -> np.ndarray:
    """The predicted ``var`` of every row of ``frame`` -- for ``correlation`` rows the
    predicted correlation (their ``mean``) -- NaN where none applies."""
    out = np.full(len(frame), np.nan)
    if predicted is None:
        return out
    for (quantity, site), field in PREDICTED.items():
        if getattr(predicted, field) is None:
            continue
        rows = ((frame["quantity"] == quantity) & (frame["site"] == site)
                & (frame["layer"] >= 1)).to_numpy()
        layers = frame.loc[rows, "layer"].to_numpy() - 1
        out[rows] = getattr(predicted, field)[layers]
    return out


def deviation(frame: pd.DataFrame, quantity: str, site: str) -> dict[str, float]:
    """How far the measured variance (mean over trials) is from theory: the median over
    layers and the last layer the signal reaches of |measured / theory - 1|."""
    rows = frame[(frame["quantity"] == quantity) & (frame["site"] == site)]
    by_layer = rows.groupby("layer")[["var", "theory"]].mean()
    ratio = (by_layer["var"] / by_layer["theory"] - 1).abs()
    ratio = ratio[np.isfinite(ratio)]
    if ratio.empty:
        return {"median": math.nan, "end": math.nan}
    end = ratio.iloc[-1] if quantity == "activation" else ratio.iloc[0]
    return {"median": float(ratio.median()), "end": float(end)}


def summary(frame: pd.DataFrame, s: Any, note: str, sigmas: Optional[tuple]) -> dict[str, Any]:
    """The summary's ``theory`` block: whether it applies, chi_1, q*, c*, the depth scales
    (for the middle layer's sigma_w2, sigma_b2) and the relative deviation of measurement."""
    if sigmas is None or why_not(s):
        return {"applies": False, "note": note}
    sigma_w2, sigma_b2 = sigmas
    block = {"applies": True, "note": note, "sigma_w2": sigma_w2, "sigma_b2": sigma_b2}
    block.update(theory.depth_scales(s.act.name, sigma_w2, sigma_b2, s.act.slope))
    block["relative_deviation"] = {
        "activation": deviation(frame, "activation", "post"),
        "gradient": deviation(frame, "gradient", "pre"),
    }
    return block
