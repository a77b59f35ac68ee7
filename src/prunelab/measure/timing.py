"""Timing primitives: the leaf every latency figure in prunelab is built on.

No ONNX Runtime, no plotting, no model zoo: fixed thread counts, peak memory, one timed call, and
:func:`time_interleaved`, which alternates the candidates of a comparison call by call so that a
shared or throttling machine slows all of them alike. :func:`summarize` turns samples into the
median (the headline), the interquartile range (the spread; robust to the rare slow call a busy
machine adds), p90, mean and standard deviation. :func:`machine_load` reads the load average, so a
report can say when the machine was busy.

Conventions:

* CPU: a fixed thread count (``torch.set_num_threads``), set for the measurement and restored
  afterwards; wall-clock time per call with ``time.perf_counter``.
* CUDA: CUDA events around each call, with synchronisation before and after.
* peak memory: on CUDA ``torch.cuda.max_memory_allocated`` over the timed calls; on CPU the rise of
  the process's peak resident set (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``) over the
  resident set before the warm-up. The CPU figure is process-wide and a lower bound when memory freed
  by an earlier measurement in the same process is reused; it is ``None`` where Linux's counters are
  not available. ``tracemalloc`` is not used: it does not see PyTorch's allocations.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from prunelab.devices import check_device_name
from prunelab.errors import PrunelabError
from prunelab.models.inputs import InputSpec, as_input_spec

#: the most timed rounds and the most seconds a caller may ask one measurement for
MAX_REPEATS = 100_000
MAX_TIME_S = 3600.0


# ---------------------------------------------------------------------------------------------
# validation


def check_device(device: str | torch.device) -> str:
    """Return ``device`` as a string if it can be used here, else raise a one-line error."""
    name = check_device_name(device, timing=True)
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


def check_timing(warmup: int, repeats: int, min_time_s: float) -> None:
    """Warm-up >= 0, repeats in 1..MAX_REPEATS, a minimum time in 0..MAX_TIME_S seconds."""
    if warmup < 0:
        raise PrunelabError(f"warm-up count {warmup} must be >= 0")
    if not 1 <= repeats <= MAX_REPEATS:
        raise PrunelabError(f"repeat count {repeats} must be between 1 and {MAX_REPEATS}")
    if not 0 <= min_time_s <= MAX_TIME_S:  # also refuses nan and inf
        raise PrunelabError(f"minimum time {min_time_s} must be between 0 and {MAX_TIME_S:g} seconds")


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


class PeakMemory:
    """Peak memory over a block: CUDA allocator peak, or the rise of the process's peak RSS (Linux)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.mb: float | None = None

    def __enter__(self) -> PeakMemory:
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


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: str) -> float:
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
                     repeats: int = 30, min_time_s: float = 0.0, max_repeats: int | None = None,
                     max_time_s: float | None = None) -> dict[str, list[float]]:
    """Time several callables call by call in rotating order; return each one's samples in ms.

    Every round calls each candidate once, starting from a different candidate each round, so a
    machine that is shared or changes clock speed affects all candidates alike. Rounds continue until
    ``repeats`` rounds are done and the candidates together ran ``min_time_s`` seconds, but stop
    after ``max_repeats`` rounds and, after the first round, once ``max_time_s`` seconds of wall
    clock (warm-up included) have passed: a bound on how long a comparison can take.
    """
    check_timing(warmup, repeats, min_time_s)
    if max_time_s is not None and not 0 < max_time_s <= MAX_TIME_S:
        raise PrunelabError(f"maximum time {max_time_s} must be between 0 and {MAX_TIME_S:g} seconds")
    names = list(fns)
    if not names:
        return {}
    device = check_device(device)
    start = time.perf_counter()
    deadline = math.inf if max_time_s is None else start + max_time_s
    for _ in range(warmup):
        if time.perf_counter() > deadline:
            break
        for name in names:
            fns[name]()
    sync(device)
    samples: dict[str, list[float]] = {name: [] for name in names}
    limit = max(repeats, max_repeats) if max_repeats is not None else None
    total_ms = 0.0
    rounds = 0
    while (limit is None or rounds < limit) and (rounds < repeats or total_ms < 1000.0 * min_time_s):
        if rounds and time.perf_counter() > deadline:
            break
        for k in range(len(names)):
            name = names[(rounds + k) % len(names)]
            ms = time_call(fns[name], device)
            samples[name].append(ms)
            total_ms += ms
        rounds += 1
    return samples


