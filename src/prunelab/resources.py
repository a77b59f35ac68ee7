"""What an input may claim: memory estimated before it is allocated, checked against this machine.

A number in a file or on the command line (a width in a checkpoint's architecture, a class count, an
input size, a sample count) can ask for more memory than the machine has. Before such an allocation,
the caller estimates its size and :func:`check_claim` refuses what exceeds the budget with one line
that gives the estimate, instead of a ``MemoryError``, an allocator traceback or the kernel's OOM
killer later.

The budget is the memory available now (``MemAvailable`` of ``/proc/meminfo`` plus free swap, lowered
to what a cgroup limit leaves), or ``PRUNELAB_MEMORY_LIMIT`` when set (bytes, or a number with K, M, G
or T, e.g. ``8G``). Where the platform says nothing, only that variable limits.

:func:`allocation_budget` applies the budget to code that builds tensors (a model constructor): every
tensor factory call (``torch.empty``, ``zeros``, ``ones``, ``full``, ``rand``...) is counted before it
runs, through a :class:`torch.overrides.TorchFunctionMode` (the mechanism behind
``with torch.device(...)``), and the first one that would take the running total past the budget is
refused before it allocates. Only host (CPU) allocations count: the ``meta`` device holds no storage
and an accelerator has memory of its own.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Iterator
from typing import Any

from prunelab.errors import PrunelabError

ENV_LIMIT = "PRUNELAB_MEMORY_LIMIT"
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_bytes(text: str) -> int:
    """``"8G"`` -> 8 GiB; plain numbers are bytes."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([KMGT]?)i?B?\s*", str(text), flags=re.IGNORECASE)
    if not m:
        raise PrunelabError(f"{ENV_LIMIT}={text!r} must be a size such as 8G, 512M or 1000000000")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def _meminfo() -> int | None:
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as fh:
        fields = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in fh if line.split()[1:]}
        if "MemAvailable" in fields:
            return fields["MemAvailable"] + fields.get("SwapFree", 0)
    with contextlib.suppress(AttributeError, ValueError, OSError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return None


def _cgroup_room() -> int | None:
    """What the cgroup (v2, else v1) memory limit still leaves, or None without one."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        with contextlib.suppress(OSError, ValueError):
            with open(limit_file) as fh:
                limit = fh.read().strip()
            if limit == "max" or int(limit) >= 1 << 60:
                return None
            with open(usage_file) as fh:
                return max(int(limit) - int(fh.read().strip()), 0)
    return None


def available_memory() -> int | None:
    """The memory budget in bytes (see module doc), or None when nothing is known."""
    override = os.environ.get(ENV_LIMIT)
    if override:
        return parse_bytes(override)
    known = [v for v in (_meminfo(), _cgroup_room()) if v is not None]
    return min(known) if known else None


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'; binary units, as memory is sold and reported."""
    if abs(n) >= 1 << 50:
        return f"{float(n):.3g} bytes"
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        scale = _UNITS[unit[0]]
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} bytes"


def check_claim(what: str, nbytes: float, detail: str = "") -> None:
    """Refuse ``what`` (e.g. ``"model wrn"``) when its estimated ``nbytes`` exceed the budget."""
    budget = available_memory()
    if budget is None or nbytes <= budget:
        return
    raise PrunelabError(f"{what} needs {human_bytes(nbytes)}{f' ({detail})' if detail else ''}, more than the "
                        f"{human_bytes(budget)} this machine has available (set {ENV_LIMIT} to change the limit)")


def tensor_bytes(shape: Any, itemsize: int = 4) -> int:
    """Bytes of a dense tensor of ``shape`` (a sequence of ints) with elements of ``itemsize`` bytes."""
    return math.prod(int(d) for d in shape) * int(itemsize)


def check_tensor(what: str, shape: Any, itemsize: int = 4) -> None:
    """:func:`check_claim` for one tensor: ``what`` names it (e.g. ``"an input batch 64x3x224x224"``)."""
    check_claim(what, tensor_bytes(shape, itemsize))


class AllocationRefused(PrunelabError):
    """A tensor factory call inside :func:`allocation_budget` would pass the budget. ``total`` is what
    had been asked for, that call included."""

    def __init__(self, total: int, budget: int) -> None:
        super().__init__(f"asked for {human_bytes(total)}, more than the {human_bytes(budget)} available")
        self.total = total
        self.budget = budget


_FACTORIES = frozenset({"empty", "zeros", "ones", "full", "rand", "randn", "randint", "normal", "empty_strided",
                        "eye", "tensor", "arange"})


def _size_arg(args: tuple, kwargs: dict, name: str) -> tuple[int, ...] | None:
    """The shape a factory call asks for, read from its arguments without building anything."""
    if name == "tensor" or name == "arange":
        return None
    if name == "randint":  # randint(high, size) or randint(low, high, size)
        size = kwargs.get("size", next((a for a in args if isinstance(a, tuple | list)), None))
    elif name == "full":
        size = kwargs.get("size", args[0] if args else None)
    elif name == "normal":
        size = kwargs.get("size", args[2] if len(args) > 2 else None)
    elif name == "eye":
        n = args[0] if args else kwargs.get("n", 0)
        m = args[1] if len(args) > 1 and isinstance(args[1], int) else kwargs.get("m", n)
        size = (n, m)
    else:
        size = kwargs.get("size", args[0] if len(args) == 1 and not isinstance(args[0], int) else args)
    if size is None:
        return None
    if isinstance(size, int):
        size = (size,)
    if not isinstance(size, tuple | list) or not all(isinstance(d, int) for d in size):
        return None  # not a shape torch takes: it raises its own error
    return tuple(size)


def _on_cpu(kwargs: dict) -> bool:
    """Whether a factory call allocates in host memory (the budget); ``meta`` costs nothing, and an
    accelerator's memory is its own."""
    import torch

    device = kwargs.get("device")
    try:
        return (torch.get_default_device() if device is None else torch.device(device)).type == "cpu"
    except (RuntimeError, TypeError, ValueError):
        return True


def _budget_mode(budget: int):
    import torch
    from torch.overrides import TorchFunctionMode

    class _Budget(TorchFunctionMode):
        total = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            name = getattr(func, "__name__", "")
            if name in _FACTORIES and func is getattr(torch, name, None) and _on_cpu(kwargs):
                shape = _size_arg(args, kwargs, name)
                if shape is not None:
                    dtype = kwargs.get("dtype") or (torch.int64 if name == "randint" else torch.get_default_dtype())
                    self.total += math.prod(max(d, 0) for d in shape) * getattr(dtype, "itemsize", 8)
                    if self.total > budget:
                        raise AllocationRefused(self.total, budget)
            return func(*args, **kwargs)

    return _Budget()


@contextlib.contextmanager
def allocation_budget(budget: int | None = None) -> Iterator[Any]:
    """Refuse, before it allocates, the tensor factory call that takes the total built inside the block
    past ``budget`` bytes (default :func:`available_memory`; no limit when that is unknown).
    Raises :class:`AllocationRefused`; the mode's ``total`` is the bytes asked for so far."""
    budget = available_memory() if budget is None else budget
    if budget is None:
        yield None
        return
    mode = _budget_mode(budget)
    with mode:
        yield mode
