"""Targets in real units and how an architecture is measured against them.

A target is a metric and a value: parameters (all trainable parameters, BN included, as
``prunelab.measure.count_params(...).params``), MACs (batch 1, the PFS convention of
``prunelab.measure.count_macs``: Conv/Linear plus average-pool numel) or latency in milliseconds
measured on the current device (``prunelab.measure.latency``). Measuring always builds the model
from its spec, so what is measured is exactly what will be trained.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from prunelab.errors import PrunelabError, check_choice
from prunelab.models import ArchSpec, create
from prunelab.models.inputs import InputSpec

METRICS = ("params", "macs", "latency")


@dataclass(frozen=True)
class Target:
    """What a search aims at: ``metric`` in :data:`METRICS`, ``value`` in its unit (count or ms)."""

    metric: str
    value: float

    def __post_init__(self) -> None:
        check_choice("target metric", self.metric, METRICS)
        if not (math.isfinite(self.value) and self.value > 0):
            raise PrunelabError(f"{self.metric} target must be a positive number, got {self.value}")

    @property
    def unit(self) -> str:
        return "ms" if self.metric == "latency" else self.metric

    def describe(self, value: float | None = None) -> str:
        return format_metric(self.metric, self.value if value is None else value)

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "value": self.value}


def format_metric(metric: str, value: float) -> str:
    if metric == "latency":
        return f"{value:.4g} ms"
    return f"{int(round(value)):,} {'MACs' if metric == 'macs' else metric}"


def parse_target(text: str) -> Target:
    """Parse ``params=1e5``, ``macs=2.5M`` or ``latency=1.5`` (ms) into a :class:`Target`."""
    if "=" not in text:
        raise PrunelabError(f"target {text!r} must look like params=N, macs=N or latency=MS")
    metric, _, value = text.partition("=")
    return Target(metric.strip().lower(), parse_number(value))


def parse_number(text: str | float | int) -> float:
    """``1.5M``, ``300k``, ``2e6`` or a plain number."""
    if isinstance(text, (int, float)):
        return float(text)
    s = str(text).strip().replace(",", "").replace("_", "")
    scale = {"k": 1e3, "m": 1e6, "g": 1e9}.get(s[-1:].lower())
    try:
        return float(s[:-1]) * scale if scale else float(s)
    except ValueError:
        raise PrunelabError(f"cannot read {text!r} as a number (examples: 250000, 2.5M, 300k)") from None


@dataclass
class LatencyOptions:
    """How a latency target is measured: batch size, device, threads, repetitions."""

    batch_size: int = 1
    device: str = "cpu"
    threads: int | None = None
    repeats: int = 20
    min_time_s: float = 0.2


@dataclass
class Measurer:
    """Measures specs (built fresh) in one metric, caching by spec so a search never re-counts.

    ``input_shape`` excludes the batch dimension (or is an :class:`~prunelab.models.inputs.InputSpec`).
    """

    metric: str
    input_shape: tuple[int, ...] | InputSpec
    latency: LatencyOptions = field(default_factory=LatencyOptions)
    _cache: dict[str, float] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        check_choice("target metric", self.metric, METRICS)
        if not isinstance(self.input_shape, InputSpec):
            self.input_shape = tuple(int(d) for d in self.input_shape)

    def __call__(self, spec: ArchSpec) -> float:
        key = _spec_key(spec)
        if key not in self._cache:
            with torch.random.fork_rng(devices=[]):
                model = create(spec)
            self._cache[key] = measure(model, self.metric, self.input_shape, self.latency)
        return self._cache[key]


def measure(model: nn.Module, metric: str, input_shape: tuple[int, ...],
            latency: LatencyOptions | None = None) -> float:
    """The ``metric`` of ``model``: parameters, MACs (batch 1) or median latency in ms."""
    check_choice("target metric", metric, METRICS)
    if metric == "params":
        from prunelab.measure import count_params

        return float(count_params(model).params)
    if metric == "macs":
        from prunelab.measure import count_macs

        return float(count_macs(model, input_shape))
    return measure_latency_ms(model, input_shape, latency or LatencyOptions())


def measure_latency_ms(model: nn.Module, input_shape: tuple[int, ...], opts: LatencyOptions) -> float:
    """Median latency of one forward pass in milliseconds, measured on ``opts.device``
    (:func:`prunelab.measure.latency.latency_of`: warm-up, fixed threads, CUDA synchronisation)."""
    try:
        from prunelab.measure.latency import latency_of
    except ImportError:
        raise PrunelabError("latency targets need prunelab.measure.latency, which is not available") from None
    return float(latency_of(model, input_shape, batch_size=opts.batch_size, threads=opts.threads,
                            device=opts.device, repeats=opts.repeats, min_time_s=opts.min_time_s))


def _spec_key(spec: ArchSpec) -> str:
    import json

    return json.dumps(spec.to_dict(), sort_keys=True, default=str)
