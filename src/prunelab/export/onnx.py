"""Export to ONNX, checked against ONNX Runtime.

A structured-pruned prunelab model is a plain, physically smaller ``nn.Module``, so it exports like
any other model; a masked (unstructured) model exports with its zeros as dense weights (the mask
buffers are not part of the graph). Export uses PyTorch's TorchScript-based exporter
(``dynamo=False``): it takes a fraction of a second for the zoo's models where the
``torch.export``-based exporter takes several seconds, and both produce the same operators for
them. ``exporter="dynamo"`` selects the newer one; ``"auto"`` falls back to it when the legacy
exporter is unavailable.

Every export can be checked: the ONNX Runtime output on a random batch must match eager PyTorch
(relative error of the whole output at most ``rtol``).
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from prunelab.errors import PrunelabError, check_choice
from prunelab.export.numerics import relative_error
from prunelab.measure.timing import example_input
from prunelab.models.inputs import (
    InputSpec,
    LogitsModule,
    as_input_spec,
    call_model,
    logits_of,
    move_inputs,
    positional,
)

EXPORTERS = ("auto", "legacy", "dynamo")
DEFAULT_OPSET = 17
#: oldest opset ONNX Runtime runs (BatchNormalization and friends changed form at 7)
MIN_OPSET = 7


def max_opset() -> int:
    """The newest opset this torch can export to."""
    try:
        from torch.onnx._constants import ONNX_MAX_OPSET
    except ImportError:
        return DEFAULT_OPSET
    return int(ONNX_MAX_OPSET)


def check_opset(opset: int) -> int:
    """Return ``opset`` if ONNX Runtime and this torch both support it, else raise :class:`PrunelabError`."""
    if not MIN_OPSET <= int(opset) <= max_opset():
        raise PrunelabError(f"ONNX opset {opset} is not supported; valid: {MIN_OPSET} to {max_opset()}")
    return int(opset)


def _require_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise PrunelabError("ONNX Runtime needs onnxruntime: pip install 'prunelab[onnx]'") from None
    return onnxruntime


def input_names_of(spec: InputSpec) -> list[str]:
    """The ONNX graph's input names: ``input`` for one tensor, ``input_0, input_1, ...`` for a tuple,
    the keyword names for a dict."""
    if spec.structure == "tensor":
        return ["input"]
    if spec.structure == "tuple":
        return [f"input_{i}" for i in range(len(spec.leaves))]
    return [name for name, _ in spec.leaves]


def _legacy_export(model: nn.Module, args: tuple, names: list[str], dynamic_batch: bool, opset: int) -> bytes:
    buf = io.BytesIO()
    axes = {**{n: {0: "batch"} for n in names}, "output": {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter announces its own deprecation
        torch.onnx.export(model, args, buf, dynamo=False, input_names=names, output_names=["output"],
                          dynamic_axes=axes, opset_version=opset, do_constant_folding=True)
    return buf.getvalue()


def _dynamo_export(model: nn.Module, args: tuple, names: list[str], dynamic_batch: bool, opset: int) -> bytes:
    batch = torch.export.Dim("batch", min=1)
    shapes = tuple({0: batch} for _ in args) if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, args, dynamo=True, input_names=names, output_names=["output"],
                                    dynamic_shapes=shapes, opset_version=max(opset, 18), verbose=False)
    return program.model_proto.SerializeToString()


def _graph_form(model: nn.Module, spec: InputSpec) -> nn.Module:
    """The module exported: the model itself for one float tensor, else a :class:`LogitsModule`
    taking the spec's tensors positionally and returning the logits tensor."""
    return model if spec.is_plain else LogitsModule(model, spec)


def onnx_bytes_of(model: nn.Module, input_shape: InputSpec | Sequence[int], *, dynamic_batch: bool = True,
                  opset: int = DEFAULT_OPSET, exporter: str = "auto", batch_size: int = 2) -> bytes:
    """Serialise ``model`` (eval mode, on CPU or its device) to an ONNX model in memory.

    The graph has one input named ``input`` of shape ``(batch, *input_shape)`` and one output named
    ``output``; with ``dynamic_batch`` the batch dimension is symbolic. An
    :class:`~prunelab.models.inputs.InputSpec` of several tensors (token ids and an attention mask,
    say) gives one graph input per tensor (:func:`input_names_of`) and the logits as ``output``
    (:func:`~prunelab.models.inputs.logits_of` of a tuple, dict or ``ModelOutput``). Sparse-kernel
    modules (:mod:`prunelab.export.sparse`) have no ONNX form: export the masked model they came from.
    """
    check_choice("ONNX exporter", exporter, EXPORTERS)
    check_opset(opset)
    if any(getattr(m, "has_no_onnx_form", False) for m in model.modules()):
        raise PrunelabError("a model with sparse-kernel layers has no ONNX form; export the masked model instead")
    device = next((t.device for t in [*model.parameters(), *model.buffers()]), torch.device("cpu"))
    from prunelab.measure.timing import input_dtype

    spec = as_input_spec(input_shape)
    args = positional(example_input(spec, batch_size, device, dtype=input_dtype(model), seed=0))
    names = input_names_of(spec)
    graph = _graph_form(model, spec)
    was_training = model.training
    model.eval()
    try:
        if exporter in ("auto", "legacy"):
            try:
                return _legacy_export(graph, args, names, dynamic_batch, opset)
            except (TypeError, AttributeError, NotImplementedError) as exc:
                if exporter == "legacy":
                    raise PrunelabError(f"the legacy ONNX exporter failed: {type(exc).__name__}: {exc}") from exc
        return _dynamo_export(graph, args, names, dynamic_batch, opset)
    except PrunelabError:
        raise
    except Exception as exc:  # torch.onnx raises many types for unsupported operators
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise PrunelabError(f"ONNX export failed: {type(exc).__name__}: {first}") from exc
    finally:
        model.train(was_training)


