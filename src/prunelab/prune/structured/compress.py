"""Physical compression: the masked model becomes a smaller dense ``nn.Module``.

Each layer touched by a group with removed channels is cut with Torch-Pruning's pruning function
for its type (producers lose output filters, BatchNorms lose gamma, beta and running stats,
depthwise layers lose their filters, consumers lose input slices at the right concat offsets). A
group that loses every channel is handled as pytorch-prunes does: producers output nothing, per-
channel layers vanish, consumers output zeros (or their bias), so the block reduces to its shortcut.

Every compression is checked: in eval mode, the compressed model's output on a fixed input must equal
the masked model's within 1e-4 relative (max abs difference over max(1, max |output|)), with the same
shape. A mismatch raises :class:`PrunelabError` naming the operations of the offending group.
"""

from __future__ import annotations

import copy

import torch
import torch_pruning as tp
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.models.common import BN_TYPES, CONV_TYPES
from prunelab.models.inputs import call_model, logits_of
from prunelab.prune.structured.groups import ChannelGroup, GroupSet, describe_exception, is_depthwise
from prunelab.prune.structured.layers import prune_conv1d_in_channels, prune_conv1d_out_channels
from prunelab.prune.structured.masks import ChannelMasks
from prunelab.prune.structured.norms import is_norm, prune_norm
from prunelab.prune.structured.transformer import AttentionUnit, is_conv1d, update_attributes
from prunelab.prune.structured.zero import emptied

RTOL = 1e-4


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _check_keep(groups: GroupSet, keep: dict[str, list[int]]) -> dict[str, list[int]]:
    by_name = groups.by_name()
    unknown = sorted(set(keep) - set(by_name))
    if unknown:
        raise PrunelabError(f"unknown channel group(s) {unknown[:3]}; this model has {len(by_name)} groups")
    out = {}
    for name, kept in keep.items():
        g = by_name[name]
        kept = sorted({int(c) for c in kept})
        if kept and (kept[0] < 0 or kept[-1] >= g.width):
            raise PrunelabError(f"group {name}: kept channels must lie in [0, {g.width})")
        if not kept and not g.vanishable:
            raise PrunelabError(f"group {name} cannot lose every channel (it does not reduce to a shortcut)")
        out[name] = kept
    return out


def prune_in_place(model: nn.Module, groups: GroupSet, keep: dict[str, list[int]]) -> nn.Module:
    """Compress ``model`` itself (no masks on it) so that group ``g`` keeps channels ``keep[g]``.

    The groups already list every layer they touch with the positions of their channels in it (concat
    offsets included), in the uncompressed model's coordinates. So the removed positions of all groups
    are gathered per layer and side, and each layer is cut once with Torch-Pruning's pruning function
    for its type; no second trace is needed. Groups absent from ``keep`` are left whole. Returns ``model``.
    """
    keep = _check_keep(groups, keep)
    by_name = groups.by_name()
    removed: dict[tuple[str, str], set[int]] = {}
    for name, kept in keep.items():
        g = by_name[name]
        if len(kept) == g.width:
            continue
        alive = set(kept)
        for m in g.members:
            if m.kind == "pool":
                continue
            side = {"in": "in", "param": "param"}.get(m.kind, "out")
            removed.setdefault((m.module, side), set()).update(i for i, c in zip(m.idxs, m.channels) if c not in alive)
    tied = _tied_parameters(model)
    for (name, side), idxs in removed.items():
        if not idxs:
            continue
        if side == "param":
            _prune_parameter(model, name, groups_dim(groups, name), sorted(idxs))
            continue
        module = model.get_submodule(name)
        try:
            _prune_fn(module, side)(module, sorted(idxs))
        except PrunelabError:
            raise
        except Exception as exc:
            raise PrunelabError(f"could not cut the {side}put channels of layer {name} ({type(module).__name__}): "
                                f"{describe_exception(exc)}") from exc
    _retie(model, tied)
    for name, kept in keep.items():
        if not kept:
            _vanish(model, by_name[name])
        unit = by_name[name].structure
        if isinstance(unit, AttentionUnit) and len(kept) < by_name[name].width:
            update_attributes(model, unit, len(kept))
        if len(kept) < by_name[name].width:
            update_hidden_size(model, by_name[name], len(kept))
    return model


