"""Sparse inference for unstructured (masked) models.

A masked model keeps its pruned weights as zeros in dense tensors, so dense kernels do all the
work a dense model does: masked sparsity alone gives no speed-up. This module
turns the masked layers into layers that multiply only the non-zeros:

* :class:`SparseLinear`: ``y = W x + b`` with ``W`` in CSR form (``torch.addmm`` / ``torch.sparse.mm``
  with a CSR first operand: MKL sparse BLAS on CPU, cuSPARSE on CUDA).
* :class:`SparseConv2d`: a convolution lowered to one sparse matmul over an im2col matrix. Only the
  rows of the im2col matrix that some non-zero weight reads are built ("gather" lowering: one
  ``index_select`` over a strided view of the padded input), or all rows when nearly all are used
  ("im2col" lowering); a 1x1 stride-1 convolution is a sparse matmul over the channels of a
  channels-first copy of its input (no copy at all at batch 1).
  Grouped and depthwise convolutions are the same sparse matmul with a block-diagonal weight,
  whose off-group zeros CSR does not store. :class:`SparseConv1d` runs a ``Conv1d`` as a
  height-1 :class:`SparseConv2d`.
* the ``direct`` lowering of :class:`SparseConv2d` (stride 1, float32, CPU): a native direct
  sparse convolution (:mod:`prunelab.export.direct_conv`) that adds each non-zero weight times a
  shifted input plane, with no im2col matrix at all; compiled on first use where a C++ compiler is
  available, and otherwise simply not offered. It keeps the same CSR buffers, so a direct layer
  moved to another device runs the matmul lowering instead.

Sparse kernels only pay off above some sparsity and for some shapes; dense kernels (oneDNN, cuDNN)
are very fast for small convolutions. :func:`convert_to_sparse` therefore times, for every masked
layer, the dense kernel and every sparse lowering that can run it on the layer's real input on the
current device (interleaved, medians), keeps the fastest, and records the timings in a
:class:`SparseReport`. The converted
model's output equals the dense masked model's within a relative error of 1e-5 (checked).

Both return ordinary contiguous tensors, as ``nn.Linear`` and ``nn.Conv2d`` do, so user code that
calls ``.view()`` on a layer's output keeps working (the sparse product is ``(out, N)``; transposing
it back costs little: the MLP benchmark measured the same speed-up). :class:`SparseConv2d` returns
NCHW: dense convolutions, BatchNorm and residual additions after it run at
their usual speed (measured: leaving its output in "channels, batch" order made the following dense
layers slower by more than the copy costs).

Saving never pickles modules: :func:`save_sparse` writes an ordinary prunelab checkpoint (arch,
plan, masked state_dict) whose metadata carries the per-layer kernel choices; :func:`load_sparse`
rebuilds it with :func:`prunelab.checkpoint.load_model` and re-applies the choices.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from prunelab.errors import PrunelabError, check_choice
from prunelab.export.numerics import relative_error
from prunelab.train.masks import get_mask

POLICIES = ("measure", "sparse", "dense")
KERNELS = ("sparse", "dense")
#: how a SparseConv2d runs: "auto" picks gather or im2col; "direct" is the native direct kernel
LOWERINGS = ("auto", "gather", "im2col", "direct")
#: use the "gather" lowering when at most this fraction of the im2col rows is read by some weight
GATHER_MAX_FRACTION = 0.8
#: a measured sparse kernel replaces the dense one only when at least this many times faster
MIN_SPEEDUP = 1.05
#: relative error allowed between the sparse and the dense masked model's outputs
RTOL = 1e-5
_SPARSE_DTYPES = (torch.float32, torch.float64)


def _csr_buffers(module: nn.Module, matrix: torch.Tensor) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        csr = matrix.to_sparse_csr()
    # 32-bit indices where they fit: MKL's sparse BLAS takes them without a conversion per call.
    index_dtype = torch.int32 if csr.values().numel() < 2**31 - 1 else torch.int64
    module.register_buffer("crow_indices", csr.crow_indices().to(index_dtype))
    module.register_buffer("col_indices", csr.col_indices().to(index_dtype))
    module.register_buffer("values", csr.values().clone())


def _csr(module: nn.Module, shape: tuple[int, int]) -> torch.Tensor:
    """The CSR weight over the module's plain buffers (which keep it deep-copyable, movable between
    devices and in an ordinary state_dict). The tensor is built once per set of buffers and cached:
    building it costs about 3 microseconds, a third of a small layer's sparse matmul at batch 1."""
    key = (module.values.data_ptr(), module.crow_indices.data_ptr(), module.col_indices.data_ptr(), shape)
    cached = module.__dict__.get("_csr_cache")
    if cached is None or cached[0] != key:
        cached = (key, torch.sparse_csr_tensor(module.crow_indices, module.col_indices, module.values, shape,
                                               check_invariants=False))
        module.__dict__["_csr_cache"] = cached
    return cached[1]


