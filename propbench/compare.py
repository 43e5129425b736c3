"""Theory beside measurement: :class:`Theory`, the mean-field prediction for one configured
network, gives the frame its ``theory`` column and the summary its ``theory`` block.

The prediction applies to the MLP without normalization, for every init whose weights are
zero-mean, and to the pre-activation residual MLP (``resmlp``) without normalization or
with LayerNorm (:func:`propbench.theory.predict_residual`: the stream adds the branches'
variances). For the CNN it is the same recursion per pixel with ``fan_in = channels * k^2``,
zero padding included (:func:`propbench.theory.predict_conv`): at 16x16 the borders cost 8%
of the variance at layer 1 and 2.5% a layer by layer 24. Where theory does not apply
(BatchNorm, pooling) the column stays empty and the summary says why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import pandas as pd

from propbench import theory
from propbench.verdict import SIGNALS, signal_site

# (quantity, site) -> the Prediction field that predicts that row's variance
PREDICTED = {
    ("activation", "pre"): "q",
    ("activation", "post"): "post_var",
    ("gradient", "post"): "grad_post_var",
    ("gradient", "pre"): "grad_pre_var",
    ("gradient", "weight"): "grad_weight_var",
    ("correlation", "pre"): "correlation",  # the mean correlation, not a variance
}
# the same for a residual network's rows: (block) arrays, or (block, sublayer) arrays
RESIDUAL_PREDICTED = {
    ("activation", "block"): "stream", ("activation", "branch"): "branch",
    ("activation", "pre"): "pre", ("activation", "norm"): "norm",
    ("activation", "post"): "post_var",
    ("gradient", "block"): "grad_stream", ("gradient", "branch"): "grad_branch",
    ("gradient", "pre"): "grad_pre", ("gradient", "norm"): "grad_norm",
    ("gradient", "post"): "grad_post", ("gradient", "weight"): "grad_weight",
}
RESIDUAL_NOTE = "residual mean-field recursion q_l = q_(l-1) + alpha^2 B(q_(l-1)) (infinite width)"
CNN_NOTE = ("mean-field recursion per pixel with zero padding (infinite width); the "
            "correlation ignores the borders")
CENTRE_NOTE = ("mean-field recursion per pixel: a centre-tap kernel maps each pixel on its own "
               "(infinite width)")
SPECTRUM_NOTE = ("free probability (Pennington et al. 2017), infinite width, along the q-map; "
                 "s1 = {s1:g} for {weights} weights")
# growth of the spread of lambda (var / mean^2) per layer, over the deepest measured layers,
# at or below which the spectrum counts as isometric: a tenth of a linear Gaussian net's 1
ISOMETRIC_PER_LAYER = 0.1


def _measured_variances(modules: list[Any]) -> list[tuple[float, float, float]]:
    """(sigma_w2, sigma_b2, backward_w2) of each layer from its weights as they are (a
    data-dependent init such as LSUV has no law for them): fan * mean(W^2), Var(b)."""
    from propbench.inits import weight_fans

    out = []
    for module in modules:
        fan_in, fan_out = weight_fans(module.weight)
        second = float(module.weight.detach().double().pow(2).mean())
        bias = 0.0 if module.bias is None else float(module.bias.detach().double().var(correction=0))
        out.append((fan_in * second, bias, fan_out * second))
    return out


def _weights_law(s: Any, module: Any) -> str:
    """``orthogonal`` or ``gaussian`` (any i.i.d. law): what the spectrum theory needs."""
    from propbench.inits import resolve_gain, weight_fans

    law = s.init.law(*weight_fans(module.weight), resolve_gain(s.init, s.act.name, s.act.slope))
    return "orthogonal" if law.distribution in ("orthogonal", "delta_orthogonal") else "gaussian"


@dataclass(frozen=True)
class Theory:
    """The mean-field prediction for one network, or why there is none (``note``).
    ``sigmas`` are a middle layer's effective (sigma_w2, sigma_b2), known wherever the
    weights are zero-mean."""

    note: str
    prediction: Optional[theory.Prediction | theory.ResidualPrediction] = None
    sigmas: Optional[tuple[float, float]] = None
    act: str = "relu"
    slope: Optional[float] = None
    spectrum: Optional[theory.SpectrumMoments] = None  # with spectrum=true, where it applies
    spectrum_note: str = ""

    @classmethod
    def of(cls, s: Any, model: Any) -> Theory:
        """The theory of ``model``, built from the validated config ``s``; it reads the
        fans of the built layers, not their values."""
        from propbench.inits import WEIGHTED_TYPES, layer_variances

        from propbench.config import ResidualKeys

        if isinstance(s.model, ResidualKeys):  # (a transformer's `residual` is a key)
            return cls._residual(s, model)
        weighted = [m for m in model.probed_modules() if isinstance(m, WEIGHTED_TYPES)]
        if s.init.data_dependent:
            variances = _measured_variances(weighted)
        else:
            variances = layer_variances(weighted, s.init, s.act.name, s.act.slope)
        if variances is None:
            return cls("the weights are not zero-mean (uniform with a != -b)")
        w2, b2, back = (list(v) for v in zip(*variances))
        sigmas = (w2[len(w2) // 2], b2[len(b2) // 2])
        gap = s.model.theory_gap()
        if gap:
            return cls(gap, sigmas=sigmas, spectrum_note=gap)
        spectrum, spectrum_note = None, ""
        if s.spectrum.enabled:
            if s.model.name == "cnn" and not s.init.centre_tap:
                spectrum_note = ("the free-probability spectrum applies to dense layers and to "
                                 "convs with a centre-tap kernel (init=delta_orthogonal)")
            else:
                weights = _weights_law(s, weighted[len(weighted) // 2])
                spectrum = theory.spectrum_moments(s.act.name, w2, b2, len(w2), weights,
                                                   s.act.slope)
                spectrum_note = SPECTRUM_NOTE.format(s1=theory.S1[weights], weights=weights)
        if s.model.name == "cnn":
            head = [model.head[-1]]
            (_, _, head_back), = (_measured_variances(head) if s.init.data_dependent else
                                  layer_variances(head, s.init, s.act.name, s.act.slope))
            # dL/d(last post-activation) = W_head^T g / (H W) at every position; a
            # centre-tap kernel maps each pixel on its own, as a 1 x 1 kernel would
            kernel = 1 if s.init.centre_tap else s.model.kernel_size
            predicted = theory.predict_conv(
                s.act.name, w2, b2, len(w2), s.model.image_size, kernel,
                s.act.slope, backward_w2=back, cotangent_var=head_back / s.model.image_size**4,
                c0=s.correlation)
            note = CENTRE_NOTE if s.init.centre_tap else CNN_NOTE
            return cls(note, predicted, sigmas, s.act.name, s.act.slope, spectrum, spectrum_note)
        predicted = theory.predict(s.act.name, w2, b2, len(w2), s.act.slope, batch=s.batch_size,
                                   backward_w2=back, c0=s.correlation)
        return cls("mean-field recursion (infinite width)", predicted, sigmas, s.act.name,
                   s.act.slope, spectrum, spectrum_note)

    @classmethod
    def _residual(cls, s: Any, model: Any) -> Theory:
        """The residual recursion for the branches' layers, each with its init's Var(W)
        times the scheme's branch multiplier (Fixup's)."""
        from propbench.inits import layer_variances

        branches = model.branches()
        depth, layers = len(branches), len(branches[0])
        variances = layer_variances([m for b in branches for m in b], s.init, s.act.name,
                                    s.act.slope)
        if variances is None:
            return cls("the weights are not zero-mean (uniform with a != -b)")
        w2, b2, back = (np.array(v).reshape(depth, layers) for v in zip(*variances))
        factors = np.array(s.init.branch_multipliers(depth, layers))
        w2, back, b2 = w2 * factors, back * factors, np.where(factors == 0, 0.0, b2)
        sigmas = (float(w2[depth // 2, 0]), float(b2[depth // 2, 0]))
        gap = s.model.theory_gap()
        if gap:
            return cls(gap, sigmas=sigmas)
        predicted = theory.predict_residual(
            s.act.name, w2, b2, depth, layers, s.model.branch_scale(s.depth),
            layernorm=s.model.norm.value == "layernorm", slope=s.act.slope, batch=s.batch_size,
            backward_w2=back)
        return cls(RESIDUAL_NOTE, predicted, sigmas, s.act.name, s.act.slope)

    def column(self, frame: pd.DataFrame) -> np.ndarray:
        """The predicted ``var`` of every row of ``frame`` -- for ``correlation`` rows the
        predicted correlation (their ``mean``) -- NaN where none applies."""
        out = np.full(len(frame), np.nan)
        if self.prediction is None:
            return out
        if isinstance(self.prediction, theory.ResidualPrediction):
            for (quantity, site), name in RESIDUAL_PREDICTED.items():
                predicted = getattr(self.prediction, name)
                rows = ((frame["quantity"] == quantity) & (frame["site"] == site)).to_numpy()
                index = (frame.loc[rows, "layer"].to_numpy() - 1,)
                if predicted.ndim == 2:
                    index += (frame.loc[rows, "sublayer"].to_numpy(dtype=int) - 1,)
                out[rows] = predicted[index]
            return out
        for (quantity, site), name in PREDICTED.items():
            predicted = getattr(self.prediction, name)
            if predicted is None:
                continue
            rows = ((frame["quantity"] == quantity) & (frame["site"] == site)
                    & (frame["layer"] >= 1)).to_numpy()
            out[rows] = predicted[frame.loc[rows, "layer"].to_numpy() - 1]
        return out

    def summary(self, frame: pd.DataFrame) -> dict[str, Any]:
        """The summary's ``theory`` block: whether it applies, chi_1, q*, c*, the depth
        scales (for the middle layer's sigma_w2, sigma_b2) and the relative deviation of the
        measurement in ``frame`` (which has the :meth:`column`)."""
        if self.prediction is None:
            return {"applies": False, "note": self.note}
        sigma_w2, sigma_b2 = self.sigmas
        block = {"applies": True, "note": self.note, "sigma_w2": sigma_w2, "sigma_b2": sigma_b2}
        p = self.prediction
        if isinstance(p, theory.ResidualPrediction):
            with np.errstate(divide="ignore", invalid="ignore"):
                block["stream_log10_ratio"] = float(np.log10(p.stream[-1] / p.stream[0]))
                block["gradient_log10_ratio"] = float(np.log10(p.grad_stream[0] / p.grad_stream[-1]))
        else:
            block.update(theory.depth_scales(self.act, sigma_w2, sigma_b2, self.slope))
        block["relative_deviation"] = {
            quantity: deviation(frame, quantity, signal_site(frame, quantity))
            for quantity in SIGNALS}
        return block


    def spectrum_columns(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """The predicted var(lambda) (``theory``) and mean(lambda) (``theory_mean_sq``) at
        each spectrum row's layer; NaN where the theory does not apply."""
        if self.spectrum is None:
            nan = np.full(len(frame), np.nan)
            return nan, nan.copy()
        index = frame["layer"].to_numpy() - 1
        return self.spectrum.var[index], self.spectrum.mean[index]

    def spectrum_summary(self, frame: pd.DataFrame) -> dict[str, Any]:
        """The summary's ``spectrum`` block: at the deepest measured layer, the mean over
        trials and examples of mean(lambda), var(lambda), the spread var / mean^2 (per
        example, then averaged), the largest and smallest singular value; the theory there;
        and the verdict: ``isometric`` where the spread grows by at most
        ``ISOMETRIC_PER_LAYER`` per layer between the two deepest measured layers (from 0
        with one), else ``spreading``. The growth, not spread / depth: the first layers,
        before the q-map settles at q*, can spread more than the rest (tanh from q = 1)."""
        by_layer = (frame["var_sq"] / frame["mean_sq"] ** 2).groupby(frame["layer"]).mean()
        last = int(by_layer.index[-1])
        rows = frame[frame["layer"] == last]
        spread = float(by_layer.iloc[-1])
        before, earlier = ((int(by_layer.index[-2]), float(by_layer.iloc[-2])) if len(by_layer) > 1
                           else (0, 0.0))
        growth = (spread - earlier) / (last - before)
        block = {
            "method": sorted(set(frame["method"])), "examples": int(frame["example"].nunique()),
            "layers": sorted(int(l) for l in set(frame["layer"])), "last_layer": last,
            "mean_sq": float(rows["mean_sq"].mean()), "var_sq": float(rows["var_sq"].mean()),
            "spread": spread, "spread_growth_per_layer": growth,
            "max_s": float(rows["max_s"].max()), "min_s": float(rows["min_s"].min()),
            "verdict": "isometric" if growth <= ISOMETRIC_PER_LAYER else "spreading",
            "theory": {"applies": self.spectrum is not None, "note": self.spectrum_note},
        }
        if self.spectrum is not None:
            i = last - 1
            m = self.spectrum
            growth = (m.spread[i] - (m.spread[before - 1] if before else 0.0)) / (last - before)
            block["theory"].update(mean_sq=float(m.mean[i]), var_sq=float(m.var[i]),
                                   spread=float(m.spread[i]), spread_growth_per_layer=float(growth),
                                   mu1=float(m.mu1[i]),
                                   mu2=float(m.mu2[i]), q=float(m.q[i]))
            block["theory"]["relative_deviation"] = {
                "mean_sq": abs(block["mean_sq"] / float(m.mean[i]) - 1),
                "spread": abs(spread / float(m.spread[i]) - 1) if m.spread[i] else math.nan}
        return block


def deviation(frame: pd.DataFrame, quantity: str, site: str) -> dict[str, float]:
    """How far the measured variance (mean over trials) is from theory: the median over
    layers and the last layer the signal reaches of |measured / theory - 1|."""
    rows = frame[(frame["quantity"] == quantity) & (frame["site"] == site)]
    by_layer = rows.groupby("layer")[["var", "theory"]].mean()
    ratio = (by_layer["var"] / by_layer["theory"] - 1).abs()
    ratio = ratio[np.isfinite(ratio)]
    if ratio.empty:
        return {"median": math.nan, "end": math.nan}
    end = ratio.iloc[-1] if SIGNALS[quantity][1] else ratio.iloc[0]
    return {"median": float(ratio.median()), "end": float(end)}
