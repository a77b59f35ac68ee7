"""Parameter and MAC counting, dense and sparse-aware, with the conventions stated.

**Parameters** (:func:`count_params`):

* ``params``: every ``nn.Parameter`` of the model, counted once (BN gamma/beta and biases included;
  BN running statistics, masks and other buffers excluded; a weight tied between an embedding and
  an LM head counts once). This is the "total params" column of torchvision and of pytorch-prunes'
  inference counter, and the count the papers publish (WRN-40-2 2.24M, ResNet-32 0.46M).
* ``conv_linear_weights``: the ``weight`` tensors of Conv1d/2d/3d (depthwise and 1x1 shortcuts
  included), Linear layers and Hugging Face's ``Conv1D`` (GPT-2's transposed Linear): the set Global
  MP prunes and its sparsity denominator (Gupta et al. 2022, sec. 3). Biases, BN and recurrent
  (``nn.GRU``/``nn.LSTM``) weights are excluded.
* ``nonzero`` / ``nonzero_conv_linear``: the same, counting only non-zero entries. A module with a
  ``weight_mask`` buffer (prunelab's unstructured-mask convention) counts ``weight * weight_mask``.

**MACs** (:func:`count_macs`, :func:`layer_table`): multiply-accumulates of one sample (batch 1),
not FLOPs (FLOPs ~ 2 x MACs). The convention of Pruning from Scratch's counter (Wang et al. 2020,
``flop_counter.py``, derived from pytorch-OpCounter), extended to transformers:

* Conv: ``k_h * k_w * C_in / groups * C_out * H_out * W_out`` (= weight numel x output positions),
  plus ``C_out * H_out * W_out`` if the conv has a bias; transposed convs use input positions.
* Linear and HF ``Conv1D``: ``in * out`` per position (a Linear applied to a (T, F) sequence counts
  T times); the bias is free.
* AvgPool / AdaptiveAvgPool: the input numel.
* RNN / GRU / LSTM modules: per time step, the numel of all their weight matrices
  (``3H(in + H)`` for a GRU layer), times the number of steps; biases and gate element-wise ops
  are free.
* Matrix products outside those modules (``torch.matmul`` / ``@`` / ``bmm`` / ``baddbmm`` /
  ``einsum`` / ``F.linear`` on activations or on bare parameters, e.g. attention's QK^T and AV, or
  ``nn.MultiheadAttention``'s projections): ``n * k * m`` per product of an (n, k) by a (k, m)
  matrix, batched dimensions multiplied in; ``F.scaled_dot_product_attention``: QK^T plus AV,
  ``L * S * (E + E_v)`` per head (the formula of ``torch.utils.flop_counter.sdpa_flop_count``, whole
  attention matrix, causal or not); ``nn.MultiheadAttention``'s fused inference kernel: its four
  projections plus QK^T and AV (:func:`fused_mha_macs`); a functional convolution as a Conv module
  without its bias. These rows are named ``<module>:matmul``, ``<module>:attention`` or
  ``<module>:conv`` after the module whose ``forward`` ran them (``(model)`` for the top level),
  with ``weight_numel`` 0. They are seen at the ATen level (a ``TorchDispatchMode``), as
  ``torch.utils.flop_counter`` sees them.
* BatchNorm, LayerNorm, activations, softmax, max pooling, additions, concatenations, embeddings: free.

**Sparse-aware MACs** (``sparse=True``): each weight's term uses ``nnz(W)`` (after its mask)
instead of its numel: ``sum_l nnz(W_l) * output positions`` (Gupta et al. 2022, "FLOPs pruned");
bias terms, pooling and activation products are counted as in the dense case.

Counting runs one forward pass in eval mode without gradients, on the model's device and dtype, of
an example input of its :class:`~prunelab.models.inputs.InputSpec` (``input_shape`` is the shorthand
for one float tensor; float inputs are zeros, token ids are drawn by the spec's seed, so a sequence
length comes from the spec), then restores the training mode.

**Check against** ``torch.utils.flop_counter.FlopCounterMode`` (:func:`check_macs`): the counted
products (everything above but conv biases and pooling, which the flop counter does not count, and
recurrent layers run as one fused kernel it has no formula for) must be FLOPs / 2 within a
tolerance; per module, the deepest modules where the two disagree are named.
:func:`warn_if_miscounted` turns a disagreement into a :class:`MacCountWarning`, for a user's model
whose layers the conventions above may not cover.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from prunelab.errors import PrunelabError, PrunelabWarning
from prunelab.models.common import CONV_TYPES, POOL_TYPES, TRANSPOSED_CONV_TYPES
from prunelab.models.inputs import InputSpec, as_input_spec, call_model

#: the layers whose weights are counted as weights (convolutions, transposed ones included, and Linear)
WEIGHT_TYPES = (*CONV_TYPES, *TRANSPOSED_CONV_TYPES, nn.Linear)


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts of a model (see the module docstring for the conventions)."""

    params: int
    conv_linear_weights: int
    nonzero: int
    nonzero_conv_linear: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class LayerStats:
    """One counted module: its weight size, non-zeros and MACs (dense, sparse-aware) at batch 1,
    summed over every call in the forward pass. ``kind``: conv, linear, pool or rnn."""

    name: str
    kind: str
    weight_numel: int
    nonzero: int
    macs_dense: int
    macs_sparse: int

    def to_dict(self) -> dict:
        return asdict(self)


