"""The deploy artefact: the fastest form of a pruned model prunelab can make for this CPU.

``prunelab export CKPT --format deploy`` (:func:`build_deploy` + :func:`save_deploy`) folds the model
(:mod:`prunelab.export.graph`: BatchNorm into convolutions, activations and residual additions into
the layer before them) and then chooses, by measurement on this machine, between two runtimes:

* ``native``: the folded graph in prunelab's C++ executor (:mod:`prunelab.export.executor`), one
  native call per forward pass, each convolution or linear layer on the kernel measured faster for
  it: the direct sparse kernel or ATen's dense one (oneDNN / BLAS);
* ``onnxruntime``: the folded graph exported to ONNX and run by ONNX Runtime's dense kernels.

The native runtime is kept only where the whole graph beats dense ONNX Runtime on the same input by
at least ``min_speedup`` (interleaved medians; 1.05 by default, so timing noise cannot pick the slower
one), so an artefact is never slower than the dense graph in ONNX Runtime: a model
whose sparse layers do not pay (too dense, or an unpruned or structured model) deploys as the dense
ONNX Runtime graph, and the report says so.

Why this design (measured on a 2-core AMD EPYC with AVX-512, 1 thread, ResNet-56 at 95% global
magnitude sparsity): the eager sparse path (:mod:`prunelab.export.sparse`) lost to dense ONNX
Runtime (3.7 ms vs 1.8 ms at batch 1) because each of its ~170 modules returns to Python and ATen's
convolutions carry ~60 us of fixed cost each at batch 1, more than the sparse work itself. Running
the graph natively removes both: the same direct kernel, register-tiled, inside one C++ call ran
the model in 1.36 ms. An ONNX Runtime custom operator would have let ONNX Runtime keep its dense
kernels next to ours, but the ``onnxruntime`` wheel ships no C/C++ headers (only the shared
library), so a user could not build one from a registry package. ``torch.compile`` (inductor) was
measured too: dense ResNet-20 at batch 1 ran 6.4 ms compiled against 6.9 ms eager and 0.7 ms in ONNX
Runtime (its convolutions stay ATen calls), so custom sparse ops under it would start far behind.

Structured models are dense and physically smaller; for them ``pad_to`` (optional) pads channel
counts that feed only one convolution with zero filters up to a multiple (vector units and ONNX
Runtime's blocked convolutions work in blocks of 8 or 16 channels). The padded channels are exactly
zero, so outputs are unchanged; the padded graph is kept only where measured faster.

Files hold tensors and plain containers only (``torch.load(weights_only=True)``), never pickled
modules: the folded graph as a list of ops, its tensors, the kernel choices, the ONNX bytes for the
ONNX Runtime form, and the report of every timing behind the choices.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from prunelab.errors import PrunelabError, check_choice
from prunelab.export.backends import Backend, register_backend
from prunelab.export.executor import (
    FoldedModule,
    NativeProgram,
    executor_library,
    executor_unavailable_reason,
    float32_graph,
    input_shapes,
)
from prunelab.export.graph import FoldedGraph, FoldedOp, fold_graph
from prunelab.export.numerics import relative_error
from prunelab.models.inputs import as_input_spec

DEPLOY_FORMAT = "prunelab-deploy"
DEPLOY_VERSION = 1
RUNTIMES = ("native", "onnxruntime", "torch")
#: what to do when the deploy form cannot be made as asked: stop (exit 2, nothing written) or fall
#: back to the dense kernels and say so
ON_PROBLEM = ("error", "dense")
#: a sparse kernel replaces the dense one only when at least this many times faster (noise guard)
MIN_SPEEDUP = 1.05
#: the relative error allowed between the artefact and the masked model
RTOL = 1e-5


@dataclass
class DeployLayer:
    """The kernel chosen for one weighted layer of the folded graph, with its timings (ms, medians)."""

    index: int
    name: str
    kind: str
    shape: list[int]
    density: float
    kernel: str
    reason: str
    dense_ms: float | None = None
    sparse_ms: float | None = None


@dataclass
class DeployReport:
    """What a deploy export chose and the measurements behind it."""

    runtime: str
    reason: str
    input_shape: list[int]
    batch_size: int
    threads: int
    layers: list[DeployLayer] = field(default_factory=list)
    native_ms: float | None = None
    ort_dense_ms: float | None = None
    padded_ms: float | None = None
    padding: dict[str, int] = field(default_factory=dict)
    relative_error: float | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DeployReport:
        try:
            layers = [DeployLayer(**layer) for layer in d.get("layers", [])]
            return cls(**{**dict(d), "layers": layers})
        except TypeError as exc:
            raise PrunelabError(f"the deploy report is malformed: {exc}") from exc

    @property
    def sparse_layers(self) -> list[str]:
        return [layer.name for layer in self.layers if layer.kernel == "sparse"]

    def table(self) -> str:
        header = ("layer", "kind", "density", "dense ms", "sparse ms", "kernel", "why")
        rows = [header] + [(c.name, c.kind, f"{c.density:.3f}", "-" if c.dense_ms is None else f"{c.dense_ms:.4f}",
                            "-" if c.sparse_ms is None else f"{c.sparse_ms:.4f}", c.kernel, c.reason)
                           for c in self.layers]
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# channel padding (structured models)


def pad_channels(graph: FoldedGraph, multiple: int) -> tuple[FoldedGraph, dict[str, int]]:
    """Pad with zero filters every convolution whose output feeds exactly one other convolution (and
    nothing else), up to a multiple of ``multiple`` channels; the consumer gets zero input weights.

    The padded channels are ``act(0 + 0) = 0`` for every activation here (none, ReLU, ReLU6), and their
    weights in the consumer are zero, so the outputs are unchanged. Returns the new graph and
    ``{layer name: new width}`` for the layers that changed.
    """
    if multiple < 1:
        raise PrunelabError(f"channel multiple {multiple} must be >= 1")
    g = float32_graph(graph)
    users: dict[int, list[int]] = {}
    for i, op in enumerate(g.ops):
        for slot in op.inputs:
            users.setdefault(slot, []).append(i)
    changed: dict[str, int] = {}
    for i, op in enumerate(g.ops):
        if op.kind != "conv" or op.attrs["groups"] != 1 or op.output == g.output:
            continue
        consumers = users.get(op.output, [])
        if len(consumers) != 1:
            continue
        nxt = g.ops[consumers[0]]
        if nxt.kind != "conv" or nxt.attrs["groups"] != 1 or nxt.inputs[0] != op.output or op.output in nxt.inputs[1:]:
            continue
        width = int(op.tensors["weight"].shape[0])
        target = -(-width // multiple) * multiple
        if target == width:
            continue
        extra = target - width
        w = op.tensors["weight"]
        op.tensors["weight"] = torch.cat([w, w.new_zeros(extra, *w.shape[1:])])
        op.tensors["bias"] = torch.cat([op.tensors["bias"], op.tensors["bias"].new_zeros(extra)])
        nw = nxt.tensors["weight"]
        nxt.tensors["weight"] = torch.cat([nw, nw.new_zeros(nw.shape[0], extra, *nw.shape[2:])], dim=1)
        nxt.attrs["in_channels"] = target
        changed[op.name or f"op{i}"] = target
    return g, changed


# ---------------------------------------------------------------------------------------------
# building


def _problem(on_problem: str, message: str, notes: list[str]) -> None:
    """Raise ``message`` (``on_problem="error"``) or record it as a note with the dense fallback."""
    if on_problem == "error":
        raise PrunelabError(f"{message} (--fallback dense falls back to the dense kernels)")
    notes.append(f"{message}; using the dense kernels")


def _ort_available() -> str | None:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "onnxruntime is not installed (install prunelab[onnx])"
    return None


def _time(fns: Mapping[str, Callable[[], object]], warmup: int, repeats: int, max_time_s: float) -> dict[str, float]:
    import statistics

    from prunelab.measure.timing import time_interleaved

    samples = time_interleaved(fns, warmup=warmup, repeats=repeats, max_time_s=max_time_s)
    return {k: float(statistics.median(v)) for k, v in samples.items()}


def _onnx_of(module: nn.Module, input_shape: Sequence[int]) -> bytes:
    from prunelab.export.onnx import onnx_bytes_of

    return onnx_bytes_of(module, input_shape, dynamic_batch=True)


def _ort_call(onnx_model: bytes, x: torch.Tensor, threads: int) -> Callable[[], object]:
    from prunelab.export.backends import ort_runner

    return ort_runner(onnx_model, x, threads, "cpu")


def _choose_kernels(graph: FoldedGraph, input_shape: Sequence[int], x: torch.Tensor, warmup: int, repeats: int,
                    min_speedup: float) -> tuple[dict[int, str], list[DeployLayer]]:
    """Time every weighted layer with its dense and its sparse kernel on the input it really gets."""
    dense = NativeProgram(graph, input_shape, {})
    sparse_all = NativeProgram(graph, input_shape, {i: "sparse" for i in graph.layers()}, shapes=dense.shapes)
    kernels: dict[int, str] = {}
    layers: list[DeployLayer] = []
    for i in graph.layers():
        op = dense.graph.ops[i]
        weight = op.tensors["weight"]
        density = float((weight != 0).sum()) / max(1, weight.numel())
        ins = dense.inputs_of(x, i)
        med = _time({"dense": lambda i=i, ins=ins: dense.run_op(i, ins),
                     "sparse": lambda i=i, ins=ins: sparse_all.run_op(i, ins)},
                    warmup, repeats, max_time_s=2.0)
        faster = med["sparse"] * min_speedup < med["dense"]
        kernels[i] = "sparse" if faster else "dense"
        reason = ("sparse measured faster" if faster else "dense measured faster" if med["dense"] <= med["sparse"]
                  else f"sparse less than {min_speedup:g}x faster")
        layers.append(DeployLayer(i, op.name or f"op{i}", op.kind, list(weight.shape), density, kernels[i], reason,
                                  med["dense"], med["sparse"]))
    return kernels, layers


@dataclass
class DeployArtefact:
    """A built deploy form: the folded graph, the runtime chosen, kernels, ONNX bytes and the report."""

    graph: FoldedGraph
    runtime: str
    kernels: dict[int, str]
    onnx: bytes | None
    report: DeployReport
    input_shape: tuple[int, ...]

    def payload(self, meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The file contents: tensors and plain containers only."""
        ops, tensors = [], {}
        for i, op in enumerate(self.graph.ops):
            ops.append({"kind": op.kind, "inputs": list(op.inputs), "output": op.output, "attrs": dict(op.attrs),
                        "name": op.name, "tensors": sorted(op.tensors)})
            for key, t in op.tensors.items():
                tensors[f"{i}.{key}"] = t.detach().float().cpu().contiguous()
        return {"format": DEPLOY_FORMAT, "version": DEPLOY_VERSION, "runtime": self.runtime,
                "input_shape": list(self.input_shape),
                "graph": {"slots": self.graph.slots, "output": self.graph.output, "ops": ops},
                "tensors": tensors, "kernels": {str(k): v for k, v in self.kernels.items()},
                "onnx": None if self.onnx is None else torch.frombuffer(bytearray(self.onnx), dtype=torch.uint8),
                "report": self.report.to_dict(), "meta": dict(meta or {})}


