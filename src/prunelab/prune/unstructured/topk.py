"""Exact, deterministic "keep the k largest scores" over large flat score vectors.

Global magnitude pruning needs the k-th smallest of tens of millions of magnitudes (25.5M for
ResNet-50). A full ``topk`` or ``kthvalue`` is a selection over the whole vector; instead a small
fixed-seed sample brackets the k-th value, two comparison passes count and extract the bracket,
and ``kthvalue`` runs on the bracket alone. The answer is exact whatever the sample: the sample
only decides how much work the exact step does, and a missed bracket falls back to ``kthvalue``.

Ties are broken deterministically: among scores equal to the threshold, the earliest positions
(module order, then flat index) are kept. The kept count is therefore exactly ``k``, unlike the
reference code of Gupta et al., which keeps every weight ``>= t`` (seed notes, sec. 6 item 3).
"""

from __future__ import annotations

import math

import torch

_SAMPLE = 1 << 16
_EXACT_BELOW = 1 << 20  # below this many elements kthvalue on the whole vector is cheap


def kth_smallest(x: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k``-th smallest element (1-based) of the flat tensor ``x``, as a 0-d tensor."""
    n = x.numel()
    if not 1 <= k <= n:
        raise ValueError(f"k={k} out of range for {n} elements")
    if n <= _EXACT_BELOW:
        return torch.kthvalue(x, k).values
    gen = torch.Generator(device=x.device).manual_seed(0)
    idx = torch.randint(0, n, (_SAMPLE,), generator=gen, device=x.device)
    sample = torch.sort(x[idx]).values
    q = k / n
    center = q * _SAMPLE
    margin = 6.0 * math.sqrt(_SAMPLE * q * (1.0 - q)) + 32.0
    lo_i, hi_i = int(center - margin), int(math.ceil(center + margin))
    inf = torch.tensor(float("inf"), dtype=x.dtype, device=x.device)
    lo = sample[lo_i] if lo_i >= 0 else -inf
    hi = sample[hi_i] if hi_i < _SAMPLE else inf
    below = int(torch.count_nonzero(x < lo)) if lo_i >= 0 else 0
    window = x[(x >= lo).logical_and_(x <= hi)]
    if below < k <= below + window.numel():
        return torch.kthvalue(window, k - below).values
    return torch.kthvalue(x, k).values


def keep_largest(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Boolean mask (same shape as the flat ``scores``) keeping exactly ``keep`` largest entries.

    Entries below the threshold are dropped, entries above it kept, and ties at the threshold are
    kept in order of position until the count is exactly ``keep``.
    """
    n = scores.numel()
    if keep >= n:
        return torch.ones(n, dtype=torch.bool, device=scores.device)
    if keep <= 0:
        return torch.zeros(n, dtype=torch.bool, device=scores.device)
    t = kth_smallest(scores, n - keep)
    mask = scores > t
    need = keep - int(torch.count_nonzero(mask))
    if need > 0:
        ties = scores == t
        n_ties = int(torch.count_nonzero(ties))
        if need == n_ties:
            mask.logical_or_(ties)
        else:
            mask[ties.nonzero().view(-1)[:need]] = True
    return mask
