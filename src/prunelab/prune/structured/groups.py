"""Channel groups: the sets of channels that must be removed together, from Torch-Pruning's graph.

A *channel group* is one prunable set of channels together with every layer it touches: the
convolution(s) producing it, the BatchNorm(s) normalising it, depthwise convolutions it passes
through, the consumers whose input slices must go with it (with concat offsets), and, for a
residual stream, every layer adding into the same stream. The coupling is read from Torch-Pruning's
``DependencyGraph`` (Fang et al., "DepGraph", CVPR 2023); prunelab does not trace graphs itself.

Scopes (which groups are prunable):

* ``internal`` (the seeds' convention, Crowley et al. 2018 sec. 3; Wang et al. 2020): only channels
  *inside* residual and dense blocks; residual streams and concatenated growth channels are never
  pruned. For zoo models the groups are the family's width units (:func:`prunelab.models.width_units`).
  For any other model a group is internal when none of its channels reaches an operation merging
  two or more computed tensors (a residual add, a multiply such as squeeze-and-excitation, a
  concat) or the network output; for a plain chain (VGG) every hidden layer is internal.
* ``all``: every group whose channels do not reach the network output, residual streams pruned
  jointly across every layer adding into them. For a transformer this includes the hidden
  (residual-stream) width: the embeddings, every Linear reading or writing the stream, the norms and
  the classifier input form one group.

Per-channel layers of a group: BatchNorm and PReLU (sliced with the channel; the soft mask sits after
them), LayerNorm / RMSNorm / GroupNorm (:mod:`prunelab.prune.structured.norms`: sliced with the channel;
the soft mask re-normalises them over the live channels, since their statistics span the channels),
``nn.Embedding`` columns, and bare parameters (class tokens, position embeddings, layer scales), passed
to Torch-Pruning as ``unwrapped_parameters`` with their channel dimension (:func:`unwrapped_parameters`).
A group holding a norm, embedding or bare parameter is masked at its consumers' inputs. A permute or
transpose on the path of a group holding a norm (channels moved last for a LayerNorm and back, as in
ConvNeXt and ViT's patch embedding) is mapped index for index. A grouped convolution (``groups`` = G)
folds its group: channel ``j`` is the ``j``-th channel of every convolution group (:func:`fold_grouped`).

Groups passing through an operation whose channel correspondence Torch-Pruning cannot map (a pad
along the channel dimension, as in option-A CIFAR ResNet shortcuts; grouped non-depthwise
convolutions only partly in the group; GroupNorms with several channels per group; layers only partly
covered by the group) are not prunable: they are listed in
:attr:`GroupSet.skipped` with the operation named.

Exclusions (``exclude``): a pattern is matched (``fnmatch``) against module paths and class names;
a group is excluded when one of the layers whose *output* channels it removes matches (Torch-Pruning's
``ignored_layers`` semantics: an excluded layer keeps its output width).

Torch-Pruning is used through its public API only (``DependencyGraph.build_dependency``,
``get_pruning_group``, ``get_all_groups``, ``is_out_channel_pruning_fn``, ``module2node``, the
public attributes of groups, dependencies and nodes, and its pruning functions), for the versions
in :data:`TORCH_PRUNING_TESTED`.
"""

from __future__ import annotations

import contextlib
import fnmatch
import signal
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from prunelab.errors import PrunelabError, check_choice
from prunelab.models.common import BN_TYPES, CONV_TYPES, POOL_TYPES
from prunelab.models.inputs import InputSpec, as_input_spec, call_model, logits_of
from prunelab.prune.structured.norms import RMSNormPruner, is_norm, is_rmsnorm, norm_problem, norm_width
from prunelab.prune.structured.transformer import AttentionUnit, MlpUnit, Units, find_units, is_conv1d
from prunelab.train.progress import stage

SCOPES = ("internal", "all")
#: the Torch-Pruning releases this module is tested with (pyproject.toml bounds the dependency to them)
TORCH_PRUNING_TESTED = ("1.5.3", "1.6.0", "1.6.1")

PRODUCER_TYPES = (*CONV_TYPES, nn.Linear)
#: member kinds of a residual-stream (hidden width) group, beyond producers, consumers and BatchNorms
STREAM_KINDS = ("norm", "embedding", "param")
# Layers whose parameters are one value per channel (sliced with the channel, no mixing across channels).
PER_CHANNEL_TYPES = (*BN_TYPES, nn.PReLU)


def is_producer(module: nn.Module) -> bool:
    """A layer producing channels: a convolution, ``nn.Linear`` or Hugging Face ``Conv1D``."""
    return isinstance(module, PRODUCER_TYPES) or is_conv1d(module)


def is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, CONV_TYPES) and module.groups == module.out_channels and module.out_channels > 1 \
        and module.in_channels == module.out_channels


@dataclass
class Member:
    """One layer touched by a group: ``kind`` is ``out`` (its output channels go), ``in`` (its input
    slices go), ``depthwise`` (both, one filter per channel) or ``pool`` (an average pool the channels
    pass through: no weights, but MACs). ``idxs[k]`` is the position in that layer of group channel
    ``channels[k]``."""

    module: str
    kind: str
    idxs: list[int]
    channels: list[int]


