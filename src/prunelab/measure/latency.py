"""Measured inference latency: the honest answer to "is the pruned model actually faster?".

MACs are not latency (Torch-Pruning's ResNet-50 sweep: 3.85x fewer MACs gave 2.19x lower latency),
and masked unstructured sparsity gives no speed-up on dense kernels, so prunelab times real forward
passes on the current device:

* CPU: a fixed thread count (``torch.set_num_threads``, or ONNX Runtime's intra-op threads), set for
  the measurement and restored afterwards; wall-clock time per call with ``time.perf_counter``.
* CUDA: CUDA events around each call, with synchronisation before and after.
* warm-up calls first, then at least ``repeats`` timed calls and at least ``min_time_s`` seconds;
  the median is the headline figure (p90, mean and standard deviation are reported too).
* peak memory: on CUDA ``torch.cuda.max_memory_allocated`` over the timed calls; on CPU the rise of
  the process's peak resident set (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``) over the
  resident set before the warm-up. The CPU figure is process-wide and a lower bound when memory freed
  by an earlier measurement in the same process is reused; it is ``None`` where Linux's counters are
  not available. ``tracemalloc`` is not used: it does not see PyTorch's allocations.

Comparisons between models are taken with :func:`time_interleaved`, which alternates the candidates
call by call so that a shared or throttling machine slows all of them alike.

Latency as a pruning target: :func:`latency_of` (one number, the median in ms) is what iterative
structured pruning (``--target-latency-ms``) and reduced-network search call after each candidate;
:func:`round_channels` gives hardware-friendly widths (multiples of 8 or 16).

The Crowley et al. (2018, sec. 5) comparison of reduced and pruned networks at matched parameter
counts is :func:`compare_latency` (timing) plus :func:`plot_latency` (latency vs parameters and
latency vs accuracy).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from prunelab.errors import PrunelabError, check_choice

BACKENDS = ("eager", "onnxruntime")


@dataclass
class LatencyResult:
    """One latency measurement: a model, a batch size, a thread count, a device, a back-end.

    Times are per forward call of the whole batch, in milliseconds. ``peak_memory_mb`` follows the
    convention in the module docstring (CUDA allocator peak; CPU peak resident-set rise; or None).
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

    @property
    def per_sample_ms(self) -> float:
        return self.median_ms / self.batch_size

    @property
    def throughput(self) -> float:
        """Samples per second at the median latency."""
        return 1000.0 * self.batch_size / self.median_ms if self.median_ms > 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# validation


def check_device_name(device: str | torch.device) -> str:
    """Return ``device`` as a string if it names a device latency can be measured on (cpu, cuda,
    cuda:N), else raise a one-line error; whether it is present here is :func:`check_device`'s question."""
    name = str(device)
    if name == "cpu" or re.fullmatch(r"cuda(:\d+)?", name):
        return name
    raise PrunelabError(f"unknown device {name!r}; valid choices: cpu, cuda, cuda:N")


def check_device(device: str | torch.device) -> str:
    """Return ``device`` as a string if it can be used here, else raise a one-line error."""
    name = check_device_name(device)
    if name == "cpu":
        return name
    if not torch.cuda.is_available():  # cuda or cuda:N
        raise PrunelabError(f"device {name!r} requested but CUDA is not available here; valid choices: cpu")
    index = int(name.split(":")[1]) if ":" in name else 0
    if index >= torch.cuda.device_count():
        raise PrunelabError(f"device {name!r} does not exist; this machine has {torch.cuda.device_count()} GPU(s)")
    return name


def check_threads(threads: int | None) -> int | None:
    """A thread count must be between 1 and the machine's CPU count (``os.cpu_count()``)."""
    if threads is None:
        return None
    cpus = os.cpu_count() or 1
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= cpus:
        raise PrunelabError(f"thread count {threads!r} is not available; valid: 1 to {cpus} (this machine's CPUs)")
    return threads


def check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise PrunelabError(f"batch size {batch_size!r} must be a positive integer")
    return batch_size


def _check_timing(warmup: int, repeats: int, min_time_s: float) -> None:
    if warmup < 0:
        raise PrunelabError(f"warm-up count {warmup} must be >= 0")
    if repeats < 1:
        raise PrunelabError(f"repeat count {repeats} must be >= 1")
    if not min_time_s >= 0 or math.isinf(min_time_s):  # also refuses nan
        raise PrunelabError(f"minimum time {min_time_s} must be a finite number >= 0 seconds")


# ---------------------------------------------------------------------------------------------
# threads and memory


