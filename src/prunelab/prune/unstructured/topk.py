"""Exact, deterministic "keep the k largest scores" over large flat score vectors.

Global magnitude pruning needs the k-th smallest of tens of millions of magnitudes (25.5M for
ResNet-50). A full ``topk`` or ``kthvalue`` is a selection over the whole vector; instead a small
fixed-seed sample brackets the k-th value, two comparison passes count and extract the bracket,
and ``kthvalue`` runs on the bracket alone. The answer is exact whatever the sample: the sample
only decides how much work the exact step does, and a missed bracket falls back to ``kthvalue``.

Ties are broken deterministically: among scores equal to the threshold, the earliest positions
(module order, then flat index) are kept. The kept count is therefore exactly ``k``, unlike the
reference code of Gupta et al. (``Global MP/prune.py``, ``kthvalue``), which keeps every weight ``>= t``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

_SAMPLE = 1 << 16
_EXACT_BELOW = 1 << 20  # below this many elements kthvalue on the whole vector is cheap


def _threshold(x: torch.Tensor, k: int) -> tuple[torch.Tensor, int, int]:
    """The ``k``-th smallest value ``t`` of flat ``x`` (1-based), with ``#(x <= t)`` and ``#(x == t)``."""
    n = x.numel()
    if not 1 <= k <= n:
        raise ValueError(f"k={k} out of range for {n} elements")
    if n > _EXACT_BELOW:
        gen = torch.Generator(device=x.device).manual_seed(0)
        idx = torch.randint(0, n, (_SAMPLE,), generator=gen, device=x.device)
        sample = torch.sort(x[idx]).values
        q = k / n
        center = q * _SAMPLE
        margin = 6.0 * math.sqrt(_SAMPLE * q * (1.0 - q)) + 32.0
        lo_i, hi_i = int(center - margin), int(math.ceil(center + margin))
        if lo_i >= 0 and hi_i < _SAMPLE:
            inside = x >= sample[lo_i]
            below = n - int(torch.count_nonzero(inside))
            window = x[inside.logical_and_(x <= sample[hi_i])]
            if below < k <= below + window.numel():
                t = torch.kthvalue(window, k - below).values
                return t, below + int(torch.count_nonzero(window <= t)), int(torch.count_nonzero(window == t))
    t = torch.kthvalue(x, k).values
    return t, int(torch.count_nonzero(x <= t)), int(torch.count_nonzero(x == t))


def kth_smallest(x: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k``-th smallest element (1-based) of the flat tensor ``x``, as a 0-d tensor."""
    return _threshold(x, k)[0]


def keep_largest_segments(scores: torch.Tensor, keep: int, offsets: Sequence[int]) -> list[torch.Tensor]:
    """Boolean masks, one per segment ``scores[offsets[i]:offsets[i + 1]]``, that together keep exactly
    ``keep`` largest entries of the flat ``scores``: entries above the threshold are kept, entries below
    dropped, and ties at the threshold kept in order of position until the count is exactly ``keep``.
    Each mask is a fresh tensor (no view of a shared buffer)."""
    n = scores.numel()
    bounds = list(zip(offsets, offsets[1:]))
    if keep >= n or keep <= 0:
        fill = torch.ones if keep >= n else torch.zeros
        return [fill(b - a, dtype=torch.bool, device=scores.device) for a, b in bounds]
    t, n_le, n_eq = _threshold(scores, n - keep)
    need = keep - (n - n_le)  # ties at t to keep
    if need == n_eq:
        return [torch.ge(scores[a:b], t) for a, b in bounds]
    masks = [torch.gt(scores[a:b], t) for a, b in bounds]
    for mask, (a, b) in zip(masks, bounds):
        if need <= 0:
            break
        ties = torch.nonzero(scores[a:b] == t).view(-1)[:need]
        mask[ties] = True
        need -= ties.numel()
    return masks


def keep_largest(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Boolean mask over the flat ``scores`` keeping exactly ``keep`` largest entries (ties by position)."""
    return keep_largest_segments(scores, keep, [0, scores.numel()])[0]
