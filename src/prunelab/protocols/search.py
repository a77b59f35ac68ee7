"""Bisection on a scalar that sets an architecture, to hit a target in real units.

Reduced networks search a width / bottleneck multiplier, copied profiles a scale alpha: in both,
a larger scalar never gives a smaller network, but widths change in whole channels, so the measured
value is a step function of the scalar. The search therefore keeps every step it measured and
returns the *closest* one (never simply the last), and fails with the numbers when no scalar in
range lands within the tolerance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prunelab.errors import PrunelabError
from prunelab.models import ArchSpec
from prunelab.protocols.targets import Target, format_metric


@dataclass
class SearchStep:
    x: float
    value: float
    spec: ArchSpec

    def rel_error(self, target: float) -> float:
        return self.value / target - 1.0


@dataclass
class SearchResult:
    """The chosen scalar, its architecture and measured value, and every step taken."""

    name: str
    x: float
    spec: ArchSpec
    value: float
    target: Target
    steps: list[SearchStep] = field(default_factory=list)

    @property
    def rel_error(self) -> float:
        return self.value / self.target.value - 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            self.name: self.x,
            "target": self.target.to_dict(),
            "achieved": self.value,
            "rel_error": self.rel_error,
            "steps": [{self.name: s.x, self.target.metric: s.value} for s in self.steps],
        }


def bisect_scalar(make: Callable[[float], ArchSpec], measure: Callable[[ArchSpec], float], target: Target, *,
                  lo: float, hi: float, tol: float = 0.02, name: str = "multiplier", what: str = "network",
                  max_steps: int = 40, strict: bool = True) -> SearchResult:
    """Find ``x`` in ``[lo, hi]`` with ``measure(make(x))`` within ``tol`` (relative) of ``target``.

    Assumes the measured value does not decrease with ``x``. Raises :class:`PrunelabError` naming
    the reachable range when the target lies outside it, or (with ``strict``) the nearest value when
    rounding to whole channels leaves no step within ``tol``; without ``strict`` that nearest step
    is returned, for a caller that can refine it.
    """
    if not 0.0 <= tol < 1.0:
        raise PrunelabError(f"relative tolerance of the target must be in [0, 1), got {tol}")
    if not lo < hi:
        raise PrunelabError(f"{name} range [{lo}, {hi}] is empty")
    goal = target.value
    steps: list[SearchStep] = []

    def probe(x: float) -> SearchStep:
        spec = make(x)
        step = SearchStep(x, float(measure(spec)), spec)
        steps.append(step)
        return step

    low, high = probe(lo), probe(hi)
    if goal < low.value * (1 - tol):
        raise PrunelabError(
            f"{target.metric} target {format_metric(target.metric, goal)} is unreachable: the smallest {what} "
            f"({name} {lo:.4g}) has {format_metric(target.metric, low.value)}")
    if goal > high.value * (1 + tol):
        raise PrunelabError(
            f"{target.metric} target {format_metric(target.metric, goal)} is unreachable: the largest {what} "
            f"({name} {hi:.4g}) has {format_metric(target.metric, high.value)}")
    a, b = lo, hi
    precision = tol / 10
    for _ in range(max_steps):
        if abs(_best(steps, goal).rel_error(goal)) <= precision or b - a <= 1e-5 * max(1.0, abs(b)):
            break
        mid = 0.5 * (a + b)
        step = probe(mid)
        if step.value < goal:
            a = mid
        else:
            b = mid
    best = _best(steps, goal)
    if strict and abs(best.rel_error(goal)) > tol:
        raise not_within(name, best, target, tol)
    return SearchResult(name, best.x, best.spec, best.value, target, steps)


def not_within(name: str, best: SearchStep, target: Target, tol: float) -> PrunelabError:
    """The error for a search whose nearest step misses the target by more than ``tol``."""
    goal = target.value
    return PrunelabError(
        f"no {name} lands within {tol:.1%} of {target.metric} target {format_metric(target.metric, goal)}: "
        f"the nearest, {name} {best.x:.4g}, gives {format_metric(target.metric, best.value)} "
        f"({best.rel_error(goal):+.1%}); widths change in whole channels")


def nearest_choice(candidates: list[tuple[float, ArchSpec]], measure: Callable[[ArchSpec], float], target: Target,
                   *, name: str, tol: float | None = None, what: str = "network") -> SearchResult:
    """Pick among discrete architectures (e.g. legal depths) the one whose value is nearest ``target``.

    With ``tol`` set, a nearest value farther than ``tol`` is an error naming the legal choices.
    """
    if not candidates:
        raise PrunelabError(f"no legal {name} to choose from")
    goal = target.value
    steps = [SearchStep(x, float(measure(spec)), spec) for x, spec in candidates]
    lo_step = min(steps, key=lambda s: s.value)
    hi_step = max(steps, key=lambda s: s.value)
    best = _best(steps, goal)
    if tol is not None and abs(best.rel_error(goal)) > tol:
        options = ", ".join(f"{s.x:g}: {format_metric(target.metric, s.value)}" for s in steps)
        raise PrunelabError(
            f"no legal {name} lands within {tol:.1%} of {target.metric} target "
            f"{format_metric(target.metric, goal)} (reachable {format_metric(target.metric, lo_step.value)} to "
            f"{format_metric(target.metric, hi_step.value)}; {name}s {options})")
    return SearchResult(name, best.x, best.spec, best.value, target, steps)


def _best(steps: list[SearchStep], goal: float) -> SearchStep:
    # Closest in relative terms; among equals, the smaller network (it never exceeds a budget more).
    return min(steps, key=lambda s: (abs(s.rel_error(goal)), s.value))