def effective_tensor(module: nn.Module, name: str) -> torch.Tensor:
    """``module.<name>`` multiplied by its ``<name>_mask`` buffer when there is one."""
    tensor = getattr(module, name)
    mask = getattr(module, f"{name}_mask", None)  # prunelab.train.masks.mask_name (measure imports no training code)
    if isinstance(mask, torch.Tensor) and mask.shape == tensor.shape:
        return tensor * mask.to(tensor.dtype)
    return tensor


def _nnz(t: torch.Tensor) -> int:
    return int(torch.count_nonzero(t.detach()).item())


def hf_conv1d_type() -> type | None:
    """Hugging Face's ``transformers.pytorch_utils.Conv1D`` when transformers is already imported
    (a model that uses it imported it), else None: counting never imports transformers itself."""
    mod = sys.modules.get("transformers.pytorch_utils")
    return getattr(mod, "Conv1D", None) if mod is not None else None


def is_weight_layer(module: nn.Module) -> bool:
    """Conv, Linear or HF ``Conv1D``: the layers whose ``weight`` Global MP prunes."""
    conv1d = hf_conv1d_type()
    return isinstance(module, WEIGHT_TYPES) or (conv1d is not None and isinstance(module, conv1d))


def count_params(model: nn.Module) -> ParamCounts:
    """Total, conv+linear weight and non-zero parameter counts of ``model``."""
    owner: dict[int, tuple[nn.Module, str]] = {}
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            owner.setdefault(id(p), (module, pname))
    params = nonzero = 0
    for module, pname in owner.values():
        p = getattr(module, pname)
        params += p.numel()
        nonzero += _nnz(effective_tensor(module, pname))
    weights = nz_weights = 0
    seen: set[int] = set()
    for module in model.modules():
        w = getattr(module, "weight", None)
        if is_weight_layer(module) and isinstance(w, nn.Parameter) and id(w) not in seen:
            seen.add(id(w))
            weights += w.numel()
            nz_weights += _nnz(effective_tensor(module, "weight"))
    return ParamCounts(params, weights, nonzero, nz_weights)


def _rnn_weight_names(module: nn.RNNBase) -> list[str]:
    return [n for n, _ in module.named_parameters(recurse=False) if n.startswith("weight_")]


def _kind(module: nn.Module, conv1d: type | None) -> str | None:
    if isinstance(module, CONV_TYPES + TRANSPOSED_CONV_TYPES):
        return "conv"
    if isinstance(module, nn.Linear) or (conv1d is not None and isinstance(module, conv1d)):
        return "linear"
    if isinstance(module, POOL_TYPES):
        return "pool"
    if isinstance(module, nn.RNNBase):
        return "rnn"
    return None


def _steps(module: nn.RNNBase, x) -> int:
    if isinstance(x, nn.utils.rnn.PackedSequence):
        return int(x.batch_sizes.numel())
    if x.dim() == 2:  # unbatched (T, F)
        return int(x.shape[0])
    return int(x.shape[1] if module.batch_first else x.shape[0])


#: ATen matrix products (their MACs: output numel x the contracted size)
_MATMULS = {"mm": 1, "addmm": 2, "bmm": 1, "baddbmm": 2}
#: ATen attention kernels: (query, key, value) are their first three arguments
_ATTENTION = ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
              "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention")


