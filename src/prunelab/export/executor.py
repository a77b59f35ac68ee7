"""Running a folded graph: natively in one C++ call, or op by op in PyTorch (the reference).

:class:`NativeProgram` turns a :class:`~prunelab.export.graph.FoldedGraph` into the C++ executor of
:mod:`prunelab.export.executor_src` (compiled on first use, see :mod:`prunelab.export.native`), with
a kernel per weighted layer: ``sparse`` (the direct sparse convolution / CSR linear kernel) or
``dense`` (ATen: oneDNN convolutions, BLAS matmuls). One call runs the whole graph with no Python
between layers; that removes the interpreter overhead that made the eager sparse path lose to a
dense graph runtime at small batches.

:class:`FoldedModule` runs the same graph with ``torch.nn.functional`` calls. It is the reference the
native program is checked against, the fallback where no native code can be built, and the module
that is exported to ONNX for the dense ONNX Runtime form of a deploy artefact (so BatchNorm folding
and channel padding are the same in every runtime).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from prunelab.errors import PrunelabError
from prunelab.export.executor_src import SOURCE
from prunelab.export.graph import ACTIVATIONS, FoldedGraph, FoldedOp
from prunelab.export.native import NativeLibrary

KERNELS = ("sparse", "dense")
_KIND = {"conv_sparse": 0, "conv_dense": 1, "linear_sparse": 2, "linear_dense": 3, "affine": 4, "add": 5, "act": 6,
         "maxpool": 7, "avgpool": 8, "global_avgpool": 9, "flatten": 10, "cat": 11, "alias": 12}
#: output tiles (floats) the sparse convolution is compiled for, with their measured relative cost per
#: position (a pass over a channel's non-zeros is amortised over more registers in a longer tile)
TILE_COST = {16: 2.4, 32: 1.35, 64: 1.05, 128: 1.0}
_LIBRARY = NativeLibrary("prunelab_deploy", SOURCE, functions=None,
                         tuned_flags=("-march=native", "-mprefer-vector-width=512"))


def executor_library():
    """The compiled executor module, or None where it cannot be built (see :func:`executor_unavailable_reason`)."""
    return _LIBRARY.module()


def executor_unavailable_reason() -> str | None:
    """Why the native executor cannot run here, or None when it can."""
    return _LIBRARY.unavailable_reason()


def _act(x: torch.Tensor, act: str) -> torch.Tensor:
    if act == "relu":
        return torch.relu(x)
    if act == "relu6":
        return torch.clamp(x, 0.0, 6.0)
    return x


def run_op_reference(op: FoldedOp, values: Sequence[torch.Tensor]) -> torch.Tensor:
    """One folded op in plain PyTorch (float32 tensors of the op)."""
    a, t = op.attrs, op.tensors
    if op.kind == "conv":
        y = F.conv2d(values[0], t["weight"], t["bias"], a["stride"], a["padding"], a["dilation"], a["groups"])
        if len(values) > 1:
            y = y + values[1]
        return _act(y, a["act"])
    if op.kind == "linear":
        return _act(F.linear(values[0], t["weight"], t["bias"]), a["act"])
    if op.kind == "affine":
        shape = (1, -1) + (1,) * (values[0].dim() - 2)
        return _act(values[0] * t["scale"].view(shape) + t["shift"].view(shape), a["act"])
    if op.kind == "add":
        return _act(values[0] + values[1], a["act"])
    if op.kind == "act":
        return _act(values[0], a["act"])
    if op.kind == "maxpool":
        return F.max_pool2d(values[0], a["kernel"], a["stride"], a["padding"], a["dilation"], a["ceil_mode"])
    if op.kind == "avgpool":
        return F.avg_pool2d(values[0], a["kernel"], a["stride"], a["padding"], a["ceil_mode"], a["count_include_pad"])
    if op.kind == "global_avgpool":
        return values[0].mean((2, 3), keepdim=True)
    if op.kind == "flatten":
        return torch.flatten(values[0], a["start_dim"])
    if op.kind == "cat":
        return torch.cat(list(values), a["dim"])
    raise PrunelabError(f"unknown folded op {op.kind!r}")


def float32_graph(graph: FoldedGraph) -> FoldedGraph:
    """The graph with every tensor in float32 (folding is done in float64)."""
    ops = [FoldedOp(op.kind, list(op.inputs), op.output, dict(op.attrs),
                    {k: v.float().contiguous() for k, v in op.tensors.items()}, op.name) for op in graph.ops]
    return FoldedGraph(ops, graph.slots, graph.output)


class FoldedModule(nn.Module):
    """A :class:`FoldedGraph` as an ``nn.Module`` of ``torch.nn.functional`` calls (float32)."""

    def __init__(self, graph: FoldedGraph) -> None:
        super().__init__()
        self.graph = float32_graph(graph)
        for i, op in enumerate(self.graph.ops):  # registered, so .to() and ONNX export see them
            for key, tensor in op.tensors.items():
                self.register_buffer(f"op{i}_{key}", tensor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values: list[torch.Tensor | None] = [None] * self.graph.slots
        values[0] = x
        for i, op in enumerate(self.graph.ops):
            live = FoldedOp(op.kind, op.inputs, op.output, op.attrs,
                            {k: getattr(self, f"op{i}_{k}") for k in op.tensors}, op.name)
            values[op.output] = run_op_reference(live, [values[j] for j in op.inputs])
        return values[self.graph.output]


def choose_tile(positions: int) -> int:
    """The output tile of a sparse convolution over ``positions`` padded-grid positions: the cheapest
    by :data:`TILE_COST` once the last tile's unused positions are counted."""
    return min(TILE_COST, key=lambda t: math.ceil(positions / t) * t * TILE_COST[t])


