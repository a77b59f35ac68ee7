"""Latency sweeps over models x back-ends x thread counts x batch sizes, interleaved and bounded.

A comparison is only honest when its candidates run under the same conditions, so every
configuration that shares a thread count and a batch size (each model on each back-end) is timed
call by call in rotating order (:func:`prunelab.measure.timing.time_interleaved`): a busy or
throttling machine slows all of them alike, and their ratio holds up where one-after-the-other
timings drift (measured on a shared 2-core machine: 7.2x one after the other, 1.23x interleaved, for
the same pair of models). Each result carries the median and the interquartile range; a spread over
10% of the median, or a load average that leaves fewer idle CPUs than the measurement uses, is
reported as a warning. Each configuration is bounded in time (``max_time_s`` per configuration,
warm-up included), and ``progress`` hears of every step.

``torch.utils.benchmark.Timer`` was considered: it times one statement at a time (its
``blocked_autorange`` adapts the block size to the statement), so interleaving several candidates
call by call would still have to be written around it; prunelab's own loop does that directly, with
the same ``perf_counter`` / CUDA-event clocks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.export.backends import get_backend
from prunelab.measure.latency import LatencyResult
from prunelab.measure.timing import (
    PeakMemory,
    busy_warning,
    check_batch_size,
    check_device,
    check_threads,
    check_timing,
    example_input,
    fixed_threads,
    input_dtype,
    prepared,
    spread_warning,
    summarize,
    time_interleaved,
    trial_call,
)
from prunelab.models.inputs import as_input_spec

#: default bound on the seconds one configuration (model x back-end x threads x batch) may take
DEFAULT_MAX_TIME_S = 10.0
#: the largest bound accepted
MAX_TIME_LIMIT_S = 600.0


@dataclass
class Prepared:
    """A model ready to time on one back-end: a model to hand to the back-end, or a ready ``call(x)``."""

    name: str
    model: nn.Module | None = None
    call: Callable[[torch.Tensor], object] | None = None


def check_max_time(max_time_s: float, min_time_s: float) -> float:
    """``0 < max_time_s <= MAX_TIME_LIMIT_S`` and not below ``min_time_s``."""
    if not 0 < max_time_s <= MAX_TIME_LIMIT_S:
        raise PrunelabError(f"maximum time per configuration {max_time_s} must be between 0 and "
                            f"{MAX_TIME_LIMIT_S:g} seconds")
    if min_time_s > max_time_s:
        raise PrunelabError(f"minimum time {min_time_s} s exceeds the maximum time per configuration {max_time_s} s")
    return float(max_time_s)


def bench_compare(models: Mapping[str, nn.Module | Prepared], input_shape: Sequence[int], *,
                  batch_sizes: Iterable[int] = (1,), threads: Iterable[int | None] = (None,),
                  backends: Iterable[str] = ("eager",), device: str = "cpu", warmup: int = 10, repeats: int = 50,
                  min_time_s: float = 0.5, max_time_s: float = DEFAULT_MAX_TIME_S,
                  progress: Callable[[str], None] | None = None) -> tuple[list[LatencyResult], list[str]]:
    """Time every model on every back-end, interleaved per (threads, batch size); return results and warnings.

    ``models`` maps a name to a module or to a :class:`Prepared` call (e.g. a loaded deploy artefact,
    timed as back-end ``deploy``). Everything is validated before anything is timed. Results are
    ordered model, back-end, threads, batch size.
    """
    batch_sizes = [check_batch_size(b) for b in batch_sizes]
    threads = [check_threads(t) for t in threads] or [None]
    backends = list(backends)
    chosen = {name: get_backend(name) for name in backends}
    device = check_device(device)
    check_timing(warmup, repeats, min_time_s)
    check_max_time(max_time_s, min_time_s)
    items = {name: value if isinstance(value, Prepared) else Prepared(name, model=value)
             for name, value in models.items()}
    if not items:
        raise PrunelabError("no models to benchmark")
    say = progress or (lambda _msg: None)
    warnings_out: list[str] = []
    results: list[LatencyResult] = []
    groups = [(t, b) for t in threads for b in batch_sizes]
    with contextlib.ExitStack() as stack:
        for item in items.values():
            if item.model is not None:  # eval mode on the device; both restored afterwards
                stack.enter_context(prepared(item.model, device))
        for g, (n_threads, batch) in enumerate(groups, 1):
            _time_group(items, backends, chosen, input_shape, g, len(groups), n_threads, batch, device, warmup,
                        repeats, min_time_s, max_time_s, say, results, warnings_out)
    order = {name: i for i, name in enumerate(items)}
    border = {name: i for i, name in enumerate([*backends, "deploy"])}
    torder = {t: i for i, t in enumerate(dict.fromkeys(r.threads for r in results))}
    results.sort(key=lambda r: (order[r.model], border[r.backend], torder[r.threads], batch_sizes.index(r.batch_size)))
    return results, warnings_out


def _time_group(items, backends, chosen, input_shape, g, groups, n_threads, batch, device, warmup, repeats,
                min_time_s, max_time_s, say, results, warnings_out) -> None:
    """Prepare and time, interleaved, every configuration at one thread count and batch size."""
    with fixed_threads(n_threads) as used:
        busy = busy_warning(used)
        if busy and not any(w.startswith("the machine is busy") for w in warnings_out):
            warnings_out.append(busy)
        calls: dict[tuple[str, str], Callable[[], object]] = {}
        for name, item in items.items():
            names = ["deploy"] if item.call is not None else backends
            for backend in names:
                say(f"[{g}/{groups}] threads {used}, batch {batch}: preparing {name} on {backend}")
                calls[(name, backend)] = _prepare(item, chosen.get(backend), backend, input_shape, batch, used,
                                                  device)
        budget = max_time_s * len(calls)
        say(f"[{g}/{groups}] threads {used}, batch {batch}: timing {len(calls)} configuration(s) "
            f"interleaved (at most {budget:.0f} s)")
        with PeakMemory(device) as memory:
            timed = time_interleaved({_key(n, b): c for (n, b), c in calls.items()}, device=device,
                                       warmup=warmup, repeats=repeats, min_time_s=min_time_s * len(calls),
                                       max_time_s=budget)
        for (name, backend) in calls:
            samples = timed[_key(name, backend)]
            stats = summarize(samples)
            results.append(LatencyResult(
                median_ms=stats["median_ms"], p90_ms=stats["p90_ms"], mean_ms=stats["mean_ms"],
                std_ms=stats["std_ms"], repeats=len(samples), batch_size=batch,
                threads=used, device=device, backend=backend, iqr_ms=stats["iqr_ms"],
                peak_memory_mb=memory.mb if len(calls) == 1 else None, model=name))
            label = f"{name} on {backend}, threads {used}, batch {batch}"
            spread = spread_warning(label, stats)
            if spread:
                warnings_out.append(spread)
            if len(samples) < repeats:
                warnings_out.append(f"{label}: stopped at {len(samples)} of "
                                    f"{repeats} timed calls by the {max_time_s:g} s bound per configuration")


def _key(name: str, backend: str) -> str:
    return f"{name} / {backend}"


def _prepare(item: Prepared, backend, backend_name: str, input_shape: Sequence[int], batch: int, threads: int,
             device: str) -> Callable[[], object]:
    if item.call is not None:
        x = example_input(input_shape, batch, device)
        call = item.call

        def run() -> object:
            return call(x)
        trial_call(run, input_shape, batch)
        return run
    model = item.model
    x = example_input(input_shape, batch, device, dtype=input_dtype(model))
    spec = as_input_spec(input_shape)
    call = backend.prepare(model, spec.shape if spec.is_plain else spec, x, threads, device)
    trial_call(call, input_shape, batch)
    return call


def bench(model: nn.Module, input_shape: Sequence[int], batch_sizes: Iterable[int] = (1, 8, 64),
          threads: Iterable[int | None] = (None,), backends: Iterable[str] = ("eager",), *, device: str = "cpu",
          warmup: int = 10, repeats: int = 50, min_time_s: float = 0.5,
          max_time_s: float = DEFAULT_MAX_TIME_S) -> list[LatencyResult]:
    """One model over back-ends x thread counts x batch sizes (see :func:`bench_compare`)."""
    results, _ = bench_compare({"model": model}, input_shape, batch_sizes=batch_sizes, threads=threads,
                               backends=backends, device=device, warmup=warmup, repeats=repeats,
                               min_time_s=min_time_s, max_time_s=max_time_s)
    for r in results:
        r.model = None
    return results
