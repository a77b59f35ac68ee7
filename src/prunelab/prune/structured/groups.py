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
  jointly across every layer adding into them.

Groups passing through an operation whose channel correspondence Torch-Pruning cannot map (a pad
along the channel dimension, as in option-A CIFAR ResNet shortcuts; grouped non-depthwise
convolutions; layers only partly covered by the group) are not prunable: they are listed in
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

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from prunelab.errors import PrunelabError, check_choice
from prunelab.models.common import BN_TYPES, CONV_TYPES, POOL_TYPES
from prunelab.models.inputs import InputSpec, as_input_spec

SCOPES = ("internal", "all")
#: the Torch-Pruning releases this module is tested with (pyproject.toml bounds the dependency to them)
TORCH_PRUNING_TESTED = ("1.5.3", "1.6.0", "1.6.1")

PRODUCER_TYPES = (*CONV_TYPES, nn.Linear)
# Layers whose parameters are one value per channel (sliced with the channel, no mixing across channels).
PER_CHANNEL_TYPES = (*BN_TYPES, nn.PReLU)


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

    def modules(self, kind: str | None = None) -> list[str]:
        return [m.module for m in self.members if kind is None or m.kind == kind]


@dataclass
class LayerShape:
    """Geometry of one Conv / Linear layer from the tracing forward pass (for the cost model)."""

    name: str
    kind: str  # conv | linear | pool
    in_channels: int
    out_channels: int
    groups: int
    kernel: int
    positions: int  # output positions per sample (H_out*W_out; tokens for a Linear; input positions for a pool)
    bias: bool


@dataclass
class GroupSet:
    """The prunable groups of a model, plus what was skipped and why."""

    groups: list[ChannelGroup]
    scope: str
    input_shape: tuple[int, ...]
    layers: dict[str, LayerShape]
    skipped: list[dict] = field(default_factory=list)
    #: the example inputs the model was traced with (None: one float tensor of ``input_shape``)
    inputs: InputSpec | None = None

    @property
    def spec(self) -> InputSpec:
        """The tracing inputs as an :class:`~prunelab.models.inputs.InputSpec`."""
        return self.inputs if self.inputs is not None else as_input_spec(self.input_shape)

    def __iter__(self):
        return iter(self.groups)

    def __len__(self) -> int:
        return len(self.groups)

    def by_name(self) -> dict[str, ChannelGroup]:
        return {g.name: g for g in self.groups}

    @property
    def total_channels(self) -> int:
        return sum(g.width for g in self.groups)


def example_batch(input_shape: InputSpec | Sequence[int], batch: int = 1, device: torch.device | str = "cpu",
                  seed: int = 0):
    """A fixed random input used for tracing and for the compressed == masked check: a tensor for an
    ``input_shape`` (random normal, float32), else the spec's tuple or dict of tensors."""
    return as_input_spec(input_shape).example(batch, seed=seed, device=device)


def tp_example_inputs(example) -> tuple | dict:
    """Example inputs in Torch-Pruning's ``example_inputs`` form: a dict (called with keywords) or a
    tuple (called positionally)."""
    return example if isinstance(example, dict | tuple) else (example,)


def _module_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


@dataclass
class TracedModel:
    """Torch-Pruning's dependency graph of a model, and what prunelab records beside it: the
    Conv / Linear / average-pool geometry (:class:`LayerShape`), the graph node feeding each average
    pool (None where none was found), and module / parameter names."""

    graph: tp.DependencyGraph
    layers: dict[str, LayerShape]
    pools: dict[str, object]
    names: dict[nn.Module, str]
    order: dict[str, int]  # module path -> position in named_modules order
    param_names: dict[nn.Parameter, str]

    @property
    def model(self) -> nn.Module:
        return self.graph.model


def build_graph(model: nn.Module, input_shape: InputSpec | Sequence[int]) -> TracedModel:
    """Trace ``model`` with Torch-Pruning on one example input; also record Conv / Linear / average-
    pool geometry for the cost model (positions summed over calls of a module used several times).

    The model's train/eval mode is restored afterwards (Torch-Pruning leaves it in eval mode).
    """
    names = {m: n for n, m in model.named_modules()}
    layers: dict[str, LayerShape] = {}
    pool_inputs: dict[str, object] = {}

    def record(module: nn.Module, inputs, output) -> None:
        if not isinstance(output, torch.Tensor) or output.dim() < 2:
            return
        name = names[module]
        if isinstance(module, CONV_TYPES):
            shape = LayerShape(name, "conv", module.in_channels, module.out_channels, module.groups,
                               int(torch.tensor(module.kernel_size).prod()), int(output[0, 0].numel()),
                               module.bias is not None)
        elif isinstance(module, nn.Linear):
            pos = int(output.numel() // (output.shape[0] * module.out_features))
            shape = LayerShape(name, "linear", module.in_features, module.out_features, 1, 1, pos,
                               module.bias is not None)
        else:  # average pooling: MACs = input numel (the counters' convention)
            x = inputs[0]
            if not isinstance(x, torch.Tensor) or x.dim() < 3:
                return
            pool_inputs[name] = x.grad_fn
            shape = LayerShape(name, "pool", x.shape[1], x.shape[1], 1, 1, int(x[0, 0].numel()), False)
        prev = layers.get(name)
        if prev is not None:
            shape.positions += prev.positions
        layers[name] = shape

    handles = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, (*PRODUCER_TYPES,
                                                                                           *POOL_TYPES))]
    was_training = model.training
    try:
        with torch.enable_grad():
            dg = tp.DependencyGraph().build_dependency(
                model, example_inputs=tp_example_inputs(example_batch(input_shape, 1, _module_device(model))),
                verbose=False)
    except PrunelabError:
        raise
    except Exception as exc:  # tracing failures of Torch-Pruning are the user's model, not a bug here
        raise PrunelabError(f"cannot trace the model's channel dependencies with Torch-Pruning: "
                            f"{type(exc).__name__}: {exc}") from exc
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    # An average pool is not a Torch-Pruning layer: find the graph node that feeds it.
    by_grad_fn = {id(node.grad_fn): node for node in dg.module2node.values() if node.grad_fn is not None}
    pools = {name: by_grad_fn.get(id(gf)) for name, gf in pool_inputs.items()}
    order = {n: i for i, n in enumerate(names.values())}
    return TracedModel(dg, layers, pools, names, order, {p: n for n, p in model.named_parameters()})