def _tied_parameters(model: nn.Module) -> list[list[str]]:
    """Paths sharing one parameter (tied input embedding and output head, as in GPT-2)."""
    by_id: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(name)
    return [names for names in by_id.values() if len(names) > 1]


def _retie(model: nn.Module, tied: list[list[str]]) -> None:
    """Cutting each owner of a tied parameter gives each its own copy: where the copies agree (both sides
    cut alike, e.g. an embedding's columns and the tied head's inputs), they become one parameter again."""
    for names in tied:
        first = model.get_parameter(names[0])
        for other in names[1:]:
            owner_name, _, attr = other.rpartition(".")
            owner = model.get_submodule(owner_name) if owner_name else model
            p = getattr(owner, attr)
            if p is not first and p.shape == first.shape and torch.equal(p, first):
                setattr(owner, attr, first)


def groups_dim(groups: GroupSet, param: str) -> int:
    """The channel dimension of bare parameter ``param`` (as its groups record it)."""
    for g in groups:
        for m in g.members:
            if m.kind == "param" and m.module == param:
                return int(m.dim)
    raise PrunelabError(f"no group holds the parameter {param}")


def _prune_parameter(model: nn.Module, path: str, dim: int, idxs: list[int]) -> None:
    """Remove positions ``idxs`` along ``dim`` of a bare parameter (a new leaf ``nn.Parameter``)."""
    owner_name, _, attr = path.rpartition(".")
    owner = model.get_submodule(owner_name) if owner_name else model
    p = getattr(owner, attr)
    drop = set(idxs)
    keep = torch.tensor([i for i in range(p.shape[dim]) if i not in drop], dtype=torch.long, device=p.device)
    setattr(owner, attr, nn.Parameter(p.detach().index_select(dim, keep).clone(), requires_grad=p.requires_grad))


#: config fields holding a transformer's hidden (residual-stream) width
HIDDEN_SIZE_FIELDS = ("hidden_size", "n_embd", "d_model", "dim")


def update_hidden_size(model: nn.Module, group: ChannelGroup, kept: int) -> None:
    """After a hidden-width group lost channels: the config's hidden size and the modules' copies of
    it (``hidden_size`` / ``embed_dim`` attributes equal to the old width) become ``kept``; an explicit
    ``head_dim`` in the config stays as stated."""
    if not any(m.kind in ("norm", "embedding", "param") for m in group.members):
        return
    config = getattr(model, "config", None)
    if config is None:
        return
    field_name = next((f for f in HIDDEN_SIZE_FIELDS if isinstance(getattr(config, f, None), int)), None)
    if field_name is None or getattr(config, field_name) != group.width:
        return
    setattr(config, field_name, kept)
    touched = {m.module.rpartition(".")[0] if m.kind == "param" else m.module for m in group.members}
    for name, module in model.named_modules():
        if not any(t == name or t.startswith(name + ".") for t in touched if name):
            continue
        for attr in ("hidden_size", "embed_dim"):
            if getattr(module, attr, None) == group.width and not isinstance(getattr(type(module), attr, None),
                                                                                 property):
                setattr(module, attr, kept)


