"""Building a model from widths that came from a file or a flag, within what this machine can hold.

An architecture spec is data: a checkpoint's ``arch`` (``widths: [100000, 100000, 100000]`` asks for
hundreds of GB), a class count on the command line, a study's ``kwargs``. :func:`build_within_budget`
runs the family constructor under :func:`prunelab.resources.allocation_budget`, so the tensor that
would take the model past the memory available is refused before it is allocated, and caps the
number of modules, so a runaway depth stops early instead of filling memory with Python objects. A
refused spec is then sized on the ``meta`` device (shapes, no storage) for the message.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.resources import ENV_LIMIT, AllocationRefused, allocation_budget, human_bytes

#: more modules than this in one model is a runaway depth, not an architecture (the CIFAR ResNet-1202 of
#: He et al. 2016, the deepest network in the seed papers, has 4,813)
MAX_MODULES = 20_000

#: errors a constructor raises on widths or depths of the wrong type or range
_BUILD_ERRORS = (TypeError, ValueError, OverflowError, IndexError, KeyError, ZeroDivisionError, RuntimeError,
                 MemoryError, RecursionError)


class _TooManyModules(PrunelabError):
    pass


@contextlib.contextmanager
def _module_cap(limit: int) -> Iterator[None]:
    count = 0

    def hook(module, name, submodule):
        nonlocal count
        count += 1
        if count > limit:
            raise _TooManyModules(f"more than {limit:,} modules")

    handle = torch.nn.modules.module.register_module_module_registration_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def describe_spec(family: str, kwargs: dict[str, Any], limit: int = 120) -> str:
    """``family(k=v, ...)``, shortened to ``limit`` characters (a spec may carry long lists)."""
    text = f"{family}(" + ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) + ")"
    return text if len(text) <= limit else text[:limit - 4] + "...)"


def meta_size(build: Callable[..., nn.Module], kwargs: dict[str, Any]) -> int | None:
    """Values (parameters and buffers) of the model ``build(**kwargs)`` would make, counted on the
    ``meta`` device; None when the constructor cannot run there."""
    try:
        with _module_cap(MAX_MODULES), torch.device("meta"):
            model = build(**kwargs)
    except (PrunelabError, *_BUILD_ERRORS, NotImplementedError):
        return None
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def build_within_budget(build: Callable[..., nn.Module], family: str, kwargs: dict[str, Any]) -> nn.Module:
    """``build(**kwargs)``, refused with one line when it would not fit in memory or has a runaway
    depth, and with the constructor's own complaint when a width or depth has the wrong type."""
    what = describe_spec(family, kwargs)
    try:
        with _module_cap(MAX_MODULES), allocation_budget():
            return build(**kwargs)
    except AllocationRefused as exc:
        size = meta_size(build, kwargs)
        need = f"needs {human_bytes(size)}" if size else f"needs at least {human_bytes(exc.total)}"
        raise PrunelabError(f"model {what} {need} for its parameters and buffers, more than the "
                            f"{human_bytes(exc.budget)} this machine has available (set {ENV_LIMIT} to change the "
                            f"limit)") from None
    except _TooManyModules:
        raise PrunelabError(f"model {what} has more than {MAX_MODULES:,} modules; check its depth") from None
    except PrunelabError:
        raise
    except _BUILD_ERRORS as exc:
        detail = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise PrunelabError(f"cannot build {what}: {detail}") from exc
