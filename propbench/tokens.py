"""Statistics of token sequences: how alike the tokens of a sequence are, and how spread
the attention is. Both reduce on the tensor's device to one number per example (or per
attention row), which :class:`propbench.moments.Moments` then averages.

- Token similarity (rank collapse; Dong et al. 2021, "Attention is not all you need: pure
  attention loses rank doubly exponentially with depth"; Noci et al. 2022, "Signal
  propagation in transformers"): for the N tokens x_1..x_N of one sequence, the mean cosine
  similarity over the N(N - 1) ordered pairs of distinct tokens. With unit vectors
  u_i = x_i / |x_i|, ``sum_{i != j} u_i . u_j = |sum_i u_i|^2 - N``, so it costs O(N width):

      s = (|sum_i u_i|^2 - N) / (N (N - 1)),

  1 when all tokens point the same way (collapsed), about 0 for independent random tokens,
  and at least -1 / (N - 1).
- Attention entropy: ``H = -sum_j p_j log p_j`` (nats) of one row of attention
  probabilities; log(N) for uniform attention over N keys, 0 for attention on one key.
"""

from __future__ import annotations

import torch


def token_similarity(x: torch.Tensor, token_dim: int = 1) -> torch.Tensor:
    """Per example, the mean cosine similarity between distinct tokens of ``x``: ``x`` has
    the batch on axis 0 and the tokens on ``token_dim``; every other axis is a feature.
    Returns ``(batch,)`` in float64 (NaN with fewer than two tokens).

    >>> import torch
    >>> x = torch.randn(3, 1, 8).expand(3, 5, 8)  # every token the same
    >>> token_similarity(x).tolist()
    [1.0, 1.0, 1.0]
    """
    x = x.detach().double().movedim(token_dim, 1).flatten(2)  # (batch, N, features)
    n = x.shape[1]
    x = x / x.abs().amax((1, 2), keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    units = torch.nn.functional.normalize(x, dim=-1)
    total = units.sum(1)
    return ((total * total).sum(-1) - n) / (n * (n - 1)) if n > 1 else total[:, 0] * torch.nan


def attention_entropy(p: torch.Tensor) -> torch.Tensor:
    """The entropy in nats of each row (last axis) of the attention probabilities ``p``,
    ``-sum_j p_j log p_j`` with 0 log 0 = 0; float64, one number per row."""
    p = p.detach().double()
    return -torch.special.xlogy(p, p).sum(-1)