def attention_macs(q_shape: Sequence[int], k_shape: Sequence[int], v_shape: Sequence[int]) -> int:
    """MACs of softmax(QK^T)V: ``prod(batch dims of Q) * L * S * (E + E_v)``; key/value heads shared by
    several query heads (GQA) are counted once per query head."""
    batch = math.prod(q_shape[:-2])
    return int(batch * q_shape[-2] * k_shape[-2] * (q_shape[-1] + v_shape[-1]))


def fused_mha_macs(q_shape: Sequence[int], k_shape: Sequence[int], embed_dim: int) -> int:
    """MACs of ``nn.MultiheadAttention``'s fused inference kernel (``_native_multi_head_attention``):
    the Q, K, V and output projections (``E * E`` per position each) plus QK^T and AV over all heads
    (``L * S * E`` each): what its decomposed path computes."""
    batch = math.prod(q_shape[:-2])
    q_len, k_len, e = int(q_shape[-2]), int(k_shape[-2]), int(embed_dim)
    return int(batch * (2 * q_len * e * e + 2 * k_len * e * e + 2 * q_len * k_len * e))


class _OpCounter(TorchDispatchMode):
    """Counts matrix products, attention kernels and convolutions at the ATen level that run outside
    the modules counted by their own rule (those are skipped while ``busy`` is positive)."""

    def __init__(self, collector: _Collector) -> None:
        super().__init__()
        self.collector = collector

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        c = self.collector
        if c.busy:
            return out
        name = func.overloadpacket.__name__
        macs = 0
        if name in _MATMULS:
            a = args[_MATMULS[name] - 1]
            macs, op = out.numel() * int(a.shape[-1]), "matmul"
        elif name in _ATTENTION:
            macs, op = attention_macs(args[0].shape, args[1].shape, args[2].shape), "attention"
        elif name == "_native_multi_head_attention":
            macs, op = fused_mha_macs(args[0].shape, args[1].shape, args[3]), "attention"
        elif name == "convolution":
            x, w, transposed = args[0], args[1], bool(args[6])
            macs, op = (x.numel() if transposed else out.numel()) * int(w[0].numel()), "conv"
        if macs:
            c.add_op(op, int(macs))
        return out


class _Collector:
    """Forward hooks that accumulate :class:`LayerStats` per module, and the module stack that names
    the rows of functional products (see :class:`_OpCounter`)."""

    def __init__(self, model: nn.Module, sparse: bool) -> None:
        self.sparse = sparse
        self.rows: dict[str, LayerStats] = {}
        self.order: list[str] = []
        self.handles = []
        self.busy = 0
        self.stack: list[str] = []
        #: per row: MACs the flop counter does not count (conv biases, pooling)
        self.uncounted: dict[str, int] = {}
        conv1d = hf_conv1d_type()
        for name, module in model.named_modules():
            label = name or "(model)"
            kind = _kind(module, conv1d)
            self.handles.append(module.register_forward_pre_hook(self._enter(label, kind is not None)))
            if kind is not None:
                self.handles.append(module.register_forward_hook(self._hook(name or type(module).__name__, kind)))
            self.handles.append(module.register_forward_hook(self._leave(kind is not None)))

    def _enter(self, label: str, counted: bool):
        def hook(module, inputs) -> None:
            self.stack.append(label)
            self.busy += counted

        return hook

    def _leave(self, counted: bool):
        def hook(module, inputs, output) -> None:
            if self.stack:
                self.stack.pop()
            self.busy -= counted

        return hook

    def _row(self, name: str, kind: str, numel: int, nnz: int) -> LayerStats:
        row = self.rows.get(name)
        if row is None:
            row = self.rows[name] = LayerStats(name, kind, numel, nnz, 0, 0)
            self.order.append(name)
        return row

    def add_op(self, op: str, macs: int) -> None:
        row = self._row(f"{self.stack[-1] if self.stack else '(model)'}:{op}", op, 0, 0)
        row.macs_dense += macs
        row.macs_sparse += macs

    def _weights(self, module: nn.Module, kind: str) -> tuple[int, int]:
        names = _rnn_weight_names(module) if kind == "rnn" else (["weight"] if kind != "pool" else [])
        numel = sum(getattr(module, n).numel() for n in names)
        nnz = sum(_nnz(effective_tensor(module, n)) for n in names) if self.sparse else numel
        return numel, nnz

    def _hook(self, name: str, kind: str):
        def hook(module: nn.Module, inputs, output) -> None:
            row = self.rows.get(name)
            if row is None:
                row = self._row(name, kind, *self._weights(module, kind))
            x = inputs[0]
            batch = 1 if kind == "rnn" else max(1, int(x.shape[0]))
            uncounted = 0
            if kind == "conv":
                out = output
                spatial = math.prod((x if getattr(module, "transposed", False) else out).shape[2:])
                bias = math.prod(out.shape[1:]) if module.bias is not None else 0
                dense = row.weight_numel * spatial + bias
                sparse = row.nonzero * spatial + bias
                uncounted = bias
            elif kind == "linear":
                positions = output.numel() // max(1, output.shape[-1]) // batch if output.dim() > 1 else 1
                dense, sparse = row.weight_numel * positions, row.nonzero * positions
            elif kind == "pool":
                dense = sparse = uncounted = x.numel() // batch
            else:  # rnn: weights used once per step (batch 1)
                steps = _steps(module, x)
                dense, sparse = row.weight_numel * steps, row.nonzero * steps
            row.macs_dense += int(dense)
            row.macs_sparse += int(sparse)
            self.uncounted[name] = self.uncounted.get(name, 0) + int(uncounted)

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _example(model: nn.Module, spec: InputSpec):
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    return spec.example(1, device=device, dtype=dtype, zeros=True)