def build_deploy(model: nn.Module, input_shape: Sequence[int], *, kind: str, batch_size: int = 1, threads: int = 1,
                 on_problem: str = "error", pad_to: int | None = None, warmup: int = 5, repeats: int = 25,
                 min_speedup: float = MIN_SPEEDUP, rtol: float = RTOL) -> DeployArtefact:
    """Build the deploy form of ``model`` for inputs ``(N, *input_shape)``, measured at ``batch_size``.

    ``kind``: ``sparse`` (masked, unstructured), ``structured`` (compressed) or ``dense`` (not pruned:
    an error, or with ``on_problem="dense"`` the dense ONNX Runtime graph). ``on_problem`` also decides
    what happens when ONNX Runtime is not installed or the native executor cannot be built
    (:data:`ON_PROBLEM`). ``pad_to``: channel multiple for structured models (see :func:`pad_channels`).
    ``min_speedup`` applies to each layer's sparse kernel and to the native executor as a whole.
    Outputs are checked against ``model`` within ``rtol`` (relative error of the whole output).
    """
    from prunelab.measure.timing import check_batch_size, check_threads, example_input, fixed_threads, trial_call

    check_choice("model kind", kind, ("sparse", "structured", "dense"))
    check_choice("on-problem policy", on_problem, ON_PROBLEM)
    check_batch_size(batch_size)
    check_threads(threads)
    spec = as_input_spec(input_shape)
    if not spec.is_plain:
        raise PrunelabError(f"the deploy form takes one float input (N, C, H, W ...); this model takes "
                            f"{spec.describe()}: use --format onnx")
    shape = spec.shape
    notes: list[str] = []
    if kind == "dense":
        _problem(on_problem, "the model is not pruned (no weight masks, no structured plan): a deploy export "
                 "would only repackage the dense model", notes)
    if next((t for t in model.parameters() if t.dtype != torch.float32), None) is not None:
        raise PrunelabError("the deploy form is float32; convert the model with .float() first")
    model = model.eval()
    x = example_input(shape, batch_size)
    trial_call(lambda: model(x), shape, batch_size)
    with torch.inference_mode():
        reference = model(x)
    ort_missing = _ort_available()
    if ort_missing:
        _problem(on_problem, f"backend onnxruntime is not available: {ort_missing}", notes)
    try:
        graph: FoldedGraph | None = fold_graph(model)
    except PrunelabError as exc:
        graph = None
        notes.append(f"no folded graph ({exc})")
    native_missing = executor_unavailable_reason() if graph is not None and kind == "sparse" else None
    if native_missing:
        _problem(on_problem, f"the native sparse executor cannot be built: {native_missing}", notes)
    report = DeployReport("onnxruntime", "", list(shape), batch_size, threads, notes=notes)
    kernels: dict[int, str] = {}
    with fixed_threads(threads):
        # The dense ONNX Runtime form is the model as a user would export it (ONNX Runtime folds and
        # fuses it itself), or its zero-padded folded graph where that measured faster.
        onnx_model = None if ort_missing else _onnx_of(model, shape)
        if graph is not None and pad_to and kind == "structured":
            padded, changed = pad_channels(graph, pad_to)
            if changed and onnx_model is not None:
                padded_onnx = _onnx_of(FoldedModule(padded), shape)
                med = _time({"plain": _ort_call(onnx_model, x, threads), "padded": _ort_call(padded_onnx, x, threads)},
                            warmup, repeats, max_time_s=20.0)
                report.padded_ms = med["padded"]
                if med["padded"] < med["plain"]:
                    graph, onnx_model, report.padding = padded, padded_onnx, changed
                    notes.append(f"padded {len(changed)} layer(s) to multiples of {pad_to} channels "
                                 f"({med['plain']:.3f} -> {med['padded']:.3f} ms in ONNX Runtime)")
                else:
                    notes.append(f"padding to multiples of {pad_to} did not pay in ONNX Runtime "
                                 f"({med['plain']:.3f} -> {med['padded']:.3f} ms); not padded")
        ort_call = None if onnx_model is None else _ort_call(onnx_model, x, threads)
        program = None
        if graph is not None and kind == "sparse" and not native_missing:
            kernels, report.layers = _choose_kernels(graph, shape, x, warmup, repeats, min_speedup)
            program = NativeProgram(graph, shape, kernels)
        if program is not None and ort_call is not None:
            med = _time({"native": lambda: program(x), "ort": ort_call}, warmup, repeats, max_time_s=30.0)
            report.native_ms, report.ort_dense_ms = med["native"], med["ort"]
            if med["native"] * min_speedup < med["ort"]:  # a tie goes to the dense graph: never slower
                report.runtime = "native"
                report.reason = (f"native executor {med['native']:.3f} ms < dense ONNX Runtime {med['ort']:.3f} ms "
                                 f"at batch {batch_size}")
            else:
                report.reason = (f"native executor {med['native']:.3f} ms is not {min_speedup:g}x faster than dense "
                                 f"ONNX Runtime {med['ort']:.3f} ms at batch {batch_size}: sparse does not pay")
        elif program is not None:
            report.runtime, report.reason = "native", "ONNX Runtime is not available to compare against"
        elif ort_call is not None:
            med = _time({"ort": ort_call}, warmup, repeats, max_time_s=10.0)
            report.ort_dense_ms = med["ort"]
            report.reason = "dense model" if kind != "sparse" else "no native sparse executor"
        elif graph is not None:
            report.runtime, report.reason = "torch", "neither ONNX Runtime nor the native executor is available"
        else:
            raise PrunelabError("no deploy form can be made: the model has no folded graph and ONNX Runtime is "
                                "not available")
    artefact = DeployArtefact(graph if graph is not None else FoldedGraph([], 1, 0), report.runtime, kernels,
                              onnx_model, report, shape)
    loaded = DeployModel.from_artefact(artefact, threads=threads)
    with torch.inference_mode():
        report.relative_error = relative_error(loaded(x), reference)
    if report.relative_error > rtol:
        raise PrunelabError(f"the deploy artefact's output differs from the model's: relative error "
                            f"{report.relative_error:.2e} > {rtol:.0e}")
    return artefact