def ort_session(onnx_model: bytes | str | os.PathLike, *, threads: int | None = None, device: str = "cpu"):
    """An ONNX Runtime session with a fixed intra-op thread count (one inter-op thread), all graph
    optimisations on. ``device`` ``cuda[:N]`` needs onnxruntime's CUDA execution provider."""
    ort = _require_onnxruntime()
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if str(device).startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise PrunelabError("onnxruntime on cuda needs the CUDA execution provider (onnxruntime-gpu); "
                                f"available: {', '.join(ort.get_available_providers())}")
        index = int(str(device).split(":")[1]) if ":" in str(device) else 0
        providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    source = onnx_model if isinstance(onnx_model, bytes) else os.fspath(onnx_model)
    try:
        return ort.InferenceSession(source, sess_options=options, providers=providers)
    except Exception as exc:  # ONNX Runtime's own exception types: an op or dtype it has no kernel for
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PrunelabError(f"ONNX Runtime cannot load the model: {first}") from exc


@dataclass
class OnnxExport:
    """Where an ONNX file went and how closely ONNX Runtime reproduces eager PyTorch on it."""

    path: str
    input_shape: tuple[int, ...]
    dynamic_batch: bool
    opset: int
    bytes: int
    max_abs_error: float | None = None
    relative_error: float | None = None
    #: the graph's inputs when they are more than one float tensor (``InputSpec.to_dict()``)
    inputs: dict | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def check_onnx(onnx_model: bytes | str | os.PathLike, model: nn.Module, input_shape: InputSpec | Sequence[int], *,
               batch_size: int = 3, rtol: float = 1e-4) -> tuple[float, float]:
    """Run ONNX Runtime and eager PyTorch on the same random batch; return (max abs error, relative error).

    Raises :class:`PrunelabError` when the relative error exceeds ``rtol``.
    """
    from prunelab.measure.timing import input_dtype

    spec = as_input_spec(input_shape)
    x = example_input(spec, batch_size, "cpu", dtype=input_dtype(model), seed=1)
    args = positional(x)
    try:
        session = ort_session(onnx_model, threads=1)
        feed = {i.name: a.numpy() for i, a in zip(session.get_inputs(), args)}
        got = torch.from_numpy(session.run(None, feed)[0])
    except PrunelabError:
        raise
    except Exception as exc:  # ONNX Runtime's own exception types (e.g. no float64 Conv kernel)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        hint = "; export a float32 model" if args[0].is_floating_point() and args[0].dtype != torch.float32 else ""
        raise PrunelabError(f"ONNX Runtime cannot run the exported model: {first}{hint}") from exc
    was_training = model.training
    model.eval()
    try:
        device = next((t.device for t in [*model.parameters(), *model.buffers()]), torch.device("cpu"))
        with torch.inference_mode():
            want = logits_of(call_model(model, move_inputs(x, device))).float().cpu()
    finally:
        model.train(was_training)
    if got.shape != want.shape:
        raise PrunelabError(f"ONNX output shape {tuple(got.shape)} differs from PyTorch's {tuple(want.shape)}")
    max_abs = float((got - want).abs().max()) if got.numel() else 0.0
    rel = relative_error(got, want)
    if rel > rtol:
        raise PrunelabError(f"ONNX Runtime output differs from PyTorch: relative error {rel:.2e} > {rtol:.0e}")
    return max_abs, rel


def to_onnx(model: nn.Module, input_shape: InputSpec | Sequence[int], path: str | os.PathLike, *,
            dynamic_batch: bool = True, opset: int = DEFAULT_OPSET, exporter: str = "auto", check: bool = True,
            rtol: float = 1e-4) -> OnnxExport:
    """Export ``model`` to an ONNX file at ``path`` (written atomically) and, with ``check``, verify
    that ONNX Runtime reproduces eager PyTorch within ``rtol`` (relative error of the output)."""
    from prunelab.io import atomic_write_bytes, output_target

    output_target(path)  # a device, pipe or folder at ``path`` is refused before the export's work
    data = onnx_bytes_of(model, input_shape, dynamic_batch=dynamic_batch, opset=opset, exporter=exporter)
    max_abs = rel = None
    if check:
        max_abs, rel = check_onnx(data, model, input_shape, batch_size=3 if dynamic_batch else 2, rtol=rtol)
    atomic_write_bytes(path, data)
    spec = as_input_spec(input_shape)
    return OnnxExport(str(Path(path)), spec.shape, dynamic_batch, opset, len(data), max_abs, rel,
                      None if spec.is_plain else spec.to_dict())
