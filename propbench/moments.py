"""Exact mean and variance of every tensor a pass records, reduced on the tensor's device.

Each trial's slice x of n elements is reduced to a few numbers in one of two ways; the
records' numbers stay where they are until :meth:`Moments.finish` brings them to the host
once, after the pass, and forms ``mean = K + S1/n`` and ``var = S2/n - (S1/n)^2`` (times the
scale c and c^2 below).

**float32 on the CPU** (:meth:`Moments._add_float32`, the common case): S1 = sum(x) and
S2 = sum(x^2) in float32 -- two passes over the tensor, no copy, no shift (K = 0). PyTorch
sums a float32 tensor on the CPU by cascade (pairwise) summation, whose relative error
grows with log(n), not n: measured 4e-8 for S2 from 65,536 up to 4.2M elements, where a
dot product (BLAS, one float32 accumulator per lane) is off by 1.8e-5 to 7e-4 on
+-0.1 data. Past 2^17 elements S2 is one pass instead: the float32 norms of rows of 64
elements, squared and summed in float64 (:func:`_sum_of_squares`). The sums are read at
once (a CPU result: no wait) and kept only where they are exact:

- a slice whose mean square is below 2^-100 (e.g. PyTorch's default init's gradient,
  ~1e-40) is summed again multiplied by c = 2^100, and one whose squares overflow float32
  by c = 2^-100 (both exact: powers of two; with n <= 2^24 no scaled square over- or
  underflows, and what a scaled-down element loses weighs < 1e-30 of the total);
- the cancellation of ``E[x^2] - E[x]^2`` multiplies the relative error by
  E[x^2] / var, so the sums are kept only where that factor is at most 8 (a ReLU output
  of a zero-mean input: 1.47): their variance is exact to ~1e-6, within the 1e-5 promised
  for float32 tensors;
- otherwise (a mean large against the spread: a sigmoid output, a bias of 1000; a zero
  tensor) the slice takes the exact float64 path below.

**Everything else** (float64 and lower precisions, other devices, channel statistics, and
the float32 slices above) (:meth:`Moments._add_exact`): the shift K = x[0], and
S1 = sum(x - K), S2 = sum((x - K)^2) per group in float64 (x widened into a buffer reused
across records, shifted in place, S2 as one batched dot product). Widening to float64 is
exact for float32 and lower precisions, and float64's range holds the square of every
float32 (from (1.4e-45)^2 up to (3.4e38)^2). The shift removes the cancellation: |K - mean|
<= sqrt(n) sd, so ``(S1/n)^2`` is at most n times the variance, against float64's 1e-16. A
float64 tensor is first divided by the power of two c = 2^e just above its largest
magnitude (exact), so its squares neither overflow nor underflow (the variance is inf only
where it exceeds float64's range itself).

A tensor holding an inf or NaN has a non-finite S1 and S2, hence a non-finite mean and
variance, and the number of such elements is counted exactly (as ``x - x``, NaN exactly
where x is not finite). On the CPU the count is taken only when a sum is not finite; on
other devices always, so that no hook syncs with the host.

For (N, C, H, W) tensors (split into G groups of m elements, the channels) the channel
statistics of signal-propagation plots (Brock et al., 2021, "Characterizing signal
propagation to close the performance gap in unnormalized ResNets") come from the same sums:
``channel_mean_sq`` = mean over channels of the squared channel mean, ``channel_var`` = mean
over channels of the channel's variance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

# A float64 tensor is scaled by at most 2^+-1000, which float64 represents exactly.
_MAX_EXPONENT = 1000
# The float32 path (see the module's doc): slices of at most 2^24 elements (their counts
# and scaled squares stay within float32), mean squares kept in [2^-100, float32's max) by
# the scale 2^+-100, and E[x^2] / var at most 8.
_FLOAT32_MAX_SIZE = 2**24
_FLOAT32_TINY = 2.0**-100
_FLOAT32_SCALE = 2.0**100
_FLOAT32_CANCELLATION = 8
_FLOAT32_ROWS_FROM, _FLOAT32_ROW = 2**17, 64  # see _sum_of_squares
COLUMNS = ("mean", "var", "nonfinite", "channel_mean_sq", "channel_var")


@dataclass
class Moments:
    """The reductions of one pass: call :meth:`add` per tensor, :meth:`finish` once."""

    groups: list[int] = field(default_factory=list)  # per record
    sizes: list[int] = field(default_factory=list)  # elements per group, per record
    shifts: list[torch.Tensor] = field(default_factory=list)  # (T,) per record
    scales: list[torch.Tensor] = field(default_factory=list)  # (T,) per record
    squares: list[torch.Tensor] = field(default_factory=list)  # S2, (T * G,) per record
    sums: list[torch.Tensor] = field(default_factory=list)  # S1, (T * G,) per record
    counts: list[torch.Tensor] = field(default_factory=list)  # (T,) per record
    workspace: dict[tuple, torch.Tensor] = field(default_factory=dict)
    constants: dict[tuple, torch.Tensor] = field(default_factory=dict)

    def _constant(self, value: float, trials: int, device: torch.device) -> torch.Tensor:
        key = (value, trials, device)
        if key not in self.constants:
            self.constants[key] = torch.full((trials,), value, dtype=torch.float64, device=device)
        return self.constants[key]

    def _views(self, shape: torch.Size, groups: int, device: torch.device) -> tuple:
        """A float64 buffer for tensors of ``shape`` (reused across records) and its views:
        as ``shape``, per trial (T, n), as (T * G, 1, m) and (T * G, m, 1) rows, as
        (T * G, m), and the per-trial first elements (T, 1)."""
        key = (shape, groups, device)
        if key not in self.workspace:
            rows = torch.empty(shape.numel(), dtype=torch.float64, device=device)
            size = shape.numel() // (shape[0] * groups)
            per_trial = rows.view(shape[0], -1)
            self.workspace[key] = (rows.view(shape), per_trial, rows.view(-1, 1, size),
                                   rows.view(-1, size, 1), rows.view(-1, size), per_trial[:, :1])
        return self.workspace[key]

    def add(self, v: torch.Tensor, per_channel: bool = True) -> None:
        """Reduce ``v`` = (T, *shape), one slice per trial; with ``per_channel`` a
        (T, N, C, H, W) tensor also gets its channel statistics."""
        v = v.detach()
        grouped = per_channel and v.dim() == 5
        if not grouped and self._add_float32(v):
            return
        self._add_exact(v, grouped)

    def _add_float32(self, v: torch.Tensor) -> bool:
        """The float32 sums of a float32 CPU tensor, kept where they are exact (see the
        module's doc); False leaves the tensor to :meth:`_add_exact`."""
        trials = v.shape[0]
        size = v.numel() // trials if trials else 0
        if not (v.is_cpu and v.dtype == torch.float32 and 0 < size <= _FLOAT32_MAX_SIZE):
            return False
        flat = v.reshape(trials, size)
        work = self.workspace.get(flat.shape)
        if work is None:
            work = self.workspace[flat.shape] = torch.empty(flat.shape, dtype=torch.float32)
        total = flat.sum(1)
        finite = [math.isfinite(s) for s in total.tolist()]  # a CPU result: no wait
        counts = self._constant(0.0, trials, v.device)
        if not all(finite):  # an inf or NaN element (or a sum past float32's range)
            # x - x is NaN exactly where x is not finite
            counts = torch.nan_to_num_(torch.sub(flat, flat, out=work), nan=1.0).sum(1)
            if 0 in [c for c, ok in zip(counts.tolist(), finite) if not ok]:
                return False  # finite elements, too large to sum in float32
        scale = self._constant(1.0, trials, v.device)
        if not any(finite):  # every slice holds an inf or NaN
            square = self._constant(math.nan, trials, v.device)
        else:
            square = _sum_of_squares(flat, work)
            factors = [_rescale(q, size) if ok else 1.0 for q, ok in zip(square.tolist(), finite)]
            if any(f != 1.0 for f in factors):  # tiny or huge: summed again times 2^+-100
                factor = torch.tensor(factors, dtype=torch.float32)[:, None]
                flat = torch.mul(flat, factor, out=work)  # a power of two: exact
                scale = torch.tensor([1 / f for f in factors], dtype=torch.float64)
                total = flat.sum(1)
                square = _sum_of_squares(flat, work)
            for q, s, ok in zip(square.tolist(), total.tolist(), finite):
                if ok and not (q >= size * _FLOAT32_TINY
                               and (q - s * s / size) * _FLOAT32_CANCELLATION >= q):
                    return False  # zero, or a mean large against the spread: the exact path
        self.groups.append(1)
        self.sizes.append(size)
        self.shifts.append(self._constant(0.0, trials, v.device))
        self.scales.append(scale)
        self.squares.append(square)
        self.sums.append(total)
        self.counts.append(counts)
        return True

    def _add_exact(self, v: torch.Tensor, grouped: bool) -> None:
        """The shifted float64 sums (see the module's doc)."""
        trials = v.shape[0]
        groups = v.shape[2] if grouped else 1
        size = v.numel() // (trials * groups)
        self.groups.append(groups)
        self.sizes.append(size)
        scale, counts = self._constant(1.0, trials, v.device), self._constant(0.0, trials, v.device)
        if size == 0:
            nothing = self._constant(math.nan, trials * groups, v.device)
            self.shifts.append(nothing[:trials])
            self.squares.append(nothing)
            self.sums.append(nothing)
            self.scales.append(scale)
            self.counts.append(counts)
            return
        source = v.transpose(1, 2) if grouped else v  # (T, C, N, H, W): a channel per row
        values, per_trial, row, column, rows, first = self._views(source.shape, groups, v.device)
        values.copy_(source)  # widened to float64: exact
        if v.dtype == torch.float64:  # divided by 2^e first, so that no square leaves the range
            peak = per_trial.abs().amax(1)
            exponent = torch.frexp(peak).exponent.clamp(-_MAX_EXPONENT, _MAX_EXPONENT)
            scale = torch.exp2(exponent.double())
            per_trial.div_(scale[:, None])  # a power of two: exact
        shift = first.clone()  # each slice's first element
        per_trial.sub_(shift)
        square = torch.bmm(row, column).view(-1)
        if v.device.type != "cpu" or not np.isfinite(square.numpy()).all():
            counts = (~torch.isfinite(v)).flatten(1).sum(1).double()  # see the module's doc
        self.shifts.append(shift.view(-1))
        self.scales.append(scale)
        self.squares.append(square)
        self.sums.append(rows.sum(1))
        self.counts.append(counts)

    def add_pairs(self, v: torch.Tensor) -> None:
        """Reduce the cosine similarities of rows 2i and 2i+1 of ``v`` = (T, batch, ...):
        their mean over the batch // 2 pairs and their variance."""
        x = v.detach().double()
        x = x / x.abs().flatten(1).amax(1).reshape(-1, *[1] * (x.dim() - 1))  # cancels below
        x = x.reshape(x.shape[0], x.shape[1] // 2, 2, -1)
        a, b = x[:, :, 0], x[:, :, 1]
        norms = torch.linalg.vector_norm(a, dim=-1) * torch.linalg.vector_norm(b, dim=-1)
        self.add((a * b).sum(-1) / norms, per_channel=False)

    def finish(self) -> np.ndarray:
        """The (records, T, 5) statistics ``COLUMNS``, float64 on the host."""
        if not self.sums:
            return np.zeros((0, 1, len(COLUMNS)))
        shifts = torch.stack(self.shifts).cpu().numpy()  # (R, T)
        scales = torch.stack(self.scales).cpu().numpy()
        counts = torch.stack(self.counts).cpu().numpy()
        sums = torch.stack([torch.cat(self.squares), torch.cat(self.sums)], 1).cpu().numpy()
        self.workspace.clear()
        records, trials = shifts.shape
        groups = np.repeat(np.array(self.groups), trials)  # per (record, trial)
        size = np.repeat(np.array(self.sizes, dtype=np.float64), trials)
        starts = np.concatenate([[0], np.cumsum(groups)[:-1]])
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            group_mean = sums[:, 1] / np.repeat(size, groups)  # of x - K
            group_var = np.maximum(sums[:, 0] / np.repeat(size, groups) - group_mean**2, 0.0)
            n = groups * size
            mean = np.add.reduceat(sums[:, 1], starts) / n
            var = np.add.reduceat(sums[:, 0], starts) / n - mean**2
            var = np.where(var < 0, 0.0, var)  # round-off below 0; keeps NaN
            shift, scale = shifts.reshape(-1), scales.reshape(-1)
            channel_mean = (np.repeat(shift, groups) + group_mean) * np.repeat(scale, groups)
            channel_mean_sq = np.add.reduceat(channel_mean**2, starts) / groups
            channel_var = np.add.reduceat(group_var, starts) / groups * scale**2
            ungrouped = groups == 1
            channel_mean_sq[ungrouped] = channel_var[ungrouped] = np.nan
            out = np.stack([(shift + mean) * scale, var * scale**2, counts.reshape(-1),
                            channel_mean_sq, channel_var], axis=1)
        return out.reshape(records, trials, len(COLUMNS))


def _rescale(square: float, size: int) -> float:
    """What a finite slice's elements are multiplied by so that its float32 sum of squares
    ``square`` is exact: 2^100 if tiny, 2^-100 if it overflowed float32, else 1."""
    if not math.isfinite(square):
        return 1 / _FLOAT32_SCALE
    return _FLOAT32_SCALE if square < size * _FLOAT32_TINY else 1.0


def _sum_of_squares(flat: torch.Tensor, work: torch.Tensor) -> torch.Tensor:
    """Per row of the float32 (T, n) ``flat``: sum(x^2). Up to 2^17 elements by cascade
    summation of the squares (written into ``work``, which may be ``flat`` itself); beyond,
    where a pass over memory costs more than a call, in one pass as the float32 norms of
    rows of 64 elements (a few float32 additions each), squared and summed in float64."""
    if flat.shape[1] > _FLOAT32_ROWS_FROM and flat.shape[1] % _FLOAT32_ROW == 0:
        rows = torch.linalg.vector_norm(flat.view(flat.shape[0], -1, _FLOAT32_ROW), dim=2)
        return torch.linalg.vector_norm(rows, dim=1, dtype=torch.float64).square_()
    return torch.mul(flat, flat, out=work).sum(1)


def moments(v: torch.Tensor, per_channel: bool = True) -> np.ndarray:
    """``COLUMNS`` of ``v`` = (T, *shape) per trial, as a (T, 5) array (one tensor's
    :class:`Moments`)."""
    reduction = Moments()
    reduction.add(v, per_channel)
    return reduction.finish()[0]