class _CsrCacheFree:
    """Leaves the cached CSR tensor out of copies and pickles; it is rebuilt on first use."""

    #: sparse-kernel modules have no ONNX form (:func:`prunelab.export.onnx.onnx_bytes_of` checks this)
    has_no_onnx_form = True

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_csr_cache", None)
        return state


class SparseLinear(_CsrCacheFree, nn.Module):
    """``nn.Linear`` with its weight multiplied in CSR form; same inputs, same outputs."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = int(weight.shape[0]), int(weight.shape[1])
        _csr_buffers(self, weight.detach())
        self.register_buffer("bias", None if bias is None else bias.detach().clone().unsqueeze(1))

    @classmethod
    def from_dense(cls, linear: nn.Linear) -> SparseLinear:
        return cls(linear.weight, linear.bias)

    @property
    def nnz(self) -> int:
        return int(self.values.numel())

    def dense_weight(self) -> torch.Tensor:
        return _csr(self, (self.out_features, self.in_features)).to_dense()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        # (in_features, N) row-major: sparse BLAS is several times slower on a column-major operand.
        cols = x.reshape(-1, self.in_features).t().contiguous()
        weight = _csr(self, (self.out_features, self.in_features))
        y = torch.sparse.mm(weight, cols) if self.bias is None else torch.addmm(self.bias, weight, cols)
        y = y.t().contiguous()  # an ordinary (N, out) tensor: later .view() calls work as on nn.Linear
        return y if len(lead) == 1 else y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        density = self.nnz / max(1, self.in_features * self.out_features)
        return f"in_features={self.in_features}, out_features={self.out_features}, density={density:.4f}"


def conv_support(conv: nn.Conv1d | nn.Conv2d) -> str | None:
    """None if :class:`SparseConv2d` / :class:`SparseConv1d` can replace ``conv``, else why not (one phrase)."""
    if conv.padding_mode != "zeros":
        return f"padding_mode {conv.padding_mode!r} (only 'zeros' is lowered)"
    same = isinstance(conv.padding, str) and conv.padding == "same"
    if same and any(d * (k - 1) % 2 for k, d in zip(conv.kernel_size, conv.dilation)):
        return "asymmetric 'same' padding"
    if conv.weight.dtype not in _SPARSE_DTYPES:
        return f"dtype {conv.weight.dtype} (sparse kernels need float32 or float64)"
    return None


def direct_support(weight: torch.Tensor, stride: Sequence[int]) -> str | None:
    """None if the native direct sparse kernel (:mod:`prunelab.export.direct_conv`) can run a
    convolution with this weight and stride on this machine, else why not (one phrase)."""
    from prunelab.export.direct_conv import native_unavailable_reason

    if tuple(int(s) for s in stride) != (1, 1):
        return f"stride {tuple(stride)} (the direct kernel is stride 1)"
    if weight.dtype != torch.float32:
        return f"dtype {weight.dtype} (the direct kernel is float32)"
    if weight.device.type != "cpu":
        return f"device {weight.device} (the direct kernel runs on CPU)"
    return native_unavailable_reason()


def _explicit_padding(conv: nn.Conv1d | nn.Conv2d) -> tuple[int, ...]:
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return tuple(0 for _ in conv.kernel_size)
        return tuple(d * (k - 1) // 2 for k, d in zip(conv.kernel_size, conv.dilation))
    return tuple(int(p) for p in conv.padding)


def support(module: nn.Module) -> str | None:
    """None if a sparse kernel can replace ``module``, else why not (one phrase)."""
    if type(module) in (nn.Conv1d, nn.Conv2d):
        return conv_support(module)
    if type(module) is nn.Linear:
        dtype = module.weight.dtype
        return None if dtype in _SPARSE_DTYPES else f"dtype {dtype} (sparse kernels need float32 or float64)"
    return f"no sparse kernel for {type(module).__name__} (valid: Linear, Conv1d, Conv2d)"


class SparseConv2d(_CsrCacheFree, nn.Module):
    """``nn.Conv2d`` (zero padding, any stride, dilation and groups) as one sparse matmul.

    The weight becomes a CSR matrix ``(out_channels, R)`` whose columns are the im2col rows
    ``(input channel, kernel row, kernel column)`` it reads; ``R`` counts only rows some non-zero
    weight reads ("gather" lowering) or all ``in_channels * kh * kw`` rows ("im2col" lowering).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, *, in_channels: int,
                 stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int], groups: int,
                 lowering: str = "auto") -> None:
        super().__init__()
        check_choice("convolution lowering", lowering, LOWERINGS)
        weight = weight.detach()
        self.out_channels, per_group, self.kh, self.kw = (int(s) for s in weight.shape)
        self.in_channels, self.groups = int(in_channels), int(groups)
        self.stride = (int(stride[0]), int(stride[1]))
        self.padding = (int(padding[0]), int(padding[1]))
        self.dilation = (int(dilation[0]), int(dilation[1]))
        # Column index of every weight in the (in_channels * kh * kw) im2col row space; a grouped
        # convolution's weight is block diagonal there.
        out_per_group = self.out_channels // self.groups
        o, ci, a, b = (weight != 0).nonzero(as_tuple=True)
        channel = (o // out_per_group) * per_group + ci
        row = (channel * self.kh + a) * self.kw + b
        total_rows = self.in_channels * self.kh * self.kw
        used = torch.unique(row)
        if lowering == "direct":
            reason = direct_support(weight, self.stride)
            if reason:
                raise PrunelabError(f"cannot run this convolution with the direct sparse kernel: {reason}")
        elif lowering == "auto":
            lowering = "gather" if used.numel() <= GATHER_MAX_FRACTION * total_rows else "im2col"
        self.lowering = lowering
        rows = torch.arange(total_rows) if lowering == "im2col" else used
        position = torch.full((total_rows,), -1, dtype=torch.long)
        position[rows] = torch.arange(rows.numel())
        matrix = torch.sparse_coo_tensor(torch.stack([o, position[row]]), weight[o, ci, a, b],
                                         (self.out_channels, rows.numel()), check_invariants=False).coalesce()
        _csr_buffers(self, matrix)
        self.register_buffer("row_channel", rows // (self.kh * self.kw))
        self.register_buffer("row_kh", rows // self.kw % self.kh)
        self.register_buffer("row_kw", rows % self.kw)
        self.register_buffer("bias", None if bias is None else bias.detach().clone().unsqueeze(1))
        self._offsets: dict[tuple, tuple[torch.Tensor, int]] = {}

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, lowering: str = "auto") -> SparseConv2d:
        reason = conv_support(conv)
        if reason:
            raise PrunelabError(f"cannot lower this convolution to a sparse matmul: {reason}")
        return cls(conv.weight, conv.bias, in_channels=conv.in_channels, stride=conv.stride,
                   padding=_explicit_padding(conv), dilation=conv.dilation, groups=conv.groups, lowering=lowering)

    @property
    def nnz(self) -> int:
        return int(self.values.numel())

    @property
    def rows(self) -> int:
        return int(self.row_channel.numel())

    def dense_weight(self) -> torch.Tensor:
        """The ``(out, in/groups, kh, kw)`` weight this module multiplies by (for checks)."""
        matrix = _csr(self, (self.out_channels, self.rows)).to_dense()
        full = matrix.new_zeros(self.out_channels, self.in_channels, self.kh, self.kw)
        full[:, self.row_channel, self.row_kh, self.row_kw] = matrix
        per_group = self.in_channels // self.groups
        out_per_group = self.out_channels // self.groups
        return torch.cat([full[g * out_per_group:(g + 1) * out_per_group, g * per_group:(g + 1) * per_group]
                          for g in range(self.groups)])

    def _gather_offsets(self, batch: int, hp: int, wp: int, device: torch.device) -> tuple[torch.Tensor, int]:
        key = (batch, hp, wp, str(device))
        if key not in self._offsets:
            base = (self.row_channel * (batch * hp * wp) + self.row_kh * (self.dilation[0] * wp)
                    + self.row_kw * self.dilation[1])
            if len(self._offsets) > 8:
                self._offsets.clear()
            self._offsets[key] = (base.to(device), int(base.max()) + 1 if base.numel() else 1)
        return self._offsets[key]

    def _direct_indices(self, wp: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(row pointers, input channel, flat offset in a padded plane of width ``wp``) per non-zero."""
        key = ("direct", wp)
        if key not in self._offsets:
            rows = self.col_indices.long()
            offsets = self.row_kh[rows] * (self.dilation[0] * wp) + self.row_kw[rows] * self.dilation[1]
            if len(self._offsets) > 8:
                self._offsets.clear()
            self._offsets[key] = (self.crow_indices.long().contiguous(), self.row_channel[rows].contiguous(),
                                  offsets.contiguous())
        return self._offsets[key]  # type: ignore[return-value]

    def _forward_direct(self, x: torch.Tensor, ho: int, wo: int) -> torch.Tensor:
        from prunelab.export.direct_conv import direct_conv2d

        ph, pw = self.padding
        x = x.contiguous()
        padded = nn.functional.pad(x, (pw, pw, ph, ph)) if ph or pw else x
        rowptr, channel, offsets = self._direct_indices(padded.shape[3])
        bias = None if self.bias is None else self.bias.view(-1)
        return direct_conv2d(padded, rowptr, channel, offsets, self.values, bias, ho, wo)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:  # unbatched (C, H, W), as nn.Conv2d accepts
            return self.forward(x.unsqueeze(0)).squeeze(0)
        batch, channels, height, width = x.shape
        (sh, sw), (ph, pw), (dh, dw) = self.stride, self.padding, self.dilation
        hp, wp = height + 2 * ph, width + 2 * pw
        ho = (hp - dh * (self.kh - 1) - 1) // sh + 1
        wo = (wp - dw * (self.kw - 1) - 1) // sw + 1
        if self.lowering == "direct" and x.device.type == "cpu" and x.dtype == torch.float32:
            return self._forward_direct(x, ho, wo)
        # the matmul lowerings (also a direct module's fallback on other devices: same CSR buffers)
        if batch == 1:  # NCHW at batch 1 is already channels first: no transposed copies
            x = x.contiguous()
            padded = nn.functional.pad(x, (pw, pw, ph, ph)) if ph or pw else x
        elif ph or pw:
            padded = x.new_zeros(channels, batch, hp, wp)
            padded[:, :, ph:ph + height, pw:pw + width] = x.transpose(0, 1)
        else:
            padded = x.transpose(0, 1).contiguous()
        n = batch * ho * wo
        if self.rows == 0:
            y = x.new_zeros(self.out_channels, n)
            if self.bias is not None:
                y += self.bias
        else:
            if self.lowering != "im2col":
                offsets, span = self._gather_offsets(batch, hp, wp, x.device)
                window = padded.view(-1).as_strided((span, batch, ho, wo), (1, hp * wp, sh * wp, sw))
                cols = window.index_select(0, offsets).view(self.rows, n)
            else:
                cols = padded.as_strided((channels, self.kh, self.kw, batch, ho, wo),
                                         (batch * hp * wp, dh * wp, dw, hp * wp, sh * wp, sw)).reshape(self.rows, n)
            weight = _csr(self, (self.out_channels, self.rows))
            y = torch.sparse.mm(weight, cols) if self.bias is None else torch.addmm(self.bias, weight, cols)
        if batch == 1:
            return y.view(1, self.out_channels, ho, wo)
        return y.view(self.out_channels, batch, ho, wo).transpose(0, 1).contiguous()

    def extra_repr(self) -> str:
        per_group = self.in_channels // self.groups
        density = self.nnz / max(1, self.out_channels * per_group * self.kh * self.kw)
        return (f"{self.in_channels}, {self.out_channels}, kernel_size=({self.kh}, {self.kw}), stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
                f"lowering={self.lowering}, density={density:.4f}")


class SparseConv1d(SparseConv2d):
    """``nn.Conv1d`` as a :class:`SparseConv2d` over a height-1 image (kernel ``1 x k``)."""

    @classmethod
    def from_dense(cls, conv: nn.Conv1d, lowering: str = "auto") -> SparseConv1d:
        reason = conv_support(conv)
        if reason:
            raise PrunelabError(f"cannot lower this convolution to a sparse matmul: {reason}")
        return cls(conv.weight.unsqueeze(2), conv.bias, in_channels=conv.in_channels, stride=(1, conv.stride[0]),
                   padding=(0, _explicit_padding(conv)[0]), dilation=(1, conv.dilation[0]), groups=conv.groups,
                   lowering=lowering)

    def dense_weight(self) -> torch.Tensor:
        return super().dense_weight().squeeze(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # unbatched (C, L), as nn.Conv1d accepts
            return self.forward(x.unsqueeze(0)).squeeze(0)
        return super().forward(x.unsqueeze(2)).squeeze(2)


SPARSE_MODULES = (SparseLinear, SparseConv2d)


def has_sparse_modules(model: nn.Module) -> bool:
    return any(isinstance(m, SPARSE_MODULES) for m in model.modules())


def sparse_module(module: nn.Module, lowering: str = "auto") -> nn.Module:
    """The sparse-kernel replacement of one ``nn.Linear``, ``nn.Conv1d`` or ``nn.Conv2d``
    (``lowering``: how a convolution runs, see :data:`LOWERINGS`; ignored for ``nn.Linear``)."""
    reason = support(module)
    if reason:
        raise PrunelabError(f"cannot run {type(module).__name__} with sparse kernels: {reason}")
    if type(module) is nn.Conv2d:
        return SparseConv2d.from_dense(module, lowering)
    if type(module) is nn.Conv1d:
        return SparseConv1d.from_dense(module, lowering)
    return SparseLinear.from_dense(module)


def _conv_stride(module: nn.Module) -> tuple[int, int]:
    stride = tuple(module.stride)
    return (1, stride[0]) if len(stride) == 1 else (stride[0], stride[1])


# ---------------------------------------------------------------------------------------------
# conversion


@dataclass
class LayerChoice:
    """The kernel chosen for one layer and the timings behind the choice (ms, median, one call)."""

    name: str
    kind: str
    shape: list[int]
    density: float
    kernel: str
    reason: str
    dense_ms: float | None = None
    sparse_ms: float | None = None
    lowering: str | None = None
    #: median ms of every sparse lowering measured for a convolution (the fastest is ``sparse_ms``)
    lowering_ms: dict[str, float] | None = None

    @property
    def speedup(self) -> float | None:
        if self.dense_ms is None or self.sparse_ms is None or self.sparse_ms <= 0:
            return None
        return self.dense_ms / self.sparse_ms


@dataclass
class SparseReport:
    """Per-layer kernel choices of a sparse conversion, and the conditions they were measured in."""

    layers: list[LayerChoice]
    input_shape: list[int]
    batch_size: int
    device: str
    threads: int | None
    policy: str
    relative_error: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def choices(self) -> dict[str, str]:
        return {layer.name: layer.kernel for layer in self.layers}

    def lowerings(self) -> dict[str, str]:
        """How each sparse convolution runs (layer name -> lowering)."""
        return {layer.name: layer.lowering for layer in self.layers if layer.kernel == "sparse" and layer.lowering}

    @property
    def sparse_layers(self) -> list[str]:
        return [layer.name for layer in self.layers if layer.kernel == "sparse"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SparseReport:
        try:
            layers = [LayerChoice(**layer) for layer in d["layers"]]
            rest = {k: v for k, v in d.items() if k != "layers"}
            return cls(layers=layers, **rest)
        except (KeyError, TypeError) as exc:
            raise PrunelabError(f"sparse kernel choices are malformed: {exc}") from exc

    def table(self) -> str:
        header = ("layer", "kind", "density", "dense ms", "sparse ms", "speed-up", "kernel", "why")
        rows = [header]
        for c in self.layers:
            rows.append((c.name, c.kind + (f"/{c.lowering}" if c.lowering and c.kernel == "sparse" else ""),
                         f"{c.density:.3f}",
                         "-" if c.dense_ms is None else f"{c.dense_ms:.4f}",
                         "-" if c.sparse_ms is None else f"{c.sparse_ms:.4f}",
                         "-" if c.speedup is None else f"{c.speedup:.2f}x", c.kernel, c.reason))
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


def _candidate_layers(model: nn.Module, masked_only: bool) -> list[tuple[str, nn.Module]]:
    """Every module with a ``weight_mask`` (supported or not, so the report says why a masked layer
    stays dense); without ``masked_only``, also every plain Linear / Conv1d / Conv2d."""
    out = []
    for name, m in model.named_modules():
        weight = getattr(m, "weight", None)
        if not isinstance(weight, torch.Tensor):
            continue
        if get_mask(m) is not None or (not masked_only and type(m) in (nn.Linear, nn.Conv1d, nn.Conv2d)):
            out.append((name, m))
    return out


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _capture_inputs(model: nn.Module, names: Sequence[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    captured: dict[str, torch.Tensor] = {}
    hooks = []
    for name in names:
        def hook(_module, args, _name=name):
            captured.setdefault(_name, args[0].detach())
        hooks.append(model.get_submodule(name).register_forward_pre_hook(hook))
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return captured


def _output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        out = model(x)
    if not isinstance(out, torch.Tensor):
        raise PrunelabError(f"sparse conversion checks models with one tensor output, not {type(out).__name__}")
    return out


def convert_to_sparse(model: nn.Module, input_shape: Sequence[int], *, batch_size: int = 1,
                      threads: int | None = None, device: str = "cpu", policy: str = "measure",
                      masked_only: bool = True, warmup: int = 5, repeats: int = 25, verify: bool = True,
                      rtol: float = RTOL, inplace: bool = False,
                      min_speedup: float = MIN_SPEEDUP) -> tuple[nn.Module, SparseReport]:
    """Replace masked ``Linear`` / ``Conv1d`` / ``Conv2d`` layers with sparse-kernel layers where faster.

    ``policy``: ``measure`` times the dense kernel and each sparse lowering (for a stride-1
    convolution also the native direct kernel, where it can be built) per layer on its real input
    (a batch of ``batch_size`` through the model) on ``device`` with ``threads`` threads, and keeps
    the fastest sparse one where its median is at least ``min_speedup`` times faster than dense
    (default 1.05, so timing noise does not flip layers where the two are even);
    ``sparse`` uses sparse kernels wherever supported (the direct kernel where it can run);
    ``dense`` converts nothing (a baseline). With ``masked_only`` only layers carrying a
    ``weight_mask`` buffer are candidates. Returns the converted model (a copy on ``device`` unless
    ``inplace``) and the :class:`SparseReport`. With ``verify``, the converted model's output must
    equal the masked model's within ``rtol``.
    """
    from prunelab.measure.timing import (
        check_batch_size,
        check_device,
        check_threads,
        example_input,
        fixed_threads,
        input_dtype,
        time_interleaved,
        trial_call,
    )

    check_choice("sparse conversion policy", policy, POLICIES)
    check_batch_size(batch_size)
    check_threads(threads)
    device = check_device(device)
    converted = model if inplace else copy.deepcopy(model)
    converted.eval().to(device)
    layers = _candidate_layers(converted, masked_only)
    x = example_input(input_shape, batch_size, device, dtype=input_dtype(converted))
    trial_call(lambda: _output(converted, x), input_shape, batch_size)  # a wrong input shape: one line
    choices: list[LayerChoice] = []
    with fixed_threads(threads) as n_threads:
        reference = _output(converted, x) if verify else None
        inputs = _capture_inputs(converted, [n for n, _ in layers], x) if policy == "measure" else {}
        replacements: dict[str, nn.Module] = {}
        for name, module in layers:
            weight = module.weight.detach()
            density = float((weight != 0).sum()) / max(1, weight.numel())
            choice = LayerChoice(name, type(module).__name__, list(weight.shape), density, "dense", "")
            unsupported = support(module)
            if unsupported:
                choice.reason = f"unsupported: {unsupported}; dense kernel kept"
                choices.append(choice)
                continue
            candidates = {"sparse": sparse_module(module).to(device)}
            is_conv = isinstance(module, (nn.Conv1d, nn.Conv2d))
            if is_conv and direct_support(module.weight, _conv_stride(module)) is None:
                candidates = {"direct": sparse_module(module, "direct").to(device), **candidates}
            sparse = next(iter(candidates.values()))  # direct where it can run: it is the faster one as a rule
            if policy == "measure":
                if name not in inputs:
                    choice.reason = "not reached by the forward pass; dense kernel kept"
                    choices.append(choice)
                    continue
                xi = inputs[name]

                def run(m: nn.Module, _x: torch.Tensor = xi):
                    def call() -> object:
                        with torch.inference_mode():
                            return m(_x)
                    return call

                samples = time_interleaved({"dense": run(module), **{k: run(m) for k, m in candidates.items()}},
                                           device=device, warmup=warmup, repeats=repeats)
                medians = {k: float(torch.tensor(v).median()) for k, v in samples.items()}
                best = min(candidates, key=lambda k: medians[k])
                sparse = candidates[best]
                choice.dense_ms, choice.sparse_ms = medians["dense"], medians[best]
                if getattr(sparse, "lowering", None) is not None:
                    choice.lowering_ms = {m.lowering: medians[k] for k, m in candidates.items()}
                faster = choice.sparse_ms * min_speedup < choice.dense_ms
                choice.kernel = "sparse" if faster else "dense"
                choice.reason = ("sparse measured faster" if faster else
                                 "dense measured faster" if choice.dense_ms <= choice.sparse_ms else
                                 f"sparse less than {min_speedup:g}x faster")
            elif policy == "sparse":
                choice.kernel, choice.reason = "sparse", "policy: sparse"
            else:
                choice.reason = "policy: dense"
            choice.lowering = getattr(sparse, "lowering", None)
            if choice.kernel == "sparse":
                replacements[name] = sparse
            choices.append(choice)
        for name, sparse in replacements.items():
            _replace(converted, name, sparse)
        error = None
        if verify:
            error = relative_error(_output(converted, x), reference)
    report = SparseReport(choices, [int(d) for d in input_shape], batch_size, device, n_threads, policy, error)
    if verify and error > rtol:
        raise PrunelabError(f"sparse model output differs from the masked model: "
                            f"relative error {error:.2e} > {rtol:.0e}")
    return converted, report


def apply_choices(model: nn.Module, choices: Mapping[str, str], *, device: str | None = None,
                  inplace: bool = True, lowerings: Mapping[str, str] | None = None) -> nn.Module:
    """Re-apply recorded kernel choices (layer name -> ``sparse`` | ``dense``) without timing anything.

    ``lowerings`` (layer name -> :data:`LOWERINGS`) says how each sparse convolution runs; a
    ``direct`` layer whose native kernel cannot run here (no compiler, another device) uses the
    matmul lowering instead, with a warning: the outputs are the same, only the speed differs."""
    target = model if inplace else copy.deepcopy(model)
    target.eval()
    if device is not None:
        target.to(device)
    for name, kernel in choices.items():
        check_choice(f"kernel for layer {name!r}", kernel, KERNELS)
        try:
            module = target.get_submodule(name)
        except AttributeError:
            raise PrunelabError(f"layer {name!r} of the kernel choices is not in the model") from None
        if kernel == "sparse" and not isinstance(module, SPARSE_MODULES):
            lowering = (lowerings or {}).get(name, "auto")
            check_choice(f"lowering for layer {name!r}", lowering, LOWERINGS)
            if lowering == "direct" and isinstance(module, (nn.Conv1d, nn.Conv2d)):
                reason = direct_support(module.weight, _conv_stride(module))
                if reason:
                    warnings.warn(f"layer {name}: the direct sparse kernel cannot run here ({reason}); "
                                  "using the sparse matmul lowering", stacklevel=2)
                    lowering = "auto"
            _replace(target, name, sparse_module(module, lowering).to(next(module.parameters()).device))
    return target


# ---------------------------------------------------------------------------------------------
# files

SPARSE_META_KEY = "sparse_inference"


def save_sparse(path: str | os.PathLike, masked_model: nn.Module, report: SparseReport, *, spec: Any,
                plan: dict | None = None, meta: Mapping[str, Any] | None = None) -> str:
    """Save a sparse-inference model as a prunelab checkpoint of the *masked* model plus the choices.

    ``masked_model`` is the dense masked model the conversion started from (its state_dict, masks
    included, is stored); ``spec`` its :class:`~prunelab.models.ArchSpec` (or its dict form);
    ``plan`` the structured plan if any. Nothing is pickled.
    """
    from prunelab.io import save_checkpoint

    if has_sparse_modules(masked_model):
        raise PrunelabError("save_sparse stores the masked model the conversion started from, not the converted one")
    arch = spec.to_dict() if hasattr(spec, "to_dict") else dict(spec)
    payload_meta = {**dict(meta or {}), SPARSE_META_KEY: report.to_dict()}
    save_checkpoint(path, arch=arch, state_dict=masked_model.state_dict(), plan=plan, meta=payload_meta)
    return os.fspath(path)


@dataclass
class SparseModel:
    """A loaded sparse-inference model: the converted module, its choices, and the checkpoint it came from."""

    model: nn.Module
    report: SparseReport
    loaded: Any


def sparse_report_of(meta: Mapping[str, Any]) -> SparseReport | None:
    """The kernel choices stored in a checkpoint's metadata, or None."""
    info = (meta or {}).get(SPARSE_META_KEY)
    return SparseReport.from_dict(info) if info else None


def load_sparse(path: str | os.PathLike, *, device: str | None = None, verify: bool = True,
                rtol: float = RTOL) -> SparseModel:
    """Load a file written by :func:`save_sparse`: rebuild the masked model with
    :func:`prunelab.checkpoint.load_model`, then re-apply the recorded kernel choices."""
    from prunelab.checkpoint import load_model
    from prunelab.measure.timing import example_input, input_dtype

    loaded = load_model(path)
    report = sparse_report_of(loaded.meta)
    if report is None:
        raise PrunelabError(f"checkpoint {path} holds no sparse kernel choices (make them with: "
                            "prunelab export CHECKPOINT --format sparse)")
    device = device or "cpu"
    dense = loaded.model.to(device).eval()
    model = apply_choices(dense, report.choices(), device=device, inplace=False, lowerings=report.lowerings())
    if verify:
        x = example_input(report.input_shape, 2, device, dtype=input_dtype(dense))
        error = relative_error(_output(model, x), _output(dense, x))
        if error > rtol:
            raise PrunelabError(f"sparse model rebuilt from {path} differs from its masked model: "
                                f"relative error {error:.2e} > {rtol:.0e}")
    return SparseModel(model, report, loaded)
