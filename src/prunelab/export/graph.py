"""The folded inference graph of a model: BatchNorm folded into convolutions, activations and
residual additions fused into the layer that produces them.

:func:`fold_graph` traces a model with ``torch.fx`` (symbolic tracing: the zoo's models are plain
``nn.Module`` trees with static control flow) and rewrites it into a short list of :class:`FoldedOp`
over numbered value slots (slot 0 is the input):

* ``Conv2d -> BatchNorm2d`` becomes one convolution with ``W' = W * g / sqrt(v + eps)`` and
  ``b' = (b - m) * g / sqrt(v + eps) + beta`` (computed in float64; a pruned weight stays exactly
  zero because it is scaled, never shifted); likewise ``Linear -> BatchNorm1d``.
* a ReLU / ReLU6 after a convolution, linear layer, addition or BatchNorm becomes that op's
  activation; ``conv(x) + y`` becomes the convolution's residual input when ``y`` is ready before
  the convolution runs (so ``relu(bn(conv(x)) + shortcut)`` is one convolution with a fused
  epilogue). A fusion happens only where the intermediate value has no other user.
* a BatchNorm that follows no convolution (pre-activation networks: WRN, DenseNet) is a
  per-channel affine op, with its ReLU fused (the native executor applies it inside the input copy
  of the sparse convolutions that read it).
* Dropout and Identity vanish (inference); pooling, flatten and channel concatenation are kept.

Anything else (recurrent layers, slicing, padding by ``F.pad``, custom functions) raises
:class:`~prunelab.errors.PrunelabError` naming the operation, and the caller falls back to a dense
ONNX Runtime graph. The same folding is what ONNX Runtime's graph optimiser does for its dense
graph (Conv+BatchNorm fusion, Conv+Add+Relu fusion), so comparisons between the two are fair.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from prunelab.errors import PrunelabError

#: activations an op can end with
ACTIVATIONS = ("none", "relu", "relu6")


@dataclass
class FoldedOp:
    """One operation of a folded graph: ``kind``, input slots, output slot, attributes, tensors.

    Kinds: ``conv`` (attrs stride, padding, dilation, groups, act; tensors weight, bias; an optional
    second input is the residual added before the activation), ``linear`` (act; weight, bias),
    ``affine`` (act; scale, shift), ``add`` (act), ``act`` (act), ``maxpool`` / ``avgpool``
    (kernel, stride, padding, dilation, ceil_mode, count_include_pad), ``global_avgpool``,
    ``flatten`` (start_dim), ``cat`` (dim). ``name`` is the module path it came from.
    """

    kind: str
    inputs: list[int]
    output: int
    attrs: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    name: str = ""


@dataclass
class FoldedGraph:
    """Ops in execution order over ``slots`` value slots; slot 0 is the input, ``output`` the result."""

    ops: list[FoldedOp]
    slots: int
    output: int

    def layers(self) -> list[int]:
        """Indices of the ops that carry weights (convolutions and linear layers)."""
        return [i for i, op in enumerate(self.ops) if op.kind in ("conv", "linear")]


def _pair(v: Any) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(x) for x in v]


def _bn_scale_shift(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    mean = bn.running_mean.detach().double()
    var = bn.running_var.detach().double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)
    return scale, beta - mean * scale


def _act_of(module: nn.Module) -> str | None:
    if type(module) is nn.ReLU:
        return "relu"
    if type(module) is nn.ReLU6 or (type(module) is nn.Hardtanh and module.min_val == 0.0 and module.max_val == 6.0):
        return "relu6"
    return None


class _Folder:
    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.ops: list[FoldedOp] = []
        self.slot_of: dict[Any, int] = {}
        self.producer: dict[int, int] = {0: -1}  # slot -> op index (-1: the input)
        self.slots = 1

    # -- helpers ---------------------------------------------------------------------------------

    def _new(self, node, kind: str, inputs: list[int], attrs=None, tensors=None, name: str = "") -> FoldedOp:
        op = FoldedOp(kind, inputs, self.slots, dict(attrs or {}), dict(tensors or {}), name)
        self.producer[self.slots] = len(self.ops)
        self.slot_of[node] = self.slots
        self.slots += 1
        self.ops.append(op)
        return op

    def _fusable(self, arg, kinds: tuple[str, ...]) -> FoldedOp | None:
        """The op producing ``arg`` if it is of one of ``kinds`` and ``arg`` has no other user."""
        if not hasattr(arg, "users") or len(arg.users) != 1 or arg not in self.slot_of:
            return None
        index = self.producer.get(self.slot_of[arg], -1)
        if index < 0:
            return None
        op = self.ops[index]
        return op if op.kind in kinds and op.output == self.slot_of[arg] else None

    def _alias(self, node, arg) -> None:
        self.slot_of[node] = self.slot_of[arg]

    def _slot(self, arg) -> int:
        if arg not in self.slot_of:
            raise PrunelabError(f"the deploy graph cannot use value {arg!r} (not a tensor computed by the model)")
        return self.slot_of[arg]

    def _activation(self, node, arg, act: str) -> None:
        op = self._fusable(arg, ("conv", "linear", "affine", "add"))
        if op is not None and op.attrs.get("act", "none") == "none":
            op.attrs["act"] = act
            self._alias(node, arg)
        else:
            self._new(node, "act", [self._slot(arg)], {"act": act})

    # -- node kinds --------------------------------------------------------------------------------

    def module(self, node) -> None:
        m = self.model.get_submodule(node.target)
        (arg,) = node.args if len(node.args) == 1 else (None,)
        if arg is None:
            raise PrunelabError(f"the deploy graph takes single-input modules; {node.target} has {len(node.args)}")
        name = str(node.target)
        kind = type(m)
        if kind is nn.Conv2d:
            if m.padding_mode != "zeros":
                raise PrunelabError(f"{name}: padding_mode {m.padding_mode!r} has no deploy form (only 'zeros')")
            padding = m.padding
            if isinstance(padding, str):
                if padding == "same" and any(d * (k - 1) % 2 for k, d in zip(m.kernel_size, m.dilation)):
                    raise PrunelabError(f"{name}: asymmetric 'same' padding has no deploy form")
                same = [d * (k - 1) // 2 for k, d in zip(m.kernel_size, m.dilation)]
                padding = [0, 0] if padding == "valid" else same
            weight = m.weight.detach().double()
            bias = m.bias.detach().double() if m.bias is not None else torch.zeros(weight.shape[0], dtype=torch.float64)
            self._new(node, "conv", [self._slot(arg)],
                      {"stride": _pair(m.stride), "padding": _pair(padding), "dilation": _pair(m.dilation),
                       "groups": int(m.groups), "act": "none", "in_channels": int(m.in_channels)},
                      {"weight": weight, "bias": bias}, name)
        elif kind is nn.Linear:
            weight = m.weight.detach().double()
            bias = m.bias.detach().double() if m.bias is not None else torch.zeros(weight.shape[0], dtype=torch.float64)
            self._new(node, "linear", [self._slot(arg)], {"act": "none"}, {"weight": weight, "bias": bias}, name)
        elif kind in (nn.BatchNorm2d, nn.BatchNorm1d):
            if m.running_mean is None or m.running_var is None:
                raise PrunelabError(f"{name}: a BatchNorm without running statistics has no deploy form")
            scale, shift = _bn_scale_shift(m)
            prev = self._fusable(arg, ("conv",) if kind is nn.BatchNorm2d else ("linear",))
            if prev is not None and prev.attrs["act"] == "none" and len(prev.inputs) == 1:
                shape = (-1,) + (1,) * (prev.tensors["weight"].dim() - 1)
                prev.tensors["weight"] = prev.tensors["weight"] * scale.view(shape)
                prev.tensors["bias"] = prev.tensors["bias"] * scale + shift
                prev.name = f"{prev.name}+{name}"
                self._alias(node, arg)
            else:
                self._new(node, "affine", [self._slot(arg)], {"act": "none"}, {"scale": scale, "shift": shift}, name)
        elif _act_of(m) is not None:
            self._activation(node, arg, _act_of(m))
        elif kind in (nn.Dropout, nn.Dropout2d, nn.Identity):
            self._alias(node, arg)
        elif kind is nn.MaxPool2d:
            self._new(node, "maxpool", [self._slot(arg)],
                      {"kernel": _pair(m.kernel_size), "stride": _pair(m.stride or m.kernel_size),
                       "padding": _pair(m.padding), "dilation": _pair(m.dilation), "ceil_mode": bool(m.ceil_mode)},
                      name=name)
        elif kind is nn.AvgPool2d:
            if m.divisor_override is not None:
                raise PrunelabError(f"{name}: AvgPool2d with divisor_override has no deploy form")
            self._new(node, "avgpool", [self._slot(arg)],
                      {"kernel": _pair(m.kernel_size), "stride": _pair(m.stride or m.kernel_size),
                       "padding": _pair(m.padding), "ceil_mode": bool(m.ceil_mode),
                       "count_include_pad": bool(m.count_include_pad)}, name=name)
        elif kind is nn.AdaptiveAvgPool2d and _pair(m.output_size) == [1, 1]:
            self._new(node, "global_avgpool", [self._slot(arg)], name=name)
        elif kind is nn.Flatten:
            if m.end_dim != -1:
                raise PrunelabError(f"{name}: Flatten with end_dim {m.end_dim} has no deploy form")
            self._new(node, "flatten", [self._slot(arg)], {"start_dim": int(m.start_dim)}, name=name)
        else:
            raise PrunelabError(f"{name}: {kind.__name__} has no deploy form (supported: Conv2d, Linear, BatchNorm, "
                                "ReLU, ReLU6, pooling, Flatten, Dropout, Identity, add, cat)")

    def add(self, node, a, b) -> None:
        # Fuse into the convolution that runs last, if the other operand is ready before it runs.
        candidates = []
        for mine, other in ((a, b), (b, a)):
            op = self._fusable(mine, ("conv",))
            if op is None or op.attrs["act"] != "none" or len(op.inputs) != 1 or other not in self.slot_of:
                continue
            if self.producer.get(self.slot_of[other], -1) < self.ops.index(op) and other is not mine:
                candidates.append((self.ops.index(op), mine, other, op))
        if candidates:
            _, mine, other, op = max(candidates, key=lambda c: c[0])
            op.inputs.append(self.slot_of[other])
            self._alias(node, mine)
        else:
            self._new(node, "add", [self._slot(a), self._slot(b)], {"act": "none"})

    def function(self, node) -> None:
        fn = node.target
        args = node.args
        if fn in (operator.add, torch.add) and len(args) == 2 and not node.kwargs:
            self.add(node, *args)
        elif fn is torch.flatten:
            start = args[1] if len(args) > 1 else node.kwargs.get("start_dim", 0)
            end = args[2] if len(args) > 2 else node.kwargs.get("end_dim", -1)
            if end != -1:
                raise PrunelabError("torch.flatten with end_dim has no deploy form")
            self._new(node, "flatten", [self._slot(args[0])], {"start_dim": int(start)})
        elif fn is torch.cat:
            tensors = args[0]
            dim = args[1] if len(args) > 1 else node.kwargs.get("dim", 0)
            if int(dim) != 1:
                raise PrunelabError(f"torch.cat along dim {dim} has no deploy form (only channels, dim 1)")
            self._new(node, "cat", [self._slot(t) for t in tensors], {"dim": 1})
        elif fn in (torch.relu, nn.functional.relu) and len(args) == 1:
            self._activation(node, args[0], "relu")
        elif fn is nn.functional.relu6 and len(args) == 1:
            self._activation(node, args[0], "relu6")
        elif fn is nn.functional.adaptive_avg_pool2d and _pair(args[1] if len(args) > 1 else node.kwargs.get(
                "output_size")) == [1, 1]:
            self._new(node, "global_avgpool", [self._slot(args[0])])
        else:
            raise PrunelabError(f"the function {getattr(fn, '__name__', fn)} has no deploy form")

    def method(self, node) -> None:
        name = node.target
        args = node.args
        if name == "size":
            self.slot_of[node] = ("size", args[0], args[1] if len(args) > 1 else None)  # type: ignore[assignment]
            return
        if name in ("view", "reshape") and len(args) == 3 and args[2] == -1:
            size = self.slot_of.get(args[1]) if hasattr(args[1], "op") else None
            if isinstance(size, tuple) and size[0] == "size" and size[1] is args[0] and size[2] == 0:
                self._new(node, "flatten", [self._slot(args[0])], {"start_dim": 1})
                return
        if name == "flatten":
            start = args[1] if len(args) > 1 else node.kwargs.get("start_dim", 0)
            self._new(node, "flatten", [self._slot(args[0])], {"start_dim": int(start)})
            return
        if name in ("relu", "relu_") and len(args) == 1:
            self._activation(node, args[0], "relu")
            return
        if name == "contiguous":
            self._alias(node, args[0])
            return
        raise PrunelabError(f"the tensor method .{name}() has no deploy form")


def fold_graph(model: nn.Module) -> FoldedGraph:
    """Trace ``model`` (eval mode) and fold it into a :class:`FoldedGraph` (see the module docstring)."""
    import torch.fx

    was_training = model.training
    model.eval()
    try:
        traced = torch.fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many types for data-dependent control flow
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PrunelabError(f"the model cannot be traced into a deploy graph: {first}") from exc
    finally:
        model.train(was_training)
    folder = _Folder(model)
    output = None
    placeholders = 0
    for node in traced.graph.nodes:
        if node.op == "placeholder":
            placeholders += 1
            if placeholders > 1:
                raise PrunelabError("the deploy graph takes models with one input")
            folder.slot_of[node] = 0
        elif node.op == "call_module":
            folder.module(node)
        elif node.op == "call_function":
            folder.function(node)
        elif node.op == "call_method":
            folder.method(node)
        elif node.op == "output":
            output = node.args[0]
        else:
            raise PrunelabError(f"the deploy graph cannot hold a {node.op} node ({node.target})")
    if not hasattr(output, "op") or output not in folder.slot_of or not isinstance(folder.slot_of[output], int):
        raise PrunelabError("the deploy graph takes models with one tensor output")
    return FoldedGraph(folder.ops, folder.slots, folder.slot_of[output])
