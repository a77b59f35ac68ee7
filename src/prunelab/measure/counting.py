"""Parameter and MAC counting, dense and sparse-aware, with the conventions stated.

**Parameters** (:func:`count_params`):

* ``params``: every ``nn.Parameter`` of the model, counted once (BN gamma/beta and biases included;
  BN running statistics, masks and other buffers excluded). This is the "total params" column of
  torchvision and of pytorch-prunes' inference counter, and the count the papers publish (WRN-40-2
  2.24M, ResNet-32 0.46M).
* ``conv_linear_weights``: the ``weight`` tensors of Conv1d/2d/3d (depthwise and 1x1 shortcuts
  included) and Linear layers: the set Global MP prunes and its sparsity denominator (Gupta et al.
  2022, sec. 3). Biases, BN and recurrent (``nn.GRU``/``nn.LSTM``) weights are excluded.
* ``nonzero`` / ``nonzero_conv_linear``: the same, counting only non-zero entries. A module with a
  ``weight_mask`` buffer (prunelab's unstructured-mask convention) counts ``weight * weight_mask``.

**MACs** (:func:`count_macs`, :func:`layer_table`): multiply-accumulates of one sample (batch 1),
not FLOPs (FLOPs ~ 2 x MACs). The convention of Pruning from Scratch's counter (Wang et al. 2020,
``flop_counter.py``, derived from pytorch-OpCounter):

* Conv: ``k_h * k_w * C_in / groups * C_out * H_out * W_out`` (= weight numel x output positions),
  plus ``C_out * H_out * W_out`` if the conv has a bias; transposed convs use input positions.
* Linear: ``in * out`` per position (a Linear applied to a (T, F) sequence counts T times); the
  bias is free.
* AvgPool / AdaptiveAvgPool: the input numel.
* RNN / GRU / LSTM modules: per time step, the numel of all their weight matrices
  (``3H(in + H)`` for a GRU layer), times the number of steps; biases and gate element-wise ops
  are free.
* BatchNorm, activations, max pooling, additions, concatenations: free.
* Only module calls are seen: every call of a hooked module is summed (a recurrent cell's layers
  called T times count T times), while functional ops written inline in ``forward``
  (``F.avg_pool2d``, ``x @ w``) are not (the zoo uses modules wherever a counted op occurs).

**Sparse-aware MACs** (``sparse=True``): each weight's term uses ``nnz(W)`` (after its mask)
instead of its numel: ``sum_l nnz(W_l) * output positions`` (Gupta et al. 2022, "FLOPs pruned");
bias terms and pooling are counted as in the dense case.

Counting runs one forward pass of a zero input of ``(1, *input_shape)`` in eval mode without
gradients, on the model's device and dtype, then restores the training mode.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.models.common import CONV_TYPES, POOL_TYPES, TRANSPOSED_CONV_TYPES

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
        if isinstance(module, WEIGHT_TYPES) and isinstance(w, nn.Parameter) and id(w) not in seen:
            seen.add(id(w))
            weights += w.numel()
            nz_weights += _nnz(effective_tensor(module, "weight"))
    return ParamCounts(params, weights, nonzero, nz_weights)


def _rnn_weight_names(module: nn.RNNBase) -> list[str]:
    return [n for n, _ in module.named_parameters(recurse=False) if n.startswith("weight_")]


def _kind(module: nn.Module) -> str | None:
    if isinstance(module, CONV_TYPES + TRANSPOSED_CONV_TYPES):
        return "conv"
    if isinstance(module, nn.Linear):
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


class _Collector:
    """Forward hooks that accumulate :class:`LayerStats` per module."""

    def __init__(self, model: nn.Module, sparse: bool) -> None:
        self.sparse = sparse
        self.rows: dict[str, LayerStats] = {}
        self.order: list[str] = []
        self.handles = []
        for name, module in model.named_modules():
            kind = _kind(module)
            if kind is not None:
                self.handles.append(module.register_forward_hook(self._hook(name or type(module).__name__, kind)))

    def _weights(self, module: nn.Module, kind: str) -> tuple[int, int]:
        names = _rnn_weight_names(module) if kind == "rnn" else (["weight"] if kind != "pool" else [])
        numel = sum(getattr(module, n).numel() for n in names)
        nnz = sum(_nnz(effective_tensor(module, n)) for n in names) if self.sparse else numel
        return numel, nnz

    def _hook(self, name: str, kind: str):
        def hook(module: nn.Module, inputs, output) -> None:
            row = self.rows.get(name)
            if row is None:
                numel, nnz = self._weights(module, kind)
                row = self.rows[name] = LayerStats(name, kind, numel, nnz, 0, 0)
                self.order.append(name)
            x = inputs[0]
            batch = 1 if kind == "rnn" else max(1, int(x.shape[0]))
            if kind == "conv":
                out = output
                spatial = math.prod((x if getattr(module, "transposed", False) else out).shape[2:])
                bias = math.prod(out.shape[1:]) if module.bias is not None else 0
                dense = row.weight_numel * spatial + bias
                sparse = row.nonzero * spatial + bias
            elif kind == "linear":
                positions = output.numel() // max(1, output.shape[-1]) // batch if output.dim() > 1 else 1
                dense, sparse = row.weight_numel * positions, row.nonzero * positions
            elif kind == "pool":
                dense = sparse = x.numel() // batch
            else:  # rnn: weights used once per step (batch 1)
                steps = _steps(module, x)
                dense, sparse = row.weight_numel * steps, row.nonzero * steps
            row.macs_dense += int(dense)
            row.macs_sparse += int(sparse)

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _run(model: nn.Module, input_shape: Sequence[int], sparse: bool) -> list[LayerStats]:
    shape = _check_shape(input_shape)
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    collector = _Collector(model, sparse)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros((1, *shape), device=device, dtype=dtype))
    except (RuntimeError, ValueError, IndexError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PrunelabError(f"cannot run the model on input shape {tuple(shape)}: {first_line}") from exc
    finally:
        collector.remove()
        model.train(was_training)
    return [collector.rows[n] for n in collector.order]


def _check_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError):
        raise PrunelabError(f"input shape must be a sequence of positive integers, got {input_shape!r}") from None
    if not shape or any(d < 1 for d in shape):
        raise PrunelabError(f"input shape must be positive integers without the batch, got {input_shape!r}")
    return shape


def layer_table(model: nn.Module, input_shape: Sequence[int]) -> list[LayerStats]:
    """Per-module weights, non-zeros and MACs (dense and sparse-aware) for one sample of
    ``input_shape`` (without the batch dimension), in module registration order."""
    return _run(model, input_shape, sparse=True)


def count_macs(model: nn.Module, input_shape: Sequence[int], sparse: bool = False) -> int:
    """MACs of one forward pass at batch 1 (``sparse``: with ``nnz(W)`` in place of each weight's
    numel). ``input_shape`` excludes the batch dimension, e.g. ``(3, 32, 32)``."""
    rows = _run(model, input_shape, sparse=sparse)
    return sum(r.macs_sparse if sparse else r.macs_dense for r in rows)
