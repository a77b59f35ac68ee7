"""Targets: what a pruning run aims for, in real units.

A target is a one-key mapping such as ``{sparsity: 0.9}``, ``{params: 20000}`` or
``{macs_ratio: 0.5}``. Ratios are fractions of the unpruned model (``macs_ratio: 0.5`` keeps half the
MACs); ``compression`` is ShrinkBench's compression ratio (dense parameters / remaining parameters,
so ``compression: 8`` is sparsity 0.875; Blalock et al. 2020). Which keys a method accepts is declared
when its task kind is registered (:func:`prunelab.study.tasks.register`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from prunelab.errors import PrunelabError

# key -> (check, description of the valid range)
_CHECKS: dict[str, tuple[Callable[[float], bool], str]] = {
    "sparsity": (lambda v: 0.0 <= v < 1.0, "a fraction in [0, 1)"),
    "compression": (lambda v: v >= 1.0, "a ratio >= 1"),
    "params": (lambda v: v > 0 and float(v).is_integer(), "a positive integer"),
    "params_ratio": (lambda v: 0.0 < v <= 1.0, "a fraction in (0, 1]"),
    "macs": (lambda v: v > 0 and float(v).is_integer(), "a positive integer"),
    "macs_ratio": (lambda v: 0.0 < v <= 1.0, "a fraction in (0, 1]"),
    "latency_ms": (lambda v: v > 0.0, "a positive number of milliseconds"),
    "latency_ratio": (lambda v: 0.0 < v <= 1.0, "a fraction in (0, 1]"),
}

TARGET_KEYS: tuple[str, ...] = tuple(_CHECKS)


def check_target(target: Any) -> dict[str, float | int] | None:
    """Validate one target and return it normalised (``None`` for "no target").

    Integers stay integers (parameter and MAC counts), everything else becomes a float.
    """
    if target is None:
        return None
    if not isinstance(target, dict) or len(target) != 1:
        raise PrunelabError(f"a target is a one-key mapping like {{sparsity: 0.9}}; got {target!r}; "
                            f"valid keys: {', '.join(TARGET_KEYS)}")
    (key, value), = target.items()
    if key not in _CHECKS:
        raise PrunelabError(f"unknown target {key!r}; valid choices: {', '.join(TARGET_KEYS)}")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PrunelabError(f"target {key} must be a number, got {value!r}")
    check, valid = _CHECKS[key]
    if not check(value):
        raise PrunelabError(f"impossible target {key}={value}: {key} must be {valid}")
    if key in ("params", "macs"):
        return {key: int(value)}
    return {key: float(value)}


def target_key(target: dict | None) -> str | None:
    return None if not target else next(iter(target))


def target_value(target: dict | None) -> float | None:
    return None if not target else float(next(iter(target.values())))


def target_label(target: dict | None) -> str:
    """``sparsity=0.9``; ``-`` for no target."""
    if not target:
        return "-"
    (key, value), = target.items()
    return f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