@contextlib.contextmanager
def fixed_threads(threads: int | None) -> Iterator[int]:
    """Run the block with ``torch.set_num_threads(threads)`` and restore the previous count after.

    Yields the thread count in force (the current one when ``threads`` is None).
    """
    check_threads(threads)
    previous = torch.get_num_threads()
    if threads is not None and threads != previous:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


def _proc_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            match = re.search(rf"^{field}:\s+(\d+)\s+kB", fh.read(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


class _PeakMemory:
    """Peak memory over a block: CUDA allocator peak, or the rise of the process's peak RSS (Linux)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.mb: float | None = None

    def __enter__(self) -> _PeakMemory:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        self._base = _proc_status_kb("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # reset VmHWM to the current RSS (Linux >= 4.0)
            self._reset = True
        except OSError:
            self._reset = False
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)
            self.mb = max(0, torch.cuda.max_memory_allocated(self.device) - self._base) / 2**20
            return
        peak = _proc_status_kb("VmHWM")
        if self._reset and peak is not None and self._base is not None:
            self.mb = max(0, peak - self._base) / 1024


# ---------------------------------------------------------------------------------------------
# timing


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _time_call(fn: Callable[[], object], device: str) -> float:
    """One call of ``fn`` in milliseconds (CUDA events on a GPU, perf_counter on CPU)."""
    if device.startswith("cuda"):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000.0


def time_interleaved(fns: Mapping[str, Callable[[], object]], *, device: str = "cpu", warmup: int = 5,
                     repeats: int = 30, min_time_s: float = 0.0,
                     max_repeats: int | None = None) -> dict[str, list[float]]:
    """Time several callables call by call in rotating order; return each one's samples in ms.

    Every round calls each candidate once, starting from a different candidate each round, so a
    machine that is shared or changes clock speed affects all candidates alike. Rounds continue until
    ``repeats`` rounds are done and the candidates together ran ``min_time_s`` seconds (at most
    ``max_repeats`` rounds when given).
    """
    _check_timing(warmup, repeats, min_time_s)
    names = list(fns)
    if not names:
        return {}
    device = check_device(device)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    _sync(device)
    samples: dict[str, list[float]] = {name: [] for name in names}
    limit = max(repeats, max_repeats) if max_repeats is not None else None
    total_ms = 0.0
    rounds = 0
    while (limit is None or rounds < limit) and (rounds < repeats or total_ms < 1000.0 * min_time_s):
        for k in range(len(names)):
            name = names[(rounds + k) % len(names)]
            ms = _time_call(fns[name], device)
            samples[name].append(ms)
            total_ms += ms
        rounds += 1
    return samples


def _summary(samples: Sequence[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p90_index = min(len(ordered) - 1, max(0, math.ceil(0.9 * len(ordered)) - 1))
    return {
        "median_ms": float(statistics.median(ordered)),
        "p90_ms": float(ordered[p90_index]),
        "mean_ms": float(statistics.fmean(ordered)),
        "std_ms": float(statistics.pstdev(ordered)) if len(ordered) > 1 else 0.0,
    }


def example_input(input_shape: Sequence[int], batch_size: int, device: str = "cpu",
                  dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    """A fixed random batch ``(batch_size, *input_shape)`` (same seed, same tensor)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((batch_size, *tuple(input_shape)), generator=gen, dtype=dtype).to(device)


def input_dtype(model: nn.Module) -> torch.dtype:
    """The dtype a model's inputs should have: that of its first floating-point parameter or buffer
    (float32 for a model without any), so a ``.double()`` model is fed float64."""
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def _model_device(model: nn.Module) -> torch.device:
    for tensor in [*model.parameters(), *model.buffers()]:
        return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def _prepared(model: nn.Module, device: str) -> Iterator[nn.Module]:
    """The model in eval mode on ``device``; its mode and device are restored after the block."""
    was_training = model.training
    original = _model_device(model)
    moved = torch.device(device) != original
    model.eval()
    if moved:
        model.to(device)
    try:
        yield model
    finally:
        if moved:
            model.to(original)
        model.train(was_training)


def _ort_runner(onnx_bytes: bytes, x: torch.Tensor, threads: int, device: str) -> Callable[[], object]:
    from prunelab.export.onnx import ort_session

    session = ort_session(onnx_bytes, threads=threads, device=device)
    name = session.get_inputs()[0].name
    if device.startswith("cuda"):
        import onnxruntime as ort

        binding = session.io_binding()
        index = int(device.split(":")[1]) if ":" in device else 0
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(x.cpu().numpy(), "cuda", index))
        for out in session.get_outputs():
            binding.bind_output(out.name, "cuda", index)
        return lambda: session.run_with_iobinding(binding)
    feed = {name: x.detach().cpu().numpy()}
    return lambda: session.run(None, feed)


def _trial_call(call: Callable[[], object], input_shape: Sequence[int], batch_size: int) -> None:
    """One untimed call, so that an input the model cannot take is a one-line error, not a traceback."""
    try:
        call()
    except (RuntimeError, ValueError, IndexError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        shape = "x".join(str(d) for d in (batch_size, *input_shape))
        raise PrunelabError(f"the model cannot run on input of shape {shape}: {first}") from exc


def measure_latency(model: nn.Module, input_shape: Sequence[int], *, batch_size: int = 1,
                    threads: int | None = None, device: str = "cpu", backend: str = "eager",
                    warmup: int = 10, repeats: int = 50, min_time_s: float = 0.5,
                    onnx_bytes: bytes | None = None) -> LatencyResult:
    """Time forward passes of ``model`` on a random batch of shape ``(batch_size, *input_shape)``.

    ``threads``: CPU threads for the measurement (torch intra-op threads for ``eager``, ONNX Runtime
    intra-op threads for ``onnxruntime``); None keeps torch's current count and uses the same count
    for ONNX Runtime, so the two back-ends are compared on equal terms. ``backend="onnxruntime"``
    exports the model (see :func:`prunelab.export.to_onnx`) unless ``onnx_bytes`` is given.
    The model's device and train/eval mode are restored afterwards.
    """
    check_batch_size(batch_size)
    check_threads(threads)
    check_choice("backend", backend, BACKENDS)
    device = check_device(device)
    _check_timing(warmup, repeats, min_time_s)
    with fixed_threads(threads) as n_threads, _prepared(model, device):
        x = example_input(input_shape, batch_size, device, dtype=input_dtype(model))
        if backend == "eager":
            def call() -> object:
                with torch.inference_mode():
                    return model(x)
        else:
            if onnx_bytes is None:
                from prunelab.export.onnx import onnx_bytes_of

                onnx_bytes = onnx_bytes_of(model, input_shape, dynamic_batch=True)
            call = _ort_runner(onnx_bytes, x, n_threads, device)
        _trial_call(call, input_shape, batch_size)
        with _PeakMemory(device) as memory:
            samples = time_interleaved({"model": call}, device=device, warmup=warmup, repeats=repeats,
                                       min_time_s=min_time_s)["model"]
    return LatencyResult(**_summary(samples), repeats=len(samples), batch_size=batch_size, threads=n_threads,
                         device=device, backend=backend, peak_memory_mb=memory.mb)


def latency_of(model: nn.Module, input_shape: Sequence[int], batch_size: int = 1, threads: int | None = None,
               device: str = "cpu", *, repeats: int = 20, min_time_s: float = 0.2) -> float:
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
# sweeps and tables


def bench(model: nn.Module, input_shape: Sequence[int], batch_sizes: Iterable[int] = (1, 8, 64),
          threads: Iterable[int | None] = (None,), backends: Iterable[str] = ("eager",), *, device: str = "cpu",
          warmup: int = 10, repeats: int = 50, min_time_s: float = 0.5) -> list[LatencyResult]:
    """:func:`measure_latency` over back-ends x thread counts x batch sizes (all validated first).

    The model is exported to ONNX once (dynamic batch) when ``onnxruntime`` is among the back-ends.
    """
    batch_sizes = [check_batch_size(b) for b in batch_sizes]
    threads = [check_threads(t) for t in threads] or [None]
    backends = [check_choice("backend", b, BACKENDS) for b in backends]
    device = check_device(device)
    _check_timing(warmup, repeats, min_time_s)
    onnx_model = None
    if "onnxruntime" in backends:
        from prunelab.export.onnx import onnx_bytes_of

        onnx_model = onnx_bytes_of(model, input_shape, dynamic_batch=True)
    results = []
    for backend in backends:
        for n_threads in threads:
            for batch in batch_sizes:
                results.append(measure_latency(model, input_shape, batch_size=batch, threads=n_threads,
                                               device=device, backend=backend, warmup=warmup, repeats=repeats,
                                               min_time_s=min_time_s, onnx_bytes=onnx_model))
    return results


def format_table(results: Iterable[LatencyResult], title: str | None = None) -> str:
    """A plain-text table of latency results (medians first; ms per batch and per sample).

    ``peak +MB`` is the memory rise over the level before the measurement (see the module docstring).
    """
    header = ("backend", "device", "threads", "batch", "median ms", "p90 ms", "ms/sample", "samples/s",
              "peak +MB")
    rows = [header]
    for r in results:
        mem = "-" if r.peak_memory_mb is None else f"{r.peak_memory_mb:.1f}"
        rows.append((r.backend, r.device, str(r.threads), str(r.batch_size), f"{r.median_ms:.3f}",
                     f"{r.p90_ms:.3f}", f"{r.per_sample_ms:.4f}", f"{r.throughput:.1f}", mem))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows]
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


def compare_latency(models: Mapping[str, Any], input_shape: Sequence[int], *, batch_sizes: Iterable[int] = (1,),
                    threads: int | None = None, device: str = "cpu", warmup: int = 5, repeats: int = 30,
                    min_time_s: float = 0.0) -> list[dict[str, Any]]:
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
            stack.enter_context(_prepared(cand.model, device))
        dtype = input_dtype(next(iter(candidates.values())).model)  # one input, shared by every candidate
        for batch in batch_sizes:
            x = example_input(input_shape, batch, device, dtype=dtype)

            def runner(model: nn.Module, x: torch.Tensor = x) -> Callable[[], object]:
                def call() -> object:
                    with torch.inference_mode():
                        return model(x)
                return call

            samples = time_interleaved({name: runner(c.model) for name, c in candidates.items()}, device=device,
                                       warmup=warmup, repeats=repeats, min_time_s=min_time_s)
            for name, cand in candidates.items():
                params = cand.params if cand.params is not None else sum(p.numel() for p in cand.model.parameters())
                rows.append({"name": name, "group": cand.group, "params": int(params), "acc": cand.acc,
                             "batch_size": batch, "threads": n_threads, "device": device,
                             **_summary(samples[name]), "repeats": len(samples[name])})
    return rows


def plot_latency(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, *, batch_size: int | None = None,
                 title: str | None = None) -> str:
    """Write latency vs parameters and accuracy vs latency (two panels) for rows of :func:`compare_latency`.

    One series per ``group`` (e.g. "reduced" and "pruned"), points sorted by parameter count; the
    accuracy panel is left out when no row has an accuracy. Rows of a study's results table work
    too: ``latency_ms`` stands in for ``median_ms`` and a missing ``batch_size`` means batch 1.
    Returns the path written (atomically).
    """
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from prunelab.io import atomic_write_bytes

    def latency(r: Mapping[str, Any]) -> float | None:
        value = r.get("median_ms", r.get("latency_ms"))
        return None if value is None or value != value else float(value)

    rows = [{**r, "median_ms": latency(r), "batch_size": int(r.get("batch_size") or 1)} for r in rows]
    rows = [r for r in rows if r["median_ms"] is not None and r.get("params") is not None]
    if batch_size is None and rows:
        batch_size = min(r["batch_size"] for r in rows)
    chosen = [r for r in rows if r["batch_size"] == batch_size]
    if not chosen:
        raise PrunelabError(f"no latency rows at batch size {batch_size} to plot")
    with_acc = [r for r in chosen if r.get("acc") is not None and r["acc"] == r["acc"]]
    panels = 2 if with_acc else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4), squeeze=False)
    groups = sorted({str(r.get("group") or "models") for r in chosen})
    for group in groups:
        series = sorted((r for r in chosen if str(r.get("group") or "models") == group), key=lambda r: r["params"])
        axes[0][0].plot([r["params"] for r in series], [r["median_ms"] for r in series], "o-", label=group)
        if with_acc:
            pts = sorted((r for r in series if r.get("acc") is not None and r["acc"] == r["acc"]),
                         key=lambda r: r["median_ms"])
            axes[0][1].plot([r["median_ms"] for r in pts], [r["acc"] for r in pts], "o-", label=group)
    device = chosen[0].get("device") or "this device"
    threads = chosen[0].get("threads")
    axes[0][0].set_xlabel("parameters")
    axes[0][0].set_ylabel(f"median latency (ms), batch {batch_size}")
    axes[0][0].set_title(f"latency vs parameters ({device}" + (f", {threads} threads)" if threads else ")"))
    axes[0][0].legend()
    if with_acc:
        axes[0][1].set_xlabel(f"median latency (ms), batch {batch_size}")
        axes[0][1].set_ylabel("accuracy")
        axes[0][1].set_title("accuracy vs latency")
        axes[0][1].legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    suffix = os.fspath(path).rsplit(".", 1)[-1].lower()
    fig.savefig(buf, format=suffix if suffix in ("png", "pdf", "svg") else "png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return os.fspath(path)