def _describe(spec: InputSpec) -> str:
    return f"input shape {tuple(spec.shape)}" if spec.is_plain else f"input {spec.describe()}"


def _collect(model: nn.Module, inputs: InputSpec | Sequence[int], sparse: bool) -> _Collector:
    spec = as_input_spec(inputs)
    example = _example(model, spec)
    collector = _Collector(model, sparse)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), _OpCounter(collector):
            call_model(model, example)
    except (RuntimeError, ValueError, IndexError, TypeError) as exc:
        if isinstance(exc, PrunelabError):
            raise
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PrunelabError(f"cannot run the model on {_describe(spec)}: {first_line}") from exc
    finally:
        collector.remove()
        model.train(was_training)
    return collector


def _run(model: nn.Module, inputs: InputSpec | Sequence[int], sparse: bool) -> list[LayerStats]:
    collector = _collect(model, inputs, sparse)
    return [collector.rows[n] for n in collector.order]


def layer_table(model: nn.Module, input_shape: InputSpec | Sequence[int]) -> list[LayerStats]:
    """Per-module weights, non-zeros and MACs (dense and sparse-aware) for one sample of
    ``input_shape`` (an :class:`~prunelab.models.inputs.InputSpec`, or a shape without the batch
    dimension), in the order the rows were first reached."""
    return _run(model, input_shape, sparse=True)


def count_macs(model: nn.Module, input_shape: InputSpec | Sequence[int], sparse: bool = False) -> int:
    """MACs of one forward pass at batch 1 (``sparse``: with ``nnz(W)`` in place of each weight's
    numel). ``input_shape`` is an :class:`~prunelab.models.inputs.InputSpec` (token ids set the
    sequence length) or a shape without the batch dimension, e.g. ``(3, 32, 32)``."""
    rows = _run(model, input_shape, sparse=sparse)
    return sum(r.macs_sparse if sparse else r.macs_dense for r in rows)


# ---------------------------------------------------------------------------- flop-counter check
class MacCountWarning(PrunelabWarning):
    """prunelab's MAC count of a model disagrees with ``torch.utils.flop_counter`` beyond tolerance."""


@dataclass
class MacCheck:
    """prunelab's counted products against ``torch.utils.flop_counter`` (FLOPs / 2).

    ``ours``: prunelab's MACs less what the flop counter does not count (conv biases, pooling,
    fused recurrent kernels); ``reference``: the flop counter's FLOPs / 2; ``modules``: the deepest
    modules whose own totals disagree, each ``(name, ours, reference)``."""

    ours: int
    reference: float
    tolerance: float
    modules: list[tuple[str, int, float]] = field(default_factory=list)

    @property
    def relative_error(self) -> float:
        return abs(self.ours - self.reference) / max(self.reference, 1.0)

    @property
    def ok(self) -> bool:
        return self.relative_error <= self.tolerance

    def describe(self) -> str:
        where = "; ".join(f"{n}: {o:,} vs {r:,.0f}" for n, o, r in self.modules[:5])
        more = f" (+{len(self.modules) - 5} more)" if len(self.modules) > 5 else ""
        return (f"MAC count {self.ours:,} differs from torch.utils.flop_counter's {self.reference:,.0f} by "
                f"{100 * self.relative_error:.1f}%" + (f"; modules: {where}{more}" if where else ""))


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """The flop counter's SDPA formula for the CPU flash kernel, which it does not register."""
    return 2 * attention_macs(query_shape, key_shape, value_shape)