@dataclass
class ChannelGroup:
    """A prunable channel group.

    ``root``: the producing layer used to address the group (first producer in module order, or the
    width unit's conv). ``width``: channels of the group (indices 0..width-1 are the root's output
    channels). ``mask_points``: modules after whose output the soft mask is applied (every BatchNorm
    of the group, plus producers whose output does not go straight into one), so that a masked channel
    reaches no consumer. ``vanishable``: the group may lose every channel (its consumers then output
    zeros and the block reduces to its shortcut, as in pytorch-prunes). ``producers`` / ``batchnorms``:
    the layers whose filters / scales a channel's weight-based score reads (the unit's conv and BN for
    a zoo width unit; every producer and BatchNorm of a generic group). ``unit``: the zoo width unit.
    """

    name: str
    root: str
    width: int
    members: list[Member]
    mask_points: list[str]
    vanishable: bool
    producers: list[str]
    batchnorms: list[str]
    ops: list[str] = field(default_factory=list)
    unit: object | None = None
    input_points: list[str] = field(default_factory=list)
    structure: object | None = None
    #: norms of the group: masked by re-normalising over the live channels (see ``mask_points``)
    norm_points: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        """``channels`` (a Torch-Pruning channel group or zoo width unit), ``heads`` or ``mlp``
        (a transformer unit, :mod:`prunelab.prune.structured.transformer`)."""
        return getattr(self.structure, "kind", "channels")

    def modules(self, kind: str | None = None) -> list[str]:
        return [m.module for m in self.members if kind is None or m.kind == kind]


@dataclass
class LayerShape:
    """Geometry of one Conv / Linear layer from the tracing forward pass (for the cost model)."""

    name: str
    kind: str  # conv | linear | pool | attention (the QK^T and AV matmuls of an attention block)
    in_channels: int
    out_channels: int
    groups: int
    kernel: int
    positions: int  # output positions per sample (H_out*W_out; tokens for a Linear; input positions for a pool;
    # 2 * T_query * T_key for attention, per channel of the query projection)
    bias: bool


@dataclass
class GroupSet:
    """The prunable groups of a model, plus what was skipped and why."""

    groups: list[ChannelGroup]
    scope: str
    input_shape: tuple[int, ...]
    layers: dict[str, LayerShape]
    skipped: list[dict] = field(default_factory=list)
    #: the example inputs the model was traced with (an InputSpec; given a shape only, one float tensor)
    inputs: InputSpec | None = None

    def __post_init__(self) -> None:
        if self.inputs is None:
            self.inputs = InputSpec.tensor(self.input_shape)

    @property
    def spec(self) -> InputSpec:
        """The tracing inputs as an :class:`~prunelab.models.inputs.InputSpec` (same as ``inputs``)."""
        return self.inputs

    def example(self, batch: int, model: nn.Module, seed: int = 0):
        """Example inputs (of the spec the groups were traced with) on the model's device."""
        return self.inputs.example_for(model, batch, seed=seed)

    def __iter__(self):
        return iter(self.groups)

    def __len__(self) -> int:
        return len(self.groups)

    def by_name(self) -> dict[str, ChannelGroup]:
        return {g.name: g for g in self.groups}

    @property
    def total_channels(self) -> int:
        return sum(g.width for g in self.groups)


@dataclass
class TracedModel:
    """Torch-Pruning's dependency graph of a model, and what prunelab records beside it: the
    Conv / Linear / average-pool geometry (:class:`LayerShape`), the graph node feeding each average
    pool (None where none was found), and module / parameter names."""

    graph: tp.DependencyGraph | None
    layers: dict[str, LayerShape]
    pools: dict[str, object]
    names: dict[nn.Module, str]
    order: dict[str, int]  # module path -> position in named_modules order
    param_names: dict[nn.Parameter, str]
    #: why Torch-Pruning could not trace the model (then ``graph`` is None and only the transformer
    #: units, which need no graph, are prunable)
    failure: str | None = None
    #: the bare parameters passed to Torch-Pruning as ``unwrapped_parameters``: path -> channel dimension
    param_dims: dict[str, int] = field(default_factory=dict)

    @property
    def model(self) -> nn.Module:
        return self.graph.model


#: seconds graph discovery (tracing plus grouping) may take before it stops with an error
DISCOVERY_BUDGET_S = 300.0


class DiscoveryTimeout(PrunelabError):
    """Graph discovery ran past its time budget."""


