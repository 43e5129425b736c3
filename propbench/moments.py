"""Exact mean and variance of every tensor a pass records, reduced on the tensor's device.

For each trial's slice x of n elements (split into G groups of m elements: the channels of
an (N, C, H, W) tensor, else one group), :meth:`Moments.add` keeps three small results on
the device:

- the shift K = x[0] (the slice's first element),
- the sums S1 = sum(x - K) and S2 = sum((x - K)^2) per group, in float64 (x widened into a
  buffer reused across records, shifted in place, S2 as one batched dot product),
- the number of non-finite elements.

:meth:`Moments.finish` brings them to the host once, after the pass, and forms
``mean = K + S1/n`` and ``var = S2/n - (S1/n)^2``. Widening to float64 is exact for float32
and lower precisions, and float64's range holds the square of every float32 (from
(1.4e-45)^2 up to (3.4e38)^2), so subnormal and huge elements keep all their digits. The
shift removes the cancellation of ``E[x^2] - E[x]^2`` when the mean is large against the
spread: |K - mean| <= sqrt(n) sd, so ``(S1/n)^2`` is at most n times the variance (about
its size for any ordinary tensor), against float64's 1e-16. A float64 tensor is first
divided by the power of two 2^e just above its largest magnitude (exact), so its squares
neither overflow nor underflow; the results are scaled back by 2^e and 4^e (the variance is
inf only where it exceeds float64's range itself).

A tensor holding an inf or NaN has a non-finite S2, hence a non-finite variance, and the
number of such elements is counted exactly. On the CPU the count is taken only when S2 is
not finite (reading a CPU result waits for nothing); on other devices always, so that no
hook syncs with the host.

For grouped tensors the channel statistics of signal-propagation plots (Brock et al., 2021,
"Characterizing signal propagation to close the performance gap in unnormalized ResNets")
come from the same sums: ``channel_mean_sq`` = mean over channels of the squared channel
mean, ``channel_var`` = mean over channels of the channel's variance.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

# A float64 tensor is scaled by at most 2^+-1000, which float64 represents exactly.
_MAX_EXPONENT = 1000
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
        trials = v.shape[0]
        grouped = per_channel and v.dim() == 5
        groups = v.shape[2] if grouped else 1
        size = v.numel() // (trials * groups)
        self.groups.append(groups)
        self.sizes.append(size)
        scale, counts = self._constant(1.0, trials, v.device), self._constant(0.0, trials, v.device)
        if size == 0:
            nothing = self._constant(float("nan"), trials * groups, v.device)
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


def moments(v: torch.Tensor, per_channel: bool = True) -> np.ndarray:
    """``COLUMNS`` of ``v`` = (T, *shape) per trial, as a (T, 5) array (one tensor's
    :class:`Moments`)."""
    reduction = Moments()
    reduction.add(v, per_channel)
    return reduction.finish()[0]