def out_channel_fn(module: nn.Module):
    """Torch-Pruning's function removing output channels of ``module`` (a conv, depthwise conv or linear)."""
    if isinstance(module, nn.Linear):
        return tp.prune_linear_out_channels
    return tp.prune_depthwise_conv_out_channels if is_depthwise(module) else tp.prune_conv_out_channels


def layer_group(traced: TracedModel, module: nn.Module, width: int):
    """Torch-Pruning's group of every layer coupled to the ``width`` output channels of ``module``."""
    return traced.graph.get_pruning_group(module, out_channel_fn(module), list(range(width)))


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


_UNMAPPABLE = ("Permute", "Transpose", "IndexSelect", "Gather", "Index", "Roll", "Flip", "Stack", "Bmm", "Mm",
               "Matmul", "Addmm", "Baddbmm", "Einsum", "PixelShuffle", "PixelUnshuffle", "ChannelShuffle", "Repeat")


def _channel_dim_size(module: nn.Module, kind: str) -> int | None:
    if isinstance(module, CONV_TYPES):
        return module.out_channels if kind in ("out", "depthwise") else module.in_channels
    if isinstance(module, nn.Linear):
        return module.out_features if kind == "out" else module.in_features
    if isinstance(module, BN_TYPES):
        return module.num_features
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
            problems.append(f"a bare nn.Parameter ({traced.param_names.get(module, 'unnamed')}) used as a weight")
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
            elif any(op.startswith(u) for u in _UNMAPPABLE):
                problems.append(op)
            if not node.outputs:
                output = True
            continue
        name = names[module]
        out = dg.is_out_channel_pruning_fn(dep.handler)
        if is_depthwise(module):
            kind = "depthwise"
        elif isinstance(module, PRODUCER_TYPES):
            kind = "out" if out else "in"
        elif isinstance(module, PER_CHANNEL_TYPES):
            kind = "out"
        else:
            problems.append(f"{type(module).__name__} at {name}")
            kind = "out" if out else "in"
        if isinstance(module, CONV_TYPES) and module.groups > 1 and kind != "depthwise":
            problems.append(f"grouped convolution {name} (groups={module.groups})")
        if kind in ("out", "depthwise") and not node.outputs:
            output = True
        _merge_member(members, name, kind, idxs, roots)
    producers = sorted((m for m in members.values() if m.kind in ("out", "depthwise")
                        and isinstance(dg.model.get_submodule(m.module), PRODUCER_TYPES)),
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
        module = dg.model.get_submodule(m.module)
        size = _channel_dim_size(module, m.kind)
        # A producer's outputs form one group unless a split/slice divides them (BatchNorms and
        # depthwise layers after a concat legitimately hold channels of several groups).
        if m.kind == "out" and isinstance(module, PRODUCER_TYPES) and size != len(m.idxs) and not has_mapping_op:
            problems.append(f"{m.module} covers {len(m.idxs)} of its {size} output channels")
    if len(root_member.idxs) != width:
        problems.append(f"{root_member.module} covers {len(root_member.idxs)} of its {width} output channels")
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
            if isinstance(n.module, PRODUCER_TYPES):
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
                     if m.kind == "out" and isinstance(model.get_submodule(m.module), PRODUCER_TYPES)]
        if not producers:
            producers = [m.module for m in members if m.kind == "depthwise"]
        bns = [m.module for m in members if m.kind == "out" and isinstance(model.get_submodule(m.module), BN_TYPES)]
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


def find_groups(model: nn.Module, input_shape: InputSpec | Sequence[int], scope: str = "internal",
                exclude: Iterable[str] = (), spec=None, units=None) -> GroupSet:
    """The prunable channel groups of ``model`` (see the module docstring for scopes and exclusions).

    ``spec`` (an :class:`~prunelab.models.ArchSpec`) selects the zoo family's width units for scope
    ``internal``; ``units`` passes them directly. Without either, internal groups follow the generic rule.
    ``input_shape`` is an :class:`~prunelab.models.inputs.InputSpec` or one float input's shape.
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
    traced = build_graph(model, inputs)
    dg = traced.graph
    unit_by_conv = {u.conv: u for u in units or ()}

    raw: list[tuple[object, str | None, object]] = []  # (tp group, root name, unit)
    if scope == "internal" and units is not None:
        for u in units:
            if u.width < 1:
                continue
            conv = model.get_submodule(u.conv)
            if conv not in dg.module2node:
                raise PrunelabError(f"width unit {u.name}: layer {u.conv} is not reached by the forward pass")
            raw.append((layer_group(traced, conv, u.width), u.conv, u))
    else:
        for g in dg.get_all_groups(root_module_types=PRODUCER_TYPES):
            raw.append((g, None, None))

    groups: list[ChannelGroup] = []
    skipped: list[dict] = []
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
        if found.output:
            continue  # the network's outputs (logits) are never pruned
        if scope == "internal" and units is None and found.merge:
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
    groups.sort(key=lambda g: traced.order[g.root])
    return GroupSet(groups, scope, inputs.shape, traced.layers, skipped, None if inputs.is_plain else inputs)