@contextlib.contextmanager
def time_budget(seconds: float | None, what: str) -> Iterator[None]:
    """Interrupt the block after ``seconds`` with :class:`DiscoveryTimeout` (main thread on POSIX,
    where a signal timer can interrupt a call inside Torch-Pruning; elsewhere the loops check the clock)."""
    usable = (seconds is not None and seconds > 0 and hasattr(signal, "setitimer")
              and threading.current_thread() is threading.main_thread())
    if not usable:
        yield
        return

    def expired(signum, frame):
        raise DiscoveryTimeout(f"{what} ran past its time budget of {seconds:g} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, float(seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def customized_pruners(model: nn.Module) -> dict:
    """Torch-Pruning ``customized_pruners`` for the layer types it lacks (Hugging Face ``Conv1D``,
    RMSNorm)."""
    from prunelab.prune.structured.layers import Conv1DPruner

    out: dict = {type(m): Conv1DPruner() for m in model.modules() if is_conv1d(m)}
    out.update({type(m): RMSNormPruner() for m in model.modules() if is_rmsnorm(m)})
    return out


#: layers whose parameters Torch-Pruning (or a customized pruner here) slices itself
_WRAPPED_TYPES = (*PRODUCER_TYPES, *BN_TYPES, nn.PReLU, nn.LayerNorm, nn.GroupNorm, nn.Embedding,
                  nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.MultiheadAttention, nn.LSTM)


def unwrapped_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter, int]]:
    """Bare parameters (not owned by a layer Torch-Pruning knows): class tokens, position embeddings,
    layer scales. Their channel dimension is the last one longer than 1 (``(1, 1, D)``, ``(1, T, D)``,
    ``(D,)``), Torch-Pruning's default; passed to it as ``unwrapped_parameters``."""
    out = []
    for mname, module in model.named_modules():
        if isinstance(module, _WRAPPED_TYPES) or is_conv1d(module) or is_rmsnorm(module):
            continue
        for pname, p in module.named_parameters(recurse=False):
            dims = [i for i, s in enumerate(p.shape) if s > 1]
            if dims:
                out.append((f"{mname}.{pname}" if mname else pname, p, dims[-1]))
    return out


