"""Measured inference latency of eager PyTorch: the honest answer to "is the pruned model faster?".

MACs are not latency (Torch-Pruning's ResNet-50 sweep: 3.85x fewer MACs gave 2.19x lower latency),
and masked unstructured sparsity gives no speed-up on dense kernels, so prunelab times real forward
passes on the current device, with the primitives of :mod:`prunelab.measure.timing`: warm-up calls
first, then at least ``repeats`` timed calls and at least ``min_time_s`` seconds; the median is the
headline figure (IQR, p90, mean and standard deviation are reported too).

Other back-ends (ONNX Runtime, ``torch.compile``, the deploy artefact) and sweeps over models,
back-ends, threads and batch sizes live in :mod:`prunelab.export.backends` and
:mod:`prunelab.export.bench`; this module times eager PyTorch, or any prepared call it is handed.

Latency as a pruning target: :func:`latency_of` (one number, the median in ms) is what iterative
structured pruning (``--target-latency-ms``) and reduced-network search call after each candidate;
:func:`round_channels` gives hardware-friendly widths (multiples of 8 or 16).

The Crowley et al. (2018, sec. 5) comparison of reduced and pruned networks at matched parameter
counts is :func:`compare_latency` (interleaved timing; its plot is :func:`prunelab.report.latency.plot_latency`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.measure.timing import (
    PeakMemory,
    check_batch_size,
    check_device,
    check_threads,
    check_timing,
    example_input,
    fixed_threads,
    input_dtype,
    prepared,
    summarize,
    time_interleaved,
    trial_call,
)
from prunelab.models.inputs import InputSpec, call_model

#: a prepared call of a model on one batch: ``runner(model, x, threads, device) -> call``
Runner = Callable[[nn.Module, torch.Tensor, int, str], Callable[[], object]]


@dataclass
class LatencyResult:
    """One latency measurement: a model, a batch size, a thread count, a device, a back-end.

    Times are per forward call of the whole batch, in milliseconds. ``peak_memory_mb`` follows the
    convention of :mod:`prunelab.measure.timing` (CUDA allocator peak; CPU peak resident-set rise; or None).
    """

    median_ms: float
    p90_ms: float
    mean_ms: float
    std_ms: float
    repeats: int
    batch_size: int
    threads: int | None
    device: str
    backend: str
    peak_memory_mb: float | None = None
    #: interquartile range of the timed calls (q75 - q25), the spread next to the median
    iqr_ms: float | None = None
    #: the model's name in a comparison of several models
    model: str | None = None

    @property
    def per_sample_ms(self) -> float:
        return self.median_ms / self.batch_size

    @property
    def throughput(self) -> float:
        """Samples per second at the median latency."""
        return 1000.0 * self.batch_size / self.median_ms if self.median_ms > 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def eager_runner(model: nn.Module, x, threads: int, device: str) -> Callable[[], object]:
    """``model(x)`` under ``torch.inference_mode``: the eager PyTorch back-end (a tuple of inputs is
    passed positionally, a dict by keyword: :func:`~prunelab.models.inputs.call_model`)."""
    def call() -> object:
        with torch.inference_mode():
            return call_model(model, x)
    return call


def measure_latency(model: nn.Module, input_shape: InputSpec | Sequence[int], *, batch_size: int = 1,
                    threads: int | None = None, device: str = "cpu", backend: str = "eager",
                    warmup: int = 10, repeats: int = 50, min_time_s: float = 0.5,
                    max_time_s: float | None = None, runner: Runner | None = None) -> LatencyResult:
    """Time forward passes of ``model`` on a random batch of shape ``(batch_size, *input_shape)``
    (or of ``batch_size`` samples of an :class:`~prunelab.models.inputs.InputSpec`'s inputs).

    ``threads``: CPU threads for the measurement (torch intra-op threads); None keeps torch's current
    count. ``runner`` prepares the timed call (default :func:`eager_runner`); ``backend`` is its name
    in the result. :func:`prunelab.export.backends.measure_backend` passes the runners of other
    back-ends. ``max_time_s`` bounds the timed rounds (see :func:`~prunelab.measure.timing.time_interleaved`).
    The model's device and train/eval mode are restored afterwards.
    """
    check_batch_size(batch_size)
    check_threads(threads)
    if runner is None and backend != "eager":
        raise PrunelabError(f"unknown backend {backend!r} for eager timing; valid choices: eager "
                            "(other back-ends: prunelab.export.backends)")
    device = check_device(device)
    check_timing(warmup, repeats, min_time_s)
    with fixed_threads(threads) as n_threads, prepared(model, device):
        x = example_input(input_shape, batch_size, device, dtype=input_dtype(model))
        call = (runner or eager_runner)(model, x, n_threads, device)
        trial_call(call, input_shape, batch_size)
        with PeakMemory(device) as memory:
            samples = time_interleaved({"model": call}, device=device, warmup=warmup, repeats=repeats,
                                       min_time_s=min_time_s, max_time_s=max_time_s)["model"]
    stats = summarize(samples)
    return LatencyResult(median_ms=stats["median_ms"], p90_ms=stats["p90_ms"], mean_ms=stats["mean_ms"],
                         std_ms=stats["std_ms"], repeats=len(samples), batch_size=batch_size, threads=n_threads,
                         device=device, backend=backend, peak_memory_mb=memory.mb, iqr_ms=stats["iqr_ms"])


def latency_of(model: nn.Module, input_shape: InputSpec | Sequence[int], batch_size: int = 1,
               threads: int | None = None, device: str = "cpu", *, repeats: int = 20, min_time_s: float = 0.2) -> float:
    """Median latency in ms of one forward pass of ``model`` (eager PyTorch) on the current device.

    The measurement behind latency targets (``--target-latency-ms``) in structured pruning and
    reduced-network search: measured, not estimated from MACs. Fewer repeats than
    :func:`measure_latency` by default, because a search calls it many times.
    """
    return measure_latency(model, input_shape, batch_size=batch_size, threads=threads, device=device,
                           warmup=max(3, repeats // 4), repeats=repeats, min_time_s=min_time_s).median_ms


def round_channels(n: float, multiple: int = 8, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """Round a channel count to the nearest multiple of ``multiple`` (hardware-friendly widths).

    Vector units and GEMM tiles work on blocks of 8 or 16 channels, so a layer of 61 channels runs
    about as fast as one of 64 (Torch-Pruning's ``round_to``). The result is at least ``minimum``
    (default: ``multiple``) and at most ``maximum`` (e.g. the unpruned width, which need not be a
    multiple itself). Rounding is half-up: 60 -> 64 with ``multiple=8``.
    """
    if multiple < 1:
        raise PrunelabError(f"channel multiple {multiple} must be >= 1")
    if n <= 0:
        raise PrunelabError(f"channel count {n} must be positive")
    floor = multiple if minimum is None else minimum
    rounded = max(floor, int(math.floor(n / multiple + 0.5)) * multiple)
    if maximum is not None:
        rounded = min(rounded, maximum)
    return int(rounded)


# ---------------------------------------------------------------------------------------------
# tables


def format_table(results: Iterable[LatencyResult], title: str | None = None) -> str:
    """A plain-text table of latency results (medians first; ms per batch and per sample).

    ``peak +MB`` is the memory rise over the level before the measurement (see the module docstring).
    A ``model`` column comes first when the results name their models (a comparison).
    """
    results = list(results)
    named = any(r.model for r in results)
    header = ("backend", "device", "threads", "batch", "median ms", "IQR ms", "p90 ms", "ms/sample", "samples/s",
              "peak +MB")
    rows = [header]
    for r in results:
        mem = "-" if r.peak_memory_mb is None else f"{r.peak_memory_mb:.1f}"
        iqr = "-" if r.iqr_ms is None else f"{r.iqr_ms:.3f}"
        rows.append((r.backend, r.device, str(r.threads), str(r.batch_size), f"{r.median_ms:.3f}", iqr,
                     f"{r.p90_ms:.3f}", f"{r.per_sample_ms:.4f}", f"{r.throughput:.1f}", mem))
    if named:
        rows = [("model", *rows[0])] + [(r.model or "-", *row) for r, row in zip(results, rows[1:])]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if named and i == 0 else cell.rjust(w) for i, (cell, w) in
                       enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if title:
        lines.insert(0, title)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# reduced vs pruned (Crowley et al. 2018)


@dataclass
class Candidate:
    """A model in a latency comparison, with its parameter count, accuracy and group (for plots)."""

    model: nn.Module
    params: int | None = None
    acc: float | None = None
    group: str | None = None


def _as_candidate(value: Any) -> Candidate:
    if isinstance(value, Candidate):
        return value
    if isinstance(value, nn.Module):
        return Candidate(value)
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], nn.Module) and len(value) <= 4:
        return Candidate(*value)
    raise PrunelabError("each model to compare must be an nn.Module, a Candidate, or (model, params, acc[, group])")


def compare_latency(models: Mapping[str, Any], input_shape: InputSpec | Sequence[int], *,
                    batch_sizes: Iterable[int] = (1,), threads: int | None = None, device: str = "cpu",
                    warmup: int = 5, repeats: int = 30, min_time_s: float = 0.0) -> list[dict[str, Any]]:
    """Time several models side by side (interleaved) and return one row per model and batch size.

    ``models`` maps a name to a :class:`Candidate` or ``(model, params, acc[, group])``; a missing
    parameter count is the model's number of parameters. This is the timing of Crowley et al.
    (2018, sec. 5): reduced networks and pruned networks of matched parameter counts on one device.
    Rows: name, group, params, acc, batch_size, threads, device, median_ms, p90_ms, mean_ms, std_ms,
    repeats.
    """
    candidates = {name: _as_candidate(value) for name, value in models.items()}
    batch_sizes = [check_batch_size(b) for b in batch_sizes]
    device = check_device(device)
    rows: list[dict[str, Any]] = []
    with fixed_threads(threads) as n_threads, contextlib.ExitStack() as stack:
        for cand in candidates.values():
            stack.enter_context(prepared(cand.model, device))
        dtype = input_dtype(next(iter(candidates.values())).model)  # one input, shared by every candidate
        for batch in batch_sizes:
            x = example_input(input_shape, batch, device, dtype=dtype)

            def runner(model: nn.Module, x=x) -> Callable[[], object]:
                def call() -> object:
                    with torch.inference_mode():
                        return call_model(model, x)
                return call

            samples = time_interleaved({name: runner(c.model) for name, c in candidates.items()}, device=device,
                                       warmup=warmup, repeats=repeats, min_time_s=min_time_s)
            for name, cand in candidates.items():
                params = cand.params if cand.params is not None else sum(p.numel() for p in cand.model.parameters())
                rows.append({"name": name, "group": cand.group, "params": int(params), "acc": cand.acc,
                             "batch_size": batch, "threads": n_threads, "device": device,
                             **summarize(samples[name]), "repeats": len(samples[name])})
    return rows
