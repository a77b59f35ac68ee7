"""Inference back-ends that latency can be measured on: a registry each back-end fills itself.

A back-end turns a model and one input batch into a prepared call (``Backend.prepare``), plus says
whether it can run here (``Backend.unavailable``: None, or why not in one phrase). Registered here:

* ``eager``: PyTorch eager under ``torch.inference_mode``;
* ``compile``: ``torch.compile`` (inductor, the default mode), compiled on the first call (the
  untimed trial call), where inductor's C++ compiler works;
* ``onnxruntime``: the model exported to ONNX (:func:`prunelab.export.onnx.onnx_bytes_of`) in an
  ONNX Runtime session with the same intra-op thread count;
* ``deploy`` is registered by :mod:`prunelab.export.deploy`: the deploy artefact of the model.

:func:`measure_backend` is :func:`prunelab.measure.latency.measure_latency` with a back-end's runner.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from prunelab.errors import PrunelabError, unknown_choice
from prunelab.measure.latency import LatencyResult, eager_runner, measure_latency
from prunelab.models.inputs import as_input_spec, call_model, positional


@dataclass(frozen=True)
class Backend:
    """``prepare(model, input_shape, x, threads, device) -> call``; ``unavailable() -> reason | None``."""

    name: str
    prepare: Callable[[nn.Module, Sequence[int], torch.Tensor, int, str], Callable[[], object]]
    unavailable: Callable[[], str | None] = lambda: None
    doc: str = ""


_BACKENDS: dict[str, Backend] = {}


def register_backend(backend: Backend) -> Backend:
    """Add a back-end (a later registration of the same name replaces the earlier one)."""
    _BACKENDS[backend.name] = backend
    return backend


def backend_names() -> list[str]:
    return list(_BACKENDS)


def get_backend(name: str, *, check_available: bool = True) -> Backend:
    """The registered back-end ``name``; unknown names and back-ends that cannot run here are one-line errors."""
    if name not in _BACKENDS:
        raise unknown_choice("backend", name, _BACKENDS)
    backend = _BACKENDS[name]
    if check_available:
        reason = backend.unavailable()
        if reason:
            raise PrunelabError(f"backend {name!r} cannot run here: {reason}")
    return backend


def measure_backend(model: nn.Module, input_shape: Sequence[int], *, backend: str = "eager", **kwargs) -> LatencyResult:
    """:func:`~prunelab.measure.latency.measure_latency` on back-end ``backend`` (same keywords)."""
    chosen = get_backend(backend)
    spec = as_input_spec(input_shape)
    shape = spec.shape if spec.is_plain else spec

    def runner(m: nn.Module, x, threads: int, device: str) -> Callable[[], object]:
        return chosen.prepare(m, shape, x, threads, device)

    return measure_latency(model, shape, backend=backend, runner=runner, **kwargs)


# ---------------------------------------------------------------------------------------------
# the built-in back-ends


def _eager(model, input_shape, x, threads, device):
    return eager_runner(model, x, threads, device)


def _compile_unavailable() -> str | None:
    try:
        from torch._inductor import cpp_builder  # noqa: F401
    except ImportError as exc:
        return f"torch.compile's inductor is not available ({exc})"
    import shutil

    if shutil.which("c++") is None and shutil.which("g++") is None:
        return "torch.compile needs a C++ compiler on CPU"
    return None


def _compile(model, input_shape, x, threads, device):
    compiled = torch.compile(model)

    def call() -> object:
        with torch.inference_mode():
            return call_model(compiled, x)
    try:
        call()  # compiles; a model inductor cannot compile is a one-line error naming torch.compile
    except Exception as exc:  # dynamo and inductor raise many types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PrunelabError(f"torch.compile cannot compile this model: {type(exc).__name__}: {first}") from exc
    return call


def _onnxruntime_unavailable() -> str | None:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "onnxruntime is not installed; install prunelab[onnx]"
    return None


def ort_runner(onnx_model: bytes, x, threads: int | None, device: str) -> Callable[[], object]:
    """A prepared ONNX Runtime call on ``x`` (CUDA through I/O binding, CPU through numpy feeds); a
    tuple or dict of inputs feeds the graph's inputs in order."""
    from prunelab.export.onnx import ort_session

    session = ort_session(onnx_model, threads=threads, device=device)
    names = [i.name for i in session.get_inputs()]
    arrays = [t.detach().cpu().numpy() for t in positional(x)]
    if len(arrays) != len(names):
        raise PrunelabError(f"the ONNX graph takes {len(names)} input(s) ({', '.join(names)}), given {len(arrays)}")
    if device.startswith("cuda"):
        import onnxruntime as ort

        binding = session.io_binding()
        index = int(device.split(":")[1]) if ":" in device else 0
        for name, array in zip(names, arrays):
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, "cuda", index))
        for out in session.get_outputs():
            binding.bind_output(out.name, "cuda", index)
        return lambda: session.run_with_iobinding(binding)
    feed = dict(zip(names, arrays))
    return lambda: session.run(None, feed)


def _onnxruntime(model, input_shape, x, threads, device):
    from prunelab.export.onnx import onnx_bytes_of

    return ort_runner(onnx_bytes_of(model, input_shape, dynamic_batch=True), x, threads, device)


register_backend(Backend("eager", _eager, doc="PyTorch eager"))
register_backend(Backend("compile", _compile, _compile_unavailable, doc="torch.compile (inductor)"))
register_backend(Backend("onnxruntime", _onnxruntime, _onnxruntime_unavailable, doc="ONNX Runtime, dense"))