def _fused_mha_flops(query_shape, key_shape, value_shape, embed_dim, *args, out_shape=None, **kwargs) -> int:
    return 2 * fused_mha_macs(query_shape, key_shape, embed_dim)


def reference_flops(model: nn.Module, inputs: InputSpec | Sequence[int]) -> tuple[float, dict[str, float]]:
    """``torch.utils.flop_counter.FlopCounterMode``'s total FLOPs of one batch-1 forward pass, and
    its inclusive per-module totals by module name ("" for the whole model). Two fused kernels the
    flop counter leaves out get formulas: the CPU SDPA kernel (its own ``sdpa_flop_count``) and
    ``nn.MultiheadAttention``'s inference kernel (:func:`fused_mha_macs`, its decomposed path)."""
    from torch.utils.flop_counter import FlopCounterMode

    spec = as_input_spec(inputs)
    example = _example(model, spec)
    mapping = {}
    cpu_sdpa = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_sdpa is not None:
        mapping[cpu_sdpa] = _cpu_sdpa_flops
    fused_mha = getattr(torch.ops.aten, "_native_multi_head_attention", None)
    if fused_mha is not None:
        mapping[fused_mha] = _fused_mha_flops
    counter = FlopCounterMode(display=False, custom_mapping=mapping)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), counter:
            call_model(model, example)
    finally:
        model.train(was_training)
    root = type(model).__name__
    per: dict[str, float] = {}
    for key, ops in counter.get_flop_counts().items():
        if key == "Global":
            continue
        name = "" if key == root else key[len(root) + 1:] if key.startswith(root + ".") else key
        per[name] = float(sum(ops.values()))
    return float(counter.get_total_flops()), per


def check_macs(model: nn.Module, inputs: InputSpec | Sequence[int], tolerance: float = 0.01) -> MacCheck:
    """Compare :func:`count_macs` with ``torch.utils.flop_counter`` (MACs = FLOPs / 2) on the same
    input, on the products both count (see the module docstring), and name the deepest modules whose
    own totals disagree by more than ``tolerance`` of the model's total."""
    collector = _collect(model, inputs, sparse=False)
    flops, per_ref = reference_flops(model, inputs)
    own: dict[str, int] = {}
    for name, row in collector.rows.items():
        module = name.rsplit(":", 1)[0] if ":" in name else name
        module = "" if module == "(model)" else module
        skip = collector.uncounted.get(name, 0)
        if row.kind == "rnn" and not per_ref.get(module):  # a fused kernel the flop counter has no formula for
            skip = row.macs_dense
        own[module] = own.get(module, 0) + row.macs_dense - skip
    ours = sum(own.values())
    check = MacCheck(int(ours), flops / 2, float(tolerance))
    if check.ok:
        return check
    names = set(per_ref) | set(own)

    def inclusive(table: dict[str, float | int], module: str) -> float:
        return float(sum(v for n, v in table.items() if module == "" or n == module or n.startswith(module + ".")))

    floor = tolerance * max(check.reference, 1.0)
    bad = {n: (inclusive(own, n), per_ref.get(n, 0.0) / 2) for n in names}
    bad = {n: v for n, v in bad.items() if abs(v[0] - v[1]) > floor}
    deepest = [n for n in bad if not any(o != n and (n == "" or o.startswith(n + ".")) for o in bad)]
    check.modules = [(n or "(model)", int(bad[n][0]), bad[n][1]) for n in sorted(deepest)]
    return check


def warn_if_miscounted(model: nn.Module, inputs: InputSpec | Sequence[int], tolerance: float = 0.01) -> MacCheck:
    """:func:`check_macs`, warning with a :class:`MacCountWarning` (naming the modules) beyond ``tolerance``."""
    check = check_macs(model, inputs, tolerance)
    if not check.ok:
        warnings.warn(check.describe(), MacCountWarning, stacklevel=2)
    return check