def _sparse_conv_args(op: FoldedOp, in_shape: Sequence[int]) -> tuple[list[int], list[torch.Tensor]]:
    """attrs and tensors of the native sparse convolution of ``op`` on inputs ``(N, *in_shape)``."""
    weight, bias = op.tensors["weight"], op.tensors["bias"]
    c, h, w = (int(d) for d in in_shape)
    (sh, sw), (ph, pw), (dh, dw) = op.attrs["stride"], op.attrs["padding"], op.attrs["dilation"]
    groups = op.attrs["groups"]
    cout, per_group, kh, kw = (int(s) for s in weight.shape)
    hp, wp = h + 2 * ph, w + 2 * pw
    ho, wo = (hp - dh * (kh - 1) - 1) // sh + 1, (wp - dw * (kw - 1) - 1) // sw + 1
    hq, wq = -(-hp // sh), -(-wp // sw)
    o, ci, i, j = (weight != 0).nonzero(as_tuple=True)  # row-major: sorted by output channel
    channel = (o // (cout // groups)) * per_group + ci
    ri, rj = i * dh, j * dw
    src = ((ri % sh) * sw + (rj % sw)) * c + channel
    off = (ri // sh) * wq + (rj // sw)
    rowptr = torch.zeros(cout + 1, dtype=torch.int64)
    rowptr[1:] = torch.bincount(o, minlength=cout).cumsum(0)
    act = ACTIVATIONS.index(op.attrs["act"])
    tile = choose_tile((ho - 1) * wq + wo)
    attrs = [c, h, w, ph, pw, sh, sw, hq, wq, ho, wo, cout, act, tile, -1]  # -1: no input affine
    none = torch.zeros(0)
    return attrs, [rowptr, src.long().contiguous(), off.long().contiguous(), weight[o, ci, i, j].contiguous(),
                   bias.contiguous(), none, none]


def _sparse_linear_args(op: FoldedOp) -> tuple[list[int], list[torch.Tensor]]:
    weight, bias = op.tensors["weight"], op.tensors["bias"]
    if weight.shape[1] >= 2**31:
        raise PrunelabError(f"{op.name}: {weight.shape[1]} input features do not fit 32-bit column indices")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        csr = weight.to_sparse_csr()
    act = ACTIVATIONS.index(op.attrs["act"])
    return [int(weight.shape[1]), int(weight.shape[0]), act], [
        csr.crow_indices().long(), csr.col_indices().int(), csr.values().contiguous(), bias.contiguous()]


class NativeProgram:
    """A folded graph compiled into the C++ executor with one kernel per weighted layer.

    ``kernels`` maps op index -> ``sparse`` | ``dense`` (weighted ops missing from it are dense);
    ``input_shape`` (without the batch) fixes the spatial sizes the sparse convolutions are laid out
    for; the batch stays free.
    """

    def __init__(self, graph: FoldedGraph, input_shape: Sequence[int], kernels: Mapping[int, str] | None = None,
                 shapes: Mapping[int, Sequence[int]] | None = None) -> None:
        lib = executor_library()
        if lib is None:
            raise PrunelabError(f"the native deploy executor is not available: {executor_unavailable_reason()}")
        self.graph = float32_graph(graph)
        self.input_shape = tuple(int(d) for d in input_shape)
        self.kernels = {int(k): v for k, v in (kernels or {}).items()}
        for index, kernel in self.kernels.items():
            if kernel not in KERNELS:
                raise PrunelabError(f"unknown kernel {kernel!r} for op {index}; valid choices: {', '.join(KERNELS)}")
        self.shapes = dict(shapes) if shapes is not None else input_shapes(self.graph, self.input_shape)
        self._lib = lib
        self.program = self._build()

    def _fused_affines(self) -> dict[int, int]:
        """Affine ops (pre-activation BatchNorms) read only as the input of sparse convolutions:
        op index -> itself. Those convolutions apply the affine while copying their input, and the
        affine op becomes an alias of its input (op indices stay those of the graph)."""
        readers: dict[int, list[tuple[int, int]]] = {}
        for i, op in enumerate(self.graph.ops):
            for position, slot in enumerate(op.inputs):
                readers.setdefault(slot, []).append((i, position))
        fused = {}
        for i, op in enumerate(self.graph.ops):
            if op.kind != "affine" or op.output == self.graph.output:
                continue
            users = readers.get(op.output, [])
            if users and all(self.graph.ops[j].kind == "conv" and self.kernels.get(j) == "sparse" and position == 0
                             for j, position in users):
                fused[i] = i
        return fused

    def _build(self):
        program = self._lib.Program(self.graph.slots)
        fused = self._fused_affines()
        producer = {op.output: i for i, op in enumerate(self.graph.ops)}
        for i, op in enumerate(self.graph.ops):
            if i in fused:
                program.add(_KIND["alias"], list(op.inputs), op.output, [], [], [])
                continue
            kind, attrs, tensors, fattrs = self._lowered(i, op)
            if kind == "conv_sparse":
                source = producer.get(op.inputs[0], -1)
                if source in fused:
                    affine = self.graph.ops[source]
                    attrs[-1] = ACTIVATIONS.index(affine.attrs["act"])
                    tensors[-2:] = [affine.tensors["scale"].contiguous(), affine.tensors["shift"].contiguous()]
            program.add(_KIND[kind], list(op.inputs), op.output, [int(a) for a in attrs], fattrs, tensors)
        return program

    def _lowered(self, index: int, op: FoldedOp):
        a, t = op.attrs, op.tensors
        sparse = self.kernels.get(index) == "sparse"
        act = ACTIVATIONS.index(a["act"]) if "act" in a else 0
        if op.kind == "conv":
            if sparse:
                attrs, tensors = _sparse_conv_args(op, self.shapes[index])
                return "conv_sparse", attrs, tensors, []
            return "conv_dense", [*a["stride"], *a["padding"], *a["dilation"], a["groups"], act], \
                [t["weight"], t["bias"]], []
        if op.kind == "linear":
            if sparse:
                attrs, tensors = _sparse_linear_args(op)
                return "linear_sparse", attrs, tensors, []
            return "linear_dense", [act], [t["weight"], t["bias"]], []
        if op.kind == "affine":
            return "affine", [act], [t["scale"], t["shift"]], []
        if op.kind in ("add", "act"):
            return op.kind, [act], [], []
        if op.kind == "maxpool":
            return "maxpool", [*a["kernel"], *a["stride"], *a["padding"], *a["dilation"], int(a["ceil_mode"])], [], []
        if op.kind == "avgpool":
            return "avgpool", [*a["kernel"], *a["stride"], *a["padding"], int(a["ceil_mode"]),
                               int(a["count_include_pad"])], [], []
        if op.kind == "global_avgpool":
            return "global_avgpool", [], [], []
        if op.kind == "flatten":
            return "flatten", [a["start_dim"]], [], []
        if op.kind == "cat":
            return "cat", [a["dim"]], [], []
        raise PrunelabError(f"unknown folded op {op.kind!r}")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.program.run(x)

    def inputs_of(self, x: torch.Tensor, index: int) -> list[torch.Tensor]:
        """The inputs op ``index`` receives when the program runs on ``x``."""
        return list(self.program.inputs_of(x, index))

    def run_op(self, index: int, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Op ``index`` alone on ``inputs`` (to time one layer)."""
        return self.program.run_op(index, list(inputs))


def input_shapes(graph: FoldedGraph, input_shape: Sequence[int]) -> dict[int, tuple[int, ...]]:
    """The shape (without the batch) of the first input of every op, by running the graph in PyTorch
    on a meta tensor (shapes only, no arithmetic)."""
    values: list[torch.Tensor | None] = [None] * graph.slots
    values[0] = torch.empty((1, *input_shape), device="meta")
    shapes: dict[int, tuple[int, ...]] = {}
    for i, op in enumerate(graph.ops):
        ins = [values[j] for j in op.inputs]
        shapes[i] = tuple(int(d) for d in ins[0].shape[1:])
        meta = FoldedOp(op.kind, op.inputs, op.output, op.attrs,
                        {k: v.to("meta", torch.float32) for k, v in op.tensors.items()}, op.name)
        values[op.output] = run_op_reference(meta, ins)
    return shapes