def build_graph(model: nn.Module, input_shape, units: Units | None = None) -> TracedModel:
    """Trace ``model`` with Torch-Pruning on one example input (``input_shape``: a shape or an
    :class:`~prunelab.models.inputs.InputSpec`); also record Conv / Linear / ``Conv1D`` / average-pool
    geometry and, for each attention unit, the sequence lengths its matmuls see (for the cost model;
    positions summed over calls of a module used several times).

    The model's train/eval mode is restored afterwards (Torch-Pruning leaves it in eval mode).
    """
    spec = as_input_spec(input_shape)
    names = {m: n for n, m in model.named_modules()}
    layers: dict[str, LayerShape] = {}
    pool_inputs: dict[str, object] = {}

    def add(shape: LayerShape) -> None:
        prev = layers.get(shape.name)
        if prev is not None:
            shape.positions += prev.positions
        layers[shape.name] = shape

    def record(module: nn.Module, inputs, output) -> None:
        if not isinstance(output, torch.Tensor) or output.dim() < 2:
            return
        name = names[module]
        if isinstance(module, CONV_TYPES):
            shape = LayerShape(name, "conv", module.in_channels, module.out_channels, module.groups,
                               int(torch.tensor(module.kernel_size).prod()), int(output[0, 0].numel()),
                               module.bias is not None)
        elif isinstance(module, nn.Linear) or is_conv1d(module):
            fin, fout = (module.in_features, module.out_features) if isinstance(module, nn.Linear) else \
                (int(module.weight.shape[0]), int(module.weight.shape[1]))
            pos = int(output.numel() // (output.shape[0] * fout))
            shape = LayerShape(name, "linear", fin, fout, 1, 1, pos, getattr(module, "bias", None) is not None)
        else:  # average pooling: MACs = input numel (the counters' convention)
            x = inputs[0]
            if not isinstance(x, torch.Tensor) or x.dim() < 3:
                return
            pool_inputs[name] = x.grad_fn
            shape = LayerShape(name, "pool", x.shape[1], x.shape[1], 1, 1, int(x[0, 0].numel()), False)
        add(shape)

    def attention_hook(unit: AttentionUnit):
        def hook(module: nn.Module, inputs) -> None:
            x = inputs[0] if inputs else None
            if not isinstance(x, torch.Tensor):
                return
            t = int(x.shape[-2]) if x.dim() >= 3 else 1
            width = unit.heads * unit.head_dim
            add(LayerShape(f"{unit.path}:attention", "attention", width, width, 1, 1, 2 * t * t, False))
        return hook

    handles = [m.register_forward_hook(record) for m in model.modules()
               if isinstance(m, (*PRODUCER_TYPES, *POOL_TYPES)) or is_conv1d(m)]
    running: list[str] = []  # the modules whose forward is running (the innermost names a failure)

    def enter(module, inputs) -> None:
        running.append(names.get(module, type(module).__name__))

    def leave(module, inputs, output) -> None:
        if running:
            running.pop()

    for m in model.modules():
        handles.append(m.register_forward_pre_hook(enter))
        handles.append(m.register_forward_hook(leave))

    def where() -> str:
        if not running:
            return ""
        name = running[-1] or "the model"
        cls = type(model.get_submodule(running[-1])).__name__ if running[-1] else type(model).__name__
        return f" in module {name} ({cls})"

    for unit in (units.attention if units else ()):
        handles.append(model.get_submodule(unit.o).register_forward_pre_hook(attention_hook(unit)))
    was_training = model.training
    failure = None
    bare = unwrapped_parameters(model)
    try:
        with torch.enable_grad():
            dg = tp.DependencyGraph().build_dependency(
                model, example_inputs=spec.example_for(model, 1), forward_fn=call_model,
                output_transform=logits_of, customized_pruners=customized_pruners(model) or None,
                unwrapped_parameters=[(p, d) for _, p, d in bare] or None, verbose=False)
    except PrunelabError:
        raise
    except Exception as exc:  # tracing failures of Torch-Pruning are the user's model, not a bug here
        failure = PrunelabError(f"cannot trace the model's channel dependencies with Torch-Pruning{where()}: "
                                f"{describe_exception(exc)}")
        failure.__cause__ = exc
        if not units:
            raise failure from exc
        # The transformer units do not need the graph: record the geometry with a plain forward.
        layers.clear()
        pool_inputs.clear()
        running.clear()
        model.eval()
        try:
            with torch.no_grad():
                call_model(model, spec.example_for(model, 1))
        except Exception as exc2:
            raise PrunelabError(f"the model does not run on its example inputs ({spec.describe()}){where()}: "
                                f"{describe_exception(exc2)}") from exc2
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    order = {n: i for i, n in enumerate(names.values())}
    if failure is not None:
        return TracedModel(None, layers, {}, names, order, {p: n for n, p in model.named_parameters()},
                           str(failure))
    # An average pool is not a Torch-Pruning layer: find the graph node that feeds it.
    by_grad_fn = {id(node.grad_fn): node for node in dg.module2node.values() if node.grad_fn is not None}
    pools = {name: by_grad_fn.get(id(gf)) for name, gf in pool_inputs.items()}
    return TracedModel(dg, layers, pools, names, order, {p: n for n, p in model.named_parameters()},
                       param_dims={n: d for n, _, d in bare})


def describe_exception(exc: BaseException) -> str:
    """``Type: first line`` of an exception, with the innermost prunelab-unrelated frame (module and
    function) where Python still has it: the one line a user reads instead of a traceback."""
    import traceback

    text = str(exc).splitlines()[0] if str(exc) else ""
    where = ""
    tb = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ is not None else []
    if tb:
        frame = tb[-1]
        where = f" (in {frame.name}, {frame.filename.rsplit('/', 2)[-2:][-1]}:{frame.lineno})"
    return f"{type(exc).__name__}: {text}{where}"


def out_channel_fn(module: nn.Module):
    """Torch-Pruning's function removing output channels of ``module`` (a conv, depthwise conv or linear)."""
    if isinstance(module, nn.Linear):
        return tp.prune_linear_out_channels
    return tp.prune_depthwise_conv_out_channels if is_depthwise(module) else tp.prune_conv_out_channels


def layer_group(traced: TracedModel, module: nn.Module, width: int):
    """Torch-Pruning's group of every layer coupled to the ``width`` output channels of ``module``."""
    return traced.graph.get_pruning_group(module, _out_fn(traced, module), list(range(width)))


def _op_name(node) -> str:
    gf = getattr(node, "grad_fn", None)
    if gf is not None and hasattr(gf, "name"):
        return gf.name()
    return type(node.module).__name__


def _is_merge(node) -> bool:
    """An operation combining two or more computed tensors: residual add, multiply, concat."""
    return len(node.inputs) >= 2 and node.type in (tp.ops.OPTYPE.ELEMENTWISE, tp.ops.OPTYPE.CONCAT)


def _pads_channels(node) -> bool:
    gf = getattr(node, "grad_fn", None)
    if gf is None or "ConstantPadNd" not in _op_name(node):
        return False
    pad = list(getattr(gf, "_saved_pad", []) or [])
    # F.pad lists (before, after) pairs from the last dim backwards; for N x C x H x W the third pair is C.
    # Other layouts are caught by the coverage check in _convert (a layer only partly in the group).
    return len(pad) >= 6 and any(pad[4:6])


#: layout changes Torch-Pruning maps index for index; accepted on the path of a group holding a norm
#: (channels moved to the last dimension for a LayerNorm / Linear and back, as in ConvNeXt and ViT's patch
#: embedding), refused elsewhere; compression checks the result against the masked model either way
_LAYOUT_OPS = ("Permute", "Transpose")
_UNMAPPABLE = ( "IndexSelect", "Gather", "Index", "Roll", "Flip", "Stack", "Bmm", "Mm",
               "Matmul", "Addmm", "Baddbmm", "Einsum", "PixelShuffle", "PixelUnshuffle", "ChannelShuffle", "Repeat")


def _inside_linear(node) -> bool:
    """An ``addmm`` / ``mm`` whose only consumer is a Linear (or ``Conv1D``) node: on an N-D input the
    layer runs as view -> matmul -> view, and Torch-Pruning records the matmul as an operation of its own."""
    op = _op_name(node)
    if not op.startswith(("AddmmBackward", "MmBackward")) or len(node.outputs) != 1:
        return False
    out = node.outputs[0].module
    return isinstance(out, nn.Module) and (isinstance(out, nn.Linear) or is_conv1d(out))


def _channel_dim_size(module: nn.Module, kind: str) -> int | None:
    if isinstance(module, CONV_TYPES):
        return module.out_channels if kind in ("out", "depthwise") else module.in_channels
    if isinstance(module, nn.Linear):
        return module.out_features if kind == "out" else module.in_features
    if is_conv1d(module):
        return int(module.weight.shape[1] if kind == "out" else module.weight.shape[0])
    if isinstance(module, BN_TYPES):
        return module.num_features
    if is_norm(module):
        return norm_width(module)
    if isinstance(module, nn.Embedding):
        return module.embedding_dim
    return None


def _merge_member(members: dict, name: str, kind: str, idxs: list[int], roots: list[int]) -> None:
    m = members.get((name, kind))
    if m is None:
        members[(name, kind)] = Member(name, kind, list(idxs), list(roots))
        return
    seen = set(m.idxs)
    for i, r in zip(idxs, roots):
        if i not in seen:
            seen.add(i)
            m.idxs.append(i)
            m.channels.append(r)


def fold_grouped(model: nn.Module, members: dict, grouped: list[tuple[str, str, int]]) -> tuple[int, str | None]:
    """Channels through a grouped convolution (``groups`` = G > 1, not depthwise) must leave every one of
    its G groups alike, or it is no longer a grouped convolution: channel ``j`` of the group becomes the
    ``j``-th channel of *every* convolution group (positions ``j, j + C/G, ...``), so the group's width
    is C/G and a removed channel removes one filter (or input slice) per convolution group, as a
    grouped convolution's weight ``(out, in / G, k, k)`` allows. Rewrites the members' channels in place;
    returns (new width, None) or (0, why the group cannot be folded)."""
    fold: dict[int, int] = {}
    per = None
    for name, kind, groups in grouped:
        m = members[(name, kind)]
        size = _channel_dim_size(model.get_submodule(name), kind)
        if len(set(m.idxs)) != size:
            return 0, f"grouped convolution {name} (groups={groups}) is only partly in the group"
        this = size // groups
        if per is not None and this != per:
            return 0, f"grouped convolutions of different group sizes ({per}, {this}) share the channels"
        per = this
        for i, c in zip(m.idxs, m.channels):
            if fold.setdefault(c, i % per) != i % per:
                return 0, f"grouped convolution {name} (groups={groups}) sees the channels in another order"
    for m in members.values():
        if any(c not in fold for c in m.channels):
            return 0, f"{m.module} carries channels that bypass the grouped convolution"
    for m in members.values():
        m.channels = [fold[c] for c in m.channels]
    return int(per), None


@dataclass
class TracedGroup:
    """A Torch-Pruning group read as prunelab members, indexed by the root layer's output channels:
    ``problems`` name what makes it unprunable, ``merge`` / ``output`` whether its channels reach an
    operation merging computed tensors / the network output."""

    root: str
    width: int
    members: list[Member]
    ops: list[str]
    problems: list[str]
    merge: bool
    output: bool


def read_group(traced: TracedModel, tp_group, root_name: str | None = None) -> TracedGroup | None:
    """Turn a Torch-Pruning group into members indexed by the chosen root's output channels (the first
    producer in module order by default; None when the group has no producer)."""
    dg, names, order = traced.graph, traced.names, traced.order
    members: dict[tuple[str, str], Member] = {}
    ops: list[str] = []
    problems: list[str] = []
    merge = False
    output = False
    has_mapping_op = False
    layout_ops: list[str] = []
    grouped: list[tuple[str, str, int]] = []  # grouped (non-depthwise) convolutions: (layer, side, groups)
    pools_of: dict[int, list[str]] = {}
    for pool, feeder in traced.pools.items():
        if feeder is not None:
            pools_of.setdefault(id(feeder), []).append(pool)
    for item in tp_group.items:
        dep, idxs = item.dep, list(item.idxs)
        roots = list(item.root_idxs)
        node = dep.target
        module = node.module
        if module not in names or dg.is_out_channel_pruning_fn(dep.handler):  # the feeder's *output* channels
            for pool in pools_of.get(id(node), ()):
                _merge_member(members, pool, "pool", idxs, roots)
        if node.type == tp.ops.OPTYPE.OUTPUT:
            output = True
            continue
        if node.type == tp.ops.OPTYPE.PARAMETER:
            pname = traced.param_names.get(module, "unnamed")
            if pname not in traced.param_dims:
                problems.append(f"a bare nn.Parameter ({pname}) used as a weight")
                continue
            _merge_member(members, pname, "param", idxs, roots)
            members[(pname, "param")].dim = traced.param_dims[pname]
            continue
        if module not in names:  # an operation, not a layer
            op = _op_name(node)
            if op not in ops:
                ops.append(op)
            if _is_merge(node):
                merge = True
            if node.type in (tp.ops.OPTYPE.SPLIT, tp.ops.OPTYPE.SLICE, tp.ops.OPTYPE.UNBIND):
                has_mapping_op = True
            if _pads_channels(node):
                problems.append(f"channel padding ({op})")
            elif _inside_linear(node):
                pass  # the matmul of a Linear applied to an (N, ..., F) input: part of the layer itself
            elif op.startswith(_LAYOUT_OPS):
                layout_ops.append(op)
            elif any(op.startswith(u) for u in _UNMAPPABLE):
                problems.append(op)
            if not node.outputs:
                output = True
            continue
        name = names[module]
        out = dg.is_out_channel_pruning_fn(dep.handler)
        if is_depthwise(module):
            kind = "depthwise"
        elif isinstance(module, PRODUCER_TYPES) or is_conv1d(module):
            kind = "out" if out else "in"
        elif isinstance(module, PER_CHANNEL_TYPES):
            kind = "out"
        elif is_norm(module):
            kind = "norm"
            reason = norm_problem(module, name)
            if reason:
                problems.append(reason)
        elif isinstance(module, nn.Embedding):
            kind = "embedding"
        else:
            problems.append(f"{type(module).__name__} at {name}")
            kind = "out" if out else "in"
        if isinstance(module, CONV_TYPES) and module.groups > 1 and kind != "depthwise":
            grouped.append((name, kind, module.groups))
        if kind in ("out", "depthwise", "norm", "embedding") and not node.outputs:
            output = True
        _merge_member(members, name, kind, idxs, roots)
    if layout_ops and not any(m.kind == "norm" for m in members.values()):
        problems.extend(layout_ops)  # a permute / transpose is mapped around a channels-last norm only
    producers = sorted((m for m in members.values() if m.kind in ("out", "depthwise")
                        and is_producer(dg.model.get_submodule(m.module))),
                       key=lambda m: (m.kind == "depthwise", order[m.module]))
    if root_name is None:
        if not producers:
            return None
        root_member = producers[0]
    else:
        root_member = members.get((root_name, "out")) or members.get((root_name, "depthwise"))
        if root_member is None:
            raise PrunelabError(f"layer {root_name} does not produce the channels of its group")
    # Re-express every member's channel ids as the root's output positions.
    tp_to_root = dict(zip(root_member.channels, root_member.idxs))
    width = _channel_dim_size(dg.model.get_submodule(root_member.module), root_member.kind)
    for m in members.values():
        m.channels = [tp_to_root[c] for c in m.channels]
        if m.kind == "param":
            continue
        module = dg.model.get_submodule(m.module)
        size = _channel_dim_size(module, m.kind)
        # A producer's outputs form one group unless a split/slice divides them (BatchNorms and
        # depthwise layers after a concat legitimately hold channels of several groups).
        if m.kind == "out" and is_producer(module) and size != len(m.idxs) and not has_mapping_op:
            problems.append(f"{m.module} covers {len(m.idxs)} of its {size} output channels")
    if len(root_member.idxs) != width:
        problems.append(f"{root_member.module} covers {len(root_member.idxs)} of its {width} output channels")
    if grouped:
        folded, reason = fold_grouped(dg.model, members, grouped)
        if reason:
            problems.append(reason)
        else:
            width = folded
    ordered = sorted(members.values(), key=lambda m: (order.get(m.module, 0), m.kind))
    return TracedGroup(root_member.module, width, ordered, ops, problems, merge, output)


def mask_points(traced: TracedModel, members: list[Member]) -> list[str]:
    """BatchNorms of the group, plus producers whose output does not go straight into one of them."""
    dg, model = traced.graph, traced.model
    bns = {m.module for m in members if m.kind == "out" and isinstance(model.get_submodule(m.module), BN_TYPES)}
    points = []
    for m in members:
        if m.module in bns:
            points.append(m.module)
        elif m.kind in ("out", "depthwise"):
            module = model.get_submodule(m.module)
            node = dg.module2node.get(module)
            followers = [] if node is None else [traced.names.get(o.module) for o in node.outputs]
            if not followers or any(f not in bns for f in followers):
                points.append(m.module)
    return points


def vanishable(traced: TracedModel, members: list[Member], merge: bool) -> bool:
    """Every consumer takes all its input from the group, and its output reaches a residual add or a
    concat through single-input operations (so the block reduces to its shortcut, never the network)."""
    dg, model = traced.graph, traced.model
    if merge:
        return False
    consumers = [m for m in members if m.kind == "in"]
    if not consumers:
        return False
    for m in consumers:
        module = model.get_submodule(m.module)
        if _channel_dim_size(module, "in") != len(m.idxs):
            return False
        node = dg.module2node[module]
        frontier, seen, reached = list(node.outputs), set(), False
        while frontier:
            n = frontier.pop()
            if id(n) in seen:
                continue
            seen.add(id(n))
            if _is_merge(n):
                reached = True
                continue
            if isinstance(n.module, nn.Module) and is_producer(n.module):
                return False
            frontier.extend(n.outputs)
        if not reached:
            return False
    return True


def make_group(traced: TracedModel, found: TracedGroup, name: str, unit=None) -> ChannelGroup:
    """The :class:`ChannelGroup` of a read group: its mask points, whether it may vanish, and the
    layers a weight-based score reads (the unit's conv and BN for a zoo width unit)."""
    model, members = traced.model, found.members
    if unit is not None:
        producers, bns = [unit.conv], [unit.bn] if unit.bn else []
    else:
        producers = [m.module for m in members
                     if m.kind == "out" and is_producer(model.get_submodule(m.module))]
        if not producers:
            producers = [m.module for m in members if m.kind == "depthwise"]
        bns = [m.module for m in members if m.kind == "out" and isinstance(model.get_submodule(m.module), BN_TYPES)]
    if any(m.kind in STREAM_KINDS for m in members):
        # A norm, embedding or bare parameter in the group: mask where the channels are read (the
        # consumers' inputs) and re-normalise the norms over the live channels; what a removed channel
        # carries elsewhere (a class token, a layer scale) then reaches nothing, as in the compressed model.
        return ChannelGroup(name=name, root=found.root, width=found.width, members=members, mask_points=[],
                            vanishable=False, producers=producers, batchnorms=bns, ops=found.ops, unit=unit,
                            input_points=[m.module for m in members if m.kind == "in"],
                            norm_points=[m.module for m in members if m.kind == "norm"])
    return ChannelGroup(name=name, root=found.root, width=found.width, members=members,
                        mask_points=mask_points(traced, members), vanishable=vanishable(traced, members, found.merge),
                        producers=producers, batchnorms=bns, ops=found.ops, unit=unit)


def _excluded(model: nn.Module, members: list[Member], patterns: Sequence[str]) -> str | None:
    for m in members:
        if m.kind not in ("out", "depthwise"):
            continue
        cls = type(model.get_submodule(m.module)).__name__
        for p in patterns:
            if fnmatch.fnmatchcase(m.module, p) or fnmatch.fnmatchcase(cls, p):
                return p
    return None


def _check_patterns_match(model: nn.Module, patterns: Sequence[str]) -> None:
    """A pattern that matches no module path or class name is almost always a typo: refuse it."""
    targets = [(n, type(m).__name__) for n, m in model.named_modules() if n]
    for p in patterns:
        if not any(fnmatch.fnmatchcase(n, p) or fnmatch.fnmatchcase(c, p) for n, c in targets):
            raise PrunelabError(f"exclude pattern {p!r} matches no module path or class name of the model")


def unit_group(unit: AttentionUnit | MlpUnit) -> ChannelGroup:
    """The :class:`ChannelGroup` of a transformer unit (:mod:`prunelab.prune.structured.transformer`):
    its channels are key/value heads (with their query groups) or MLP hidden units; the soft mask is a
    gate on the input of the output (down) projection."""
    if isinstance(unit, AttentionUnit):
        qch, kvch = unit.query_channels(), unit.kv_channels()
        nq = len(qch)
        if unit.fused:
            e = nq
            members = [Member(unit.q, "out", [*range(nq), *range(e, e + len(kvch)), *range(2 * e, 2 * e + len(kvch))],
                              [*qch, *kvch, *kvch])]
            producers = [unit.q]
        else:
            members = [Member(unit.q, "out", list(range(nq)), qch), Member(unit.k, "out", list(range(len(kvch))), kvch),
                       Member(unit.v, "out", list(range(len(kvch))), list(kvch))]
            producers = [unit.q, unit.k, unit.v]
        members.append(Member(unit.o, "in", list(range(nq)), list(qch)))
        members.append(Member(f"{unit.path}:attention", "pool", list(range(nq)), list(qch)))
        return ChannelGroup(name=unit.name, root=unit.q, width=unit.width, members=members, mask_points=[],
                            vanishable=False, producers=producers, batchnorms=[], ops=[], input_points=[unit.o],
                            structure=unit)
    idx = list(range(unit.width))
    members = [Member(p, "out", idx, list(idx)) for p in unit.producers]
    members.append(Member(unit.down, "in", idx, list(idx)))
    return ChannelGroup(name=unit.name, root=unit.producers[0], width=unit.width, members=members, mask_points=[],
                        vanishable=False, producers=list(unit.producers), batchnorms=[], ops=[],
                        input_points=[unit.down], structure=unit)


def _out_fn(traced: TracedModel, module: nn.Module):
    if is_conv1d(module):
        return traced.graph.get_pruner_of_module(module).prune_out_channels
    return out_channel_fn(module)


def out_width(module: nn.Module) -> int:
    """Output channels of a producer (a convolution, ``nn.Linear`` or ``Conv1D``)."""
    return _channel_dim_size(module, "depthwise" if is_depthwise(module) else "out")


_width_of = out_width


def torch_pruning_groups(traced: TracedModel, skip: set[str], deadline: float | None) -> list:
    """Torch-Pruning's group of every producer not already covered by an earlier group's output
    channels (``DependencyGraph.get_all_groups``' walk, with a clock and without the layers in ``skip``)."""
    dg, names = traced.graph, traced.names
    roots = [m for m in dg.module2node if isinstance(m, nn.Module) and is_producer(m) and names.get(m) not in skip]
    covered: set[nn.Module] = set()
    out = []
    for i, m in enumerate(roots):
        if m in covered:
            continue
        if deadline is not None and time.monotonic() > deadline:
            raise DiscoveryTimeout(f"graph discovery ran past its time budget after {i} of {len(roots)} layers "
                                   f"(next: {names.get(m)})")
        try:
            g = dg.get_pruning_group(m, _out_fn(traced, m), list(range(_width_of(m))))
        except PrunelabError:
            raise
        except Exception as exc:
            raise PrunelabError(f"Torch-Pruning cannot group the channels of layer {names.get(m)} "
                                f"({type(m).__name__}): {describe_exception(exc)}") from exc
        for item in g.items:
            if dg.is_out_channel_pruning_fn(item.dep.handler):
                covered.add(item.dep.target.module)
        out.append(g)
    return out


def find_groups(model: nn.Module, input_shape, scope: str = "internal",
                exclude: Iterable[str] = (), spec=None, units=None,
                budget_s: float | None = DISCOVERY_BUDGET_S) -> GroupSet:
    """The prunable channel groups of ``model`` (see the module docstring for scopes and exclusions).

    ``input_shape``: the example input, a shape or an :class:`~prunelab.models.inputs.InputSpec`.
    ``spec`` (an :class:`~prunelab.models.ArchSpec`) selects the zoo family's width units for scope
    ``internal``; ``units`` passes them directly. Without either, internal groups follow the generic rule.
    Attention heads and MLP widths of transformer blocks are found from the modules
    (:mod:`prunelab.prune.structured.transformer`), in either scope. ``budget_s`` bounds tracing plus
    grouping (None: no bound); past it, discovery stops with one line naming where it was.
    """
    check_choice("scope", scope, SCOPES)
    patterns = [p for p in exclude if p]
    _check_patterns_match(model, patterns)
    inputs = as_input_spec(input_shape)
    if units is None and spec is not None:
        from prunelab.models import width_units

        try:
            units = width_units(model, spec)
        except PrunelabError:
            units = None
    structure = find_units(model)
    deadline = None if budget_s is None else time.monotonic() + float(budget_s)
    with time_budget(budget_s, "graph discovery"):
        with stage("tracing the model with Torch-Pruning"):
            traced = build_graph(model, inputs, structure)
        dg = traced.graph
        unit_by_conv = {u.conv: u for u in units or ()}
        internal = structure.internal_producers()

        raw: list[tuple[object, str | None, object]] = []  # (tp group, root name, unit)
        with stage("grouping channels"):
            if scope == "internal" and units is not None:
                if dg is None:
                    raise PrunelabError(traced.failure)
                for u in units:
                    if u.width < 1:
                        continue
                    conv = model.get_submodule(u.conv)
                    if conv not in dg.module2node:
                        raise PrunelabError(f"width unit {u.name}: layer {u.conv} is not reached by the forward pass")
                    raw.append((layer_group(traced, conv, u.width), u.conv, u))
            elif dg is not None:
                raw.extend((g, None, None) for g in torch_pruning_groups(traced, internal, deadline))

    groups: list[ChannelGroup] = []
    skipped: list[dict] = []
    if traced.failure:
        skipped.append({"group": "(layers outside the attention and MLP units)", "reason": traced.failure})
    taken: set[str] = set()
    for tp_group, root_name, unit in raw:
        found = read_group(traced, tp_group, root_name)
        if found is None:
            continue
        if unit is None and found.root in unit_by_conv:
            unit = unit_by_conv[found.root]
        name = unit.name if unit is not None else found.root
        if name in taken:
            continue
        taken.add(name)
        if internal.intersection(m.module for m in found.members if m.kind in ("out", "depthwise")):
            continue  # channels of attention heads / MLP widths: the transformer units below
        if found.output:
            skipped.append({"group": name, "reason": "its channels reach the network output (never pruned)"})
            continue
        if scope == "internal" and units is None and found.merge:
            skipped.append({"group": name, "reason": "its channels reach a residual add, multiply or concat "
                                                     "(scope 'internal' keeps those streams; --scope all prunes them)"})
            continue
        if unit is not None and unit.bn and unit.bn not in {m.module for m in found.members}:
            found.problems.append(f"width unit BatchNorm {unit.bn} is not coupled to {unit.conv}")
        if found.problems:
            skipped.append({"group": name, "reason": "; ".join(dict.fromkeys(found.problems))})
            continue
        hit = _excluded(model, found.members, patterns)
        if hit is not None:
            skipped.append({"group": name, "reason": f"excluded by {hit!r}"})
            continue
        groups.append(make_group(traced, found, name, unit))
    for t_unit in structure.all():
        group = unit_group(t_unit)
        hit = _excluded(model, group.members, patterns)
        if hit is not None:
            skipped.append({"group": group.name, "reason": f"excluded by {hit!r}"})
            continue
        groups.append(group)
    if scope == "internal" and units is not None:  # the family's units only: list every other layer too
        covered = {m.module for g in groups for m in g.members if m.kind in ("out", "depthwise")}
        covered.update(s["group"] for s in skipped)
        for name, module in model.named_modules():
            if is_producer(module) and name not in covered and name in traced.layers:
                skipped.append({"group": name, "reason": "not a width unit of the family (scope 'internal' prunes "
                                                         "block-internal widths; --scope all prunes the rest)"})
    groups.sort(key=lambda g: (traced.order[g.root], g.name))
    return GroupSet(groups, scope, inputs.shape, traced.layers, skipped, inputs)