# ---------------------------------------------------------------------------------------------
# files and loading


def save_deploy(path: str | os.PathLike, artefact: DeployArtefact, meta: Mapping[str, Any] | None = None) -> str:
    """Write the artefact atomically (tensors and plain containers only)."""
    from prunelab.io import atomic_torch_save

    atomic_torch_save(artefact.payload(meta), path)
    return os.fspath(path)


def _graph_of(payload: Mapping[str, Any]) -> FoldedGraph:
    g = payload["graph"]
    tensors = payload["tensors"]
    ops = []
    for i, op in enumerate(g["ops"]):
        ops.append(FoldedOp(str(op["kind"]), [int(j) for j in op["inputs"]], int(op["output"]), dict(op["attrs"]),
                            {k: tensors[f"{i}.{k}"] for k in op["tensors"]}, str(op.get("name", ""))))
    return FoldedGraph(ops, int(g["slots"]), int(g["output"]))


class DeployModel:
    """A loaded deploy artefact: call it on a float32 batch ``(N, *input_shape)``; returns a tensor."""

    def __init__(self, runtime: str, call: Callable[[torch.Tensor], torch.Tensor], report: DeployReport,
                 input_shape: tuple[int, ...]) -> None:
        self.runtime = runtime
        self._call = call
        self.report = report
        self.input_shape = input_shape

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1:] != self.input_shape:  # also refuses a missing batch dimension
            raise PrunelabError(f"the deploy artefact takes input (N, {', '.join(map(str, self.input_shape))}), "
                                f"got {tuple(x.shape)}")
        return self._call(x if x.dtype is torch.float32 and x.is_contiguous() else x.float().contiguous())

    @classmethod
    def from_artefact(cls, artefact: DeployArtefact, *, threads: int | None = None) -> DeployModel:
        return cls._make(artefact.runtime, artefact.graph, artefact.kernels, artefact.onnx, artefact.report,
                         artefact.input_shape, threads)

    @classmethod
    def _make(cls, runtime: str, graph: FoldedGraph, kernels: Mapping[int, str], onnx_model: bytes | None,
              report: DeployReport, input_shape: tuple[int, ...], threads: int | None) -> DeployModel:
        if runtime == "onnxruntime":
            if onnx_model is None:
                raise PrunelabError("the deploy artefact names ONNX Runtime but holds no ONNX graph")
            from prunelab.export.onnx import ort_session

            session = ort_session(onnx_model, threads=threads)
            name, outputs = session.get_inputs()[0].name, [session.get_outputs()[0].name]

            def run_ort(x: torch.Tensor) -> torch.Tensor:
                return torch.from_numpy(session.run(outputs, {name: x.numpy()})[0])
            return cls(runtime, run_ort, report, input_shape)
        if runtime == "native" and executor_library() is None:
            warnings.warn(f"the native deploy executor cannot run here ({executor_unavailable_reason()}); "
                          "running the folded graph in PyTorch (same outputs, slower)", stacklevel=3)
            runtime = "torch"
        if runtime == "native":
            program = NativeProgram(graph, input_shape, kernels)
            return cls(runtime, program, report, input_shape)
        input_shapes(graph, input_shape)  # shapes that do not fit together fail here, not at the first call
        module = FoldedModule(graph).eval()

        def run_torch(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return module(x)
        return cls("torch", run_torch, report, input_shape)


def load_deploy(path: str | os.PathLike, *, threads: int | None = None) -> DeployModel:
    """Load a file written by :func:`save_deploy` (``weights_only=True``) into a callable :class:`DeployModel`."""
    from prunelab.io import torch_load

    payload = torch_load(path, what="deploy artefact")
    if not isinstance(payload, dict) or payload.get("format") != DEPLOY_FORMAT:
        raise PrunelabError(f"{path} is not a prunelab deploy artefact (make one with: prunelab export CHECKPOINT "
                            "--format deploy)")
    if payload.get("version") != DEPLOY_VERSION:
        raise PrunelabError(f"{path} is a deploy artefact of version {payload.get('version')}; this prunelab reads "
                            f"version {DEPLOY_VERSION}")
    try:
        runtime = check_choice("deploy runtime", str(payload["runtime"]), RUNTIMES)
        graph = _graph_of(payload)
        kernels = {int(k): str(v) for k, v in payload["kernels"].items()}
        onnx_tensor = payload.get("onnx")
        onnx_model = None if onnx_tensor is None else bytes(onnx_tensor.numpy().tobytes())
        report = DeployReport.from_dict(payload["report"])
        shape = tuple(int(d) for d in payload["input_shape"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, PrunelabError):
            raise
        raise PrunelabError(f"deploy artefact {path} is malformed ({type(exc).__name__}: {exc})") from exc
    try:
        return DeployModel._make(runtime, graph, kernels, onnx_model, report, shape, threads)
    except RuntimeError as exc:  # shapes that do not fit together (checked on the meta device or natively)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PrunelabError(f"deploy artefact {path} is malformed: {first}") from exc


def _deploy_backend(model, input_shape, x, threads, device):
    if device != "cpu":
        raise PrunelabError("the deploy back-end runs on CPU")
    from prunelab.train.masks import get_mask

    kind = "sparse" if any(get_mask(m) is not None for m in model.modules()) else "structured"
    artefact = build_deploy(model, input_shape, kind=kind, batch_size=int(x.shape[0]), threads=threads,
                            on_problem="dense")
    deployed = DeployModel.from_artefact(artefact, threads=threads)
    xf = x.float().contiguous()
    return lambda: deployed(xf)


register_backend(Backend("deploy", _deploy_backend, doc="the deploy artefact (prunelab export --format deploy)"))