def _prune_fn(module: nn.Module, side: str):
    if is_depthwise(module):
        return tp.prune_depthwise_conv_out_channels
    if isinstance(module, CONV_TYPES):
        return tp.prune_conv_out_channels if side == "out" else tp.prune_conv_in_channels
    if isinstance(module, nn.Linear):
        return tp.prune_linear_out_channels if side == "out" else tp.prune_linear_in_channels
    if is_conv1d(module):
        return prune_conv1d_out_channels if side == "out" else prune_conv1d_in_channels
    if isinstance(module, BN_TYPES):
        return tp.prune_batchnorm_out_channels
    if isinstance(module, nn.PReLU):
        return tp.prune_prelu_out_channels
    if is_norm(module):
        return prune_norm
    if isinstance(module, nn.Embedding):
        return tp.prune_embedding_out_channels
    raise PrunelabError(f"cannot remove channels of {type(module).__name__}")


def _vanish(model: nn.Module, group: ChannelGroup) -> None:
    for m in group.members:
        if m.kind == "pool":
            continue
        module = model.get_submodule(m.module)
        _set_module(model, m.module, emptied(module, m.kind))


def compress(model: nn.Module, groups: GroupSet, keep: dict[str, list[int]] | None = None,
             masks: ChannelMasks | None = None, check: bool = True) -> nn.Module:
    """A compressed copy of ``model``: group ``g`` keeps ``keep[g]`` (default: ``masks.kept()``).

    ``model`` is not modified (its masks, if any, stay attached). With ``check``, the copy's output is
    compared with the masked model's (see the module docstring).
    """
    if keep is None:
        if masks is None:
            raise PrunelabError("compress needs the kept channels or the channel masks")
        keep = masks.kept()
    keep = {n: k for n, k in keep.items()}
    ctx = masks.detached() if masks is not None else _null()
    with ctx:
        small = copy.deepcopy(model)
    prune_in_place(small, groups, keep)
    if check:
        verify(model, small, groups, keep, masks)
    return small


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def verify(reference: nn.Module, small: nn.Module, groups: GroupSet, keep: dict[str, list[int]],
           masks: ChannelMasks | None = None) -> float:
    """Check compressed == masked in eval mode; returns the relative max abs difference.

    ``reference`` is the uncompressed model; when ``masks`` is None, temporary masks for ``keep``
    are attached to it for the comparison.
    """
    temp = None
    if masks is None:
        temp = ChannelMasks(reference, groups, keep)
    x = groups.example(2, reference, seed=1234)
    modes = (reference.training, small.training)
    reference.eval()
    small.eval()
    try:
        with torch.no_grad():
            want = logits_of(call_model(reference, x))
            try:
                got = logits_of(call_model(small, x))
            except Exception as exc:
                raise PrunelabError(f"the compressed model does not run ({describe_exception(exc)})") from exc
    finally:
        reference.train(modes[0])
        small.train(modes[1])
        if temp is not None:
            temp.detach()
    want, got = logits_of(want), logits_of(got)
    if want.shape != got.shape:
        raise PrunelabError(f"compressed output shape {tuple(got.shape)} differs from {tuple(want.shape)}")
    scale = max(1.0, float(want.abs().max()))
    diff = float((want - got).abs().max()) / scale
    if not diff <= RTOL:
        suspects = [g for g in groups if keep.get(g.name) is not None and len(keep[g.name]) < g.width]
        ops = sorted({op for g in suspects for op in g.ops if not _plain_op(op)})
        names = ", ".join(g.name for g in suspects[:3])
        detail = f"operations on its channel path: {', '.join(ops)}" if ops else "no unusual operation found"
        raise PrunelabError(f"compressed model differs from the masked one by {diff:.2e} (relative) after "
                            f"pruning group(s) {names}; {detail}; exclude the group or use --scope internal")
    return diff


_PLAIN = ("Relu", "Hardtanh", "Silu", "Gelu", "Sigmoid", "Tanh", "Add", "Cat", "Mean", "AvgPool", "MaxPool",
          "AdaptiveAvgPool", "AdaptiveMaxPool", "View", "Reshape", "T", "Clone", "Dropout", "LeakyRelu", "Elu",
          "Hardswish", "Hardsigmoid", "Mul")


def _plain_op(op: str) -> bool:
    base = op.rstrip("0123456789").removesuffix("Backward")
    return base in _PLAIN
