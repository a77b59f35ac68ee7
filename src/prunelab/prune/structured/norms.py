"""Normalisation layers as per-channel layers of a channel group: LayerNorm, RMSNorm, GroupNorm.

A norm holds one scale (and shift) per channel, so removing channels slices its parameters with the
channel, as Torch-Pruning's ``LayernormPruner`` / ``GroupNormPruner`` do (Fang et al., "DepGraph",
CVPR 2023; ``torch_pruning/pruner/function.py``). Unlike a BatchNorm, its statistics are taken over
the channels themselves, so a removed channel changes the others' mean and variance: the soft mask of
a group holding a norm therefore re-normalises over the *live* channels only
(:func:`normalise_live`), which is what the compressed norm computes, and outputs zeros elsewhere.

Supported (registry :data:`NORM_RULES`, first match wins):

* ``nn.LayerNorm`` over the last dimension (one-dimensional ``normalized_shape``), including
  channels-first subclasses with ``data_format == "channels_first"`` (ConvNeXt's ``ConvNextLayerNorm``,
  Liu et al. 2022), whose channels are dimension 1;
* RMSNorm: ``nn.RMSNorm`` and Hugging Face RMSNorms (``LlamaRMSNorm`` and alike: a class named
  ``*RMSNorm`` with a one-dimensional ``weight`` over the last dimension; Zhang & Sennrich 2019), pruned
  through :class:`RMSNormPruner`, a Torch-Pruning customized pruner;
* ``nn.GroupNorm`` (Wu & He 2018) with one group (statistics over all channels) or one channel per
  group. With ``1 < num_groups < num_channels`` a channel cannot be removed on its own (each group must
  keep the same number of channels), so the group is refused with that reason (:func:`norm_problem`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn


def is_rmsnorm(module: nn.Module) -> bool:
    """``nn.RMSNorm`` or a Hugging Face RMSNorm (a ``*RMSNorm`` class with a 1-D ``weight``)."""
    if isinstance(module, getattr(nn, "RMSNorm", ())):
        return True
    w = getattr(module, "weight", None)
    return type(module).__name__.endswith("RMSNorm") and isinstance(w, torch.Tensor) and w.dim() == 1


def _channels_first(module: nn.Module) -> bool:
    return getattr(module, "data_format", "channels_last") == "channels_first"


def _live_params(module: nn.Module, live: torch.Tensor) -> dict[str, torch.Tensor]:
    return {n: p.index_select(0, live) for n, p in module.named_parameters(recurse=False)}


def _layer_norm(module: nn.LayerNorm, x: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
    p = _live_params(module, live)
    return F.layer_norm(x, (live.numel(),), p.get("weight"), p.get("bias"), module.eps)


def _rms_norm(module: nn.Module, x: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
    if isinstance(module, getattr(nn, "RMSNorm", ())):
        p = _live_params(module, live)
        return F.rms_norm(x, (live.numel(),), p.get("weight"), module.eps)
    # A Hugging Face RMSNorm: its own forward (without hooks), with the live channels' weight swapped in
    # for the call (it reads no width attribute; gradients reach the full weight through the slice).
    saved = dict(module._parameters)
    try:
        module._parameters.update(_live_params(module, live))
        return module.forward(x)
    finally:
        module._parameters.update(saved)


def _group_norm(module: nn.GroupNorm, x: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
    p = _live_params(module, live)
    groups = 1 if module.num_groups == 1 else live.numel()
    return F.group_norm(x, groups, p.get("weight"), p.get("bias"), module.eps)


@dataclass(frozen=True)
class NormRule:
    """How a kind of norm is recognised, where its channels are, and how it runs on the live channels."""

    name: str
    matches: Callable[[nn.Module], bool]
    channel_dim: Callable[[nn.Module], int]
    live_forward: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def _prune_rmsnorm(layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
    drop = {int(i) for i in idxs}
    keep = torch.tensor([i for i in range(layer.weight.shape[0]) if i not in drop], dtype=torch.long,
                        device=layer.weight.device)
    layer.weight = nn.Parameter(layer.weight.detach().index_select(0, keep).clone(),
                                requires_grad=layer.weight.requires_grad)
    if isinstance(getattr(layer, "normalized_shape", None), tuple):
        layer.normalized_shape = (int(keep.numel()),)
    return layer


class RMSNormPruner(tp.pruner.function.BasePruningFunc):
    """Torch-Pruning customized pruner for RMSNorm: one weight per channel; input and output channels
    are the same (``prune_in_channels is prune_out_channels``, Torch-Pruning's intra-layer coupling)."""

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        return _prune_rmsnorm(layer, idxs)

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: nn.Module) -> int:
        return int(layer.weight.shape[0])

    def get_in_channels(self, layer: nn.Module) -> int:
        return int(layer.weight.shape[0])


#: the norms prunelab slices with their channels (first match wins)
NORM_RULES: list[NormRule] = [
    NormRule("rmsnorm", is_rmsnorm, lambda m: -1, _rms_norm),
    NormRule("layernorm", lambda m: isinstance(m, nn.LayerNorm),
             lambda m: 1 if _channels_first(m) else -1, _layer_norm),
    NormRule("groupnorm", lambda m: isinstance(m, nn.GroupNorm), lambda m: 1, _group_norm),
]


def norm_rule(module: nn.Module) -> NormRule | None:
    for rule in NORM_RULES:
        if rule.matches(module):
            return rule
    return None


def is_norm(module: nn.Module) -> bool:
    return norm_rule(module) is not None


def norm_width(module: nn.Module) -> int:
    """Channels of a norm."""
    if isinstance(module, nn.GroupNorm):
        return int(module.num_channels)
    if isinstance(module, nn.LayerNorm):
        return int(module.normalized_shape[-1])
    return int(module.weight.shape[0])


def norm_problem(module: nn.Module, name: str) -> str | None:
    """Why the channels of this norm cannot be removed one at a time (None: they can)."""
    if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) != 1:
        return f"LayerNorm {name} normalises over {len(module.normalized_shape)} dimensions"
    if isinstance(module, nn.GroupNorm) and 1 < module.num_groups < module.num_channels:
        return (f"GroupNorm {name} normalises groups of {module.num_channels // module.num_groups} channels "
                f"(num_groups={module.num_groups}): each group would have to lose the same channels")
    return None


def normalise_live(module: nn.Module, x: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
    """The norm's output when only channels ``live`` (positions along its channel dimension) exist:
    statistics over those channels, zeros at the others (the compressed norm, padded back)."""
    rule = norm_rule(module)
    dim = rule.channel_dim(module) % x.dim()
    part = x.index_select(dim, live)
    if dim != x.dim() - 1 and not isinstance(module, nn.GroupNorm):
        y = rule.live_forward(module, part.movedim(dim, -1), live).movedim(-1, dim)
    else:
        y = rule.live_forward(module, part, live)
    out = torch.zeros_like(x, dtype=y.dtype)
    return out.index_copy(dim, live, y)


def prune_norm(module: nn.Module, idxs: Sequence[int]) -> nn.Module:
    """Remove channels ``idxs`` of a norm (Torch-Pruning's pruners; :class:`RMSNormPruner` for RMSNorm)."""
    if is_rmsnorm(module):
        return _prune_rmsnorm(module, idxs)
    if isinstance(module, nn.GroupNorm):
        groups = module.num_groups
        tp.prune_groupnorm_out_channels(module, list(idxs))
        if groups > 1:  # one channel per group: the groups go with the channels
            module.num_groups = module.num_channels
        return module
    return tp.prune_layernorm_out_channels(module, list(idxs))