def quantile(ordered: Sequence[float], q: float) -> float:
    """The ``q`` quantile of sorted samples, linearly interpolated (numpy's default, ``method="linear"``)."""
    if not ordered:
        raise PrunelabError("no samples to summarise")
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return float(ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo))


def summarize(samples: Sequence[float]) -> dict[str, float]:
    """Median, interquartile range (q75 - q25), p90 (nearest rank), mean and standard deviation in ms."""
    ordered = sorted(samples)
    p90_index = min(len(ordered) - 1, max(0, math.ceil(0.9 * len(ordered)) - 1))
    return {
        "median_ms": float(statistics.median(ordered)),
        "iqr_ms": quantile(ordered, 0.75) - quantile(ordered, 0.25),
        "p90_ms": float(ordered[p90_index]),
        "mean_ms": float(statistics.fmean(ordered)),
        "std_ms": float(statistics.pstdev(ordered)) if len(ordered) > 1 else 0.0,
    }


#: a spread (IQR / median) above this is reported as unreliable
NOISY_SPREAD = 0.10


def machine_load() -> tuple[float, int] | None:
    """(1-minute load average, CPU count), or None where the OS has no load average."""
    try:
        return os.getloadavg()[0], os.cpu_count() or 1
    except (AttributeError, OSError):
        return None


def busy_warning(threads: int | None) -> str | None:
    """A warning when other work competes for the CPUs: the load average leaves fewer idle CPUs
    than the measurement's threads (this process's own load counts, so at most one is allowed for it)."""
    load = machine_load()
    if load is None:
        return None
    avg, cpus = load
    wanted = threads or torch.get_num_threads()
    if avg > max(1.0, cpus - wanted) + 0.5:
        return (f"the machine is busy (load average {avg:.1f} on {cpus} CPUs, {wanted} thread(s) measured): "
                "timings are noisy; ratios of interleaved runs hold up better than absolute times")
    return None


def spread_warning(name: str, stats: Mapping[str, float]) -> str | None:
    """A warning when a measurement's IQR exceeds :data:`NOISY_SPREAD` of its median."""
    median, iqr = stats["median_ms"], stats["iqr_ms"]
    if median > 0 and iqr / median > NOISY_SPREAD:
        return f"{name}: large spread (IQR {iqr:.3g} ms is {100 * iqr / median:.0f}% of the median {median:.3g} ms)"
    return None


def example_input(input_shape: InputSpec | Sequence[int], batch_size: int, device: str = "cpu",
                  dtype: torch.dtype = torch.float32, seed: int = 0):
    """A fixed random batch ``(batch_size, *input_shape)`` (same seed, same tensor); for an
    :class:`~prunelab.models.inputs.InputSpec` of token ids, tuples or dicts, its example inputs
    (``dtype`` applies to the float tensors)."""
    spec = as_input_spec(input_shape)
    if not spec.is_plain:
        return spec.example(batch_size, seed=seed, device=device, dtype=dtype)
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((batch_size, *spec.shape), generator=gen, dtype=dtype).to(device)


def input_dtype(model: nn.Module) -> torch.dtype:
    """The dtype a model's inputs should have: that of its first floating-point parameter or buffer
    (float32 for a model without any), so a ``.double()`` model is fed float64."""
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def model_device(model: nn.Module) -> torch.device:
    for tensor in [*model.parameters(), *model.buffers()]:
        return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def prepared(model: nn.Module, device: str) -> Iterator[nn.Module]:
    """The model in eval mode on ``device``; its mode and device are restored after the block."""
    was_training = model.training
    original = model_device(model)
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


def trial_call(call: Callable[[], object], input_shape: InputSpec | Sequence[int], batch_size: int) -> None:
    """One untimed call, so that an input the model cannot take is a one-line error, not a traceback."""
    try:
        call()
    except (RuntimeError, ValueError, IndexError, TypeError) as exc:
        if isinstance(exc, PrunelabError):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        spec = as_input_spec(input_shape)
        if spec.is_plain:
            what = "of shape " + "x".join(str(d) for d in (batch_size, *spec.shape))
        else:
            what = f"{spec.describe()} (batch {batch_size})"
        raise PrunelabError(f"the model cannot run on input {what}: {first}") from exc


