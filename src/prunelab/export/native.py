"""Native code compiled on first use: one place that builds, caches and explains C++ kernels.

prunelab's native kernels (the direct sparse convolution, the deploy executor) are C++ sources
compiled with ``torch.utils.cpp_extension.load_inline`` the first time a process asks for them and
cached under torch's extensions folder (``TORCH_EXTENSIONS_DIR``), so later processes load the
shared library in milliseconds. A build is tuned for this CPU (``-march=native``) under a name that
carries a tag of the CPU model and flags, so a home directory shared across a cluster never loads a
library built for another kind of CPU; where the compiler refuses that, a portable build follows,
then one without OpenMP. Where nothing can be built (no compiler, no headers), or with
``PRUNELAB_NATIVE=0``, :meth:`NativeLibrary.module` returns ``None`` and
:meth:`NativeLibrary.unavailable_reason` says why: native code is an accelerator, never a
requirement, and every caller has a pure-PyTorch path with the same outputs.
"""

from __future__ import annotations

import hashlib
import os
import platform
import threading
from collections.abc import Sequence
from types import ModuleType


def native_disabled() -> bool:
    """``PRUNELAB_NATIVE=0`` (or ``false`` / ``no`` / ``off``) turns every native kernel off."""
    return os.environ.get("PRUNELAB_NATIVE", "1").strip().lower() in ("0", "false", "no", "off")


def machine_tag() -> str:
    """A short tag of this CPU (model name and flags), part of every tuned library's name."""
    text = platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            text += "".join(line for line in fh if line.startswith(("model name", "flags")))
    except OSError:
        text += platform.processor()
    return hashlib.sha1(text.encode()).hexdigest()[:10]


class NativeLibrary:
    """A C++ source built once per process (cached on disk) into a Python extension module.

    ``functions`` lists free functions to bind (``load_inline`` writes the bindings); None means the
    source has its own ``PYBIND11_MODULE(TORCH_EXTENSION_NAME, m)`` block (for classes).
    ``tuned_flags`` are tried first, with the CPU tag in the library's name.
    """

    def __init__(self, name: str, source: str, functions: Sequence[str] | None = None,
                 tuned_flags: Sequence[str] = ("-march=native",)) -> None:
        self.name = name
        self.source = source
        self.functions = list(functions) if functions is not None else None
        self.tuned_flags = list(tuned_flags)
        self._lock = threading.Lock()
        self._state: dict[str, object] = {}

    def _build(self) -> dict[str, object]:
        try:
            from torch.utils.cpp_extension import load_inline
        except ImportError as exc:
            return {"error": f"ImportError: {exc}"}
        # A tag of the source too: an edited kernel never loads a stale library of the same name.
        source_tag = hashlib.sha1(self.source.encode()).hexdigest()[:8]
        # -fopenmp: at::parallel_for is inlined into the module; without OpenMP it runs on one thread.
        attempts = ((f"{machine_tag()}_{source_tag}", ["-O3", *self.tuned_flags, "-fopenmp"], ["-fopenmp"]),
                    (f"portable_{source_tag}", ["-O3", "-fopenmp"], ["-fopenmp"]),
                    (f"serial_{source_tag}", ["-O3"], []))
        error = ""
        for suffix, cflags, ldflags in attempts:
            try:
                module = load_inline(f"{self.name}_{suffix}", cpp_sources=[self.source], functions=self.functions,
                                     extra_cflags=cflags, extra_ldflags=ldflags, verbose=False)
                return {"module": module}
            except Exception as exc:  # no compiler, no headers, a failed build: try the next, then say why
                last = str(exc).strip().splitlines()[-1:] or [""]
                error = f"{type(exc).__name__}: {last[0]}"
        return {"error": error}

    def module(self) -> ModuleType | None:
        """The compiled module, or None where it cannot be built here (see :meth:`unavailable_reason`)."""
        if native_disabled():
            return None
        with self._lock:
            if "module" not in self._state and "error" not in self._state:
                self._state.update(self._build())
            return self._state.get("module")  # type: ignore[return-value]

    def unavailable_reason(self) -> str | None:
        """Why :meth:`module` returns None, or None when the module is available."""
        if native_disabled():
            return "disabled by PRUNELAB_NATIVE=0"
        if self.module() is not None:
            return None
        return f"the native kernel could not be built here ({self._state.get('error')})"
