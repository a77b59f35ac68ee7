"""How many weights each layer keeps: exact counts, uniform and given sparsities, Minimum Threshold.

Counts are integers computed in exact rational arithmetic (``fractions.Fraction`` of the decimal
sparsity), so a sparsity of 0.9 over ``N`` weights keeps exactly ``round(0.1 * N)`` (half to even),
with no floating-point drift.

Minimum Threshold (MT), Gupta et al. (2022, sec. 3; ``Global MP with MT/prune_withMT.py``): every
layer keeps at least sigma weights, layers of at most sigma weights stay dense, and the total sparsity
stays on target. The reference code redistributes proportionally: starting from plain global MP's
per-layer sparsities, every layer larger than sigma has its sparsity multiplied by one common
factor, layers that would keep fewer than sigma are pinned at sigma, and the factor is chosen so the
total is back on target. The reference (``Global MP with MT/prune_withMT.py``) iterates this to a
fixed point, which can stall one ulp short of the target or loop forever; here the factor, one
unknown of a piecewise-linear increasing function, is solved directly, infeasible targets are
reported up front with the numbers, and a layer of exactly sigma weights counts as small (dense).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from prunelab.errors import PrunelabError


def as_fraction(x: float | int | str | Fraction) -> Fraction:
    """The decimal value of ``x`` as an exact fraction (0.9 -> 9/10, not the nearest binary float)."""
    if isinstance(x, Fraction):
        return x
    return Fraction(repr(x)) if isinstance(x, float) else Fraction(x)


def check_sparsity(sparsity: float, what: str = "sparsity") -> float:
    """Validate a target sparsity: a number in [0, 1)."""
    try:
        value = float(sparsity)
    except (TypeError, ValueError):
        raise PrunelabError(f"{what} must be a number in [0, 1), got {sparsity!r}") from None
    if not 0.0 <= value < 1.0:
        raise PrunelabError(f"{what} must be in [0, 1) (fraction of weights removed), got {sparsity!r}")
    return value


def kept_count(n: int, sparsity: float) -> int:
    """Weights kept out of ``n`` at ``sparsity``: ``round((1 - s) * n)``, half to even, exactly."""
    return round((1 - as_fraction(sparsity)) * n)


def sigma_from_percent(total: int, percent: float) -> int:
    """Absolute MT from a percentage of all prunable weights, ``int(N * MT% / 100)`` as the reference
    code computes it (0.05 % of ResNet-50's 25,502,912 weights -> 12,751)."""
    p = as_fraction(percent)
    if not 0 <= p < 100:
        raise PrunelabError(f"minimum threshold percent must be in [0, 100), got {percent!r}")
    return int(total * p / 100)


def check_sigma(sigma: int) -> int:
    if isinstance(sigma, bool) or int(sigma) != sigma or sigma < 0:
        raise PrunelabError(f"minimum threshold (weights per layer) must be an integer >= 0, got {sigma!r}")
    return int(sigma)


def mt_capacity(sizes: Sequence[int], sigma: int) -> int:
    """The most weights that can be pruned while every layer larger than sigma keeps sigma and
    every layer of at most sigma weights stays dense."""
    return sum(n - sigma for n in sizes if n > sigma)


def _largest_feasible_sigma(sizes: Sequence[int], pruned: int) -> int:
    lo, hi = 0, max(sizes)
    while lo < hi:  # capacity is non-increasing in sigma
        mid = (lo + hi + 1) // 2
        if mt_capacity(sizes, mid) >= pruned:
            lo = mid
        else:
            hi = mid - 1
    return lo


def check_mt_feasible(sizes: Sequence[int], sparsity: float, sigma: int) -> None:
    """Raise :class:`PrunelabError` with the numbers if ``sparsity`` cannot be met under ``sigma``."""
    total = sum(sizes)
    pruned = total - kept_count(total, sparsity)
    capacity = mt_capacity(sizes, sigma)
    if pruned <= capacity:
        return
    small = [n for n in sizes if n <= sigma]
    large = len(sizes) - len(small)
    best_sparsity = capacity / total if total else 0.0
    best_sigma = _largest_feasible_sigma(sizes, pruned)
    raise PrunelabError(
        f"sparsity {sparsity} needs {pruned:,} of {total:,} weights pruned, but minimum threshold "
        f"sigma={sigma:,} allows at most {capacity:,} ({len(small)} layers of <= sigma weights stay dense "
        f"with {sum(small):,} weights, {large} larger layers keep {sigma:,} each); feasible: sparsity "
        f"<= {best_sparsity:.6f} at this sigma, or sigma <= {best_sigma:,} at this sparsity"
    )


@dataclass(frozen=True)
class MTResult:
    """Outcome of the MT redistribution: per-layer pruned counts and the common scale factor."""

    pruned: list[int]
    factor: Fraction
    dense: list[int]  # indices of layers of at most sigma weights (kept dense)
    pinned: list[int]  # indices of layers pinned at exactly sigma kept weights


def minimum_threshold(sizes: Sequence[int], global_pruned: Sequence[int], sigma: int,
                      target_pruned: int, names: Sequence[str] | None = None) -> MTResult:
    """Redistribute plain global MP's per-layer pruned counts under Minimum Threshold ``sigma``.

    ``global_pruned[l]`` is what global MP prunes in layer ``l``; ``target_pruned`` the total to prune.
    Layers with ``n_l <= sigma`` prune nothing; every other layer prunes ``min(c * p_l, n_l - sigma)``
    with the one factor ``c`` that makes the total exactly ``target_pruned``; the real-valued counts
    are rounded by largest remainder (ties to the earlier layer) so they sum exactly.
    """
    names = list(names) if names is not None else [f"layer {i}" for i in range(len(sizes))]
    sigma = check_sigma(sigma)
    if len(sizes) != len(global_pruned):
        raise ValueError("sizes and global_pruned differ in length")
    total = sum(sizes)
    capacity = mt_capacity(sizes, sigma)
    if target_pruned > capacity:
        raise PrunelabError(
            f"cannot prune {target_pruned:,} of {total:,} weights with minimum threshold sigma={sigma:,}: "
            f"at most {capacity:,} can go"
        )
    dense = [i for i, n in enumerate(sizes) if n <= sigma]
    active = [i for i, n in enumerate(sizes) if n > sigma and global_pruned[i] > 0]
    cap = {i: sizes[i] - sigma for i in active}
    # f(c) = sum_i min(c * p_i, cap_i): walk the breakpoints cap_i / p_i in increasing order.
    order = sorted(active, key=lambda i: (Fraction(cap[i], global_pruned[i]), i))
    pinned_total, free_p = 0, sum(global_pruned[i] for i in active)
    factor: Fraction | None = None
    pinned: list[int] = []
    for i in order:
        c = Fraction(target_pruned - pinned_total, free_p)
        if c <= Fraction(cap[i], global_pruned[i]):
            factor = c
            break
        pinned_total += cap[i]
        free_p -= global_pruned[i]
        pinned.append(i)
    if factor is None:
        if pinned_total != target_pruned:
            untouched = [names[i] for i, n in enumerate(sizes) if n > sigma and global_pruned[i] == 0]
            raise PrunelabError(
                f"minimum threshold sigma={sigma:,} cannot reach {target_pruned:,} pruned weights by proportional "
                f"redistribution: every layer global MP prunes is pinned at sigma ({pinned_total:,} pruned) and "
                f"layers global MP leaves dense ({', '.join(untouched[:5])}) cannot be scaled; lower the sparsity "
                f"or sigma"
            )
        factor = Fraction(0) if not order else Fraction(cap[order[-1]], global_pruned[order[-1]])
    exact = [Fraction(0)] * len(sizes)
    for i in active:
        exact[i] = Fraction(cap[i]) if i in pinned else min(factor * global_pruned[i], Fraction(cap[i]))
    counts = [int(x) for x in exact]  # floor (all non-negative)
    missing = target_pruned - sum(counts)
    by_remainder = sorted(range(len(sizes)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[:missing]:
        counts[i] += 1
    return MTResult(counts, factor, dense, sorted(pinned))
