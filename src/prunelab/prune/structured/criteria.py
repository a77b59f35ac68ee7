"""Channel saliency criteria. Low score = pruned first; scores are ranked globally across groups.

* ``fisher``: Theis et al. (2018) / Crowley et al. (2018), the accumulated Fisher signal of the soft
  mask (see :mod:`prunelab.prune.structured.masks`). An optional cost term (Theis et al., eq. 7)
  subtracts ``beta`` times the MACs or parameters freed by removing the channel; the reference code
  uses beta = 0, the default here.
* ``l1``: L1 norm (sum of absolute values) of the channel's producing filter (Li et al. 2017).
* ``l1-signed``: the plain *signed* sum of the filter, which is what pytorch-prunes' ``--l1_prune``
  computes; only for bit-for-bit reproduction (channels with large negative sums go first).
* ``bn``: |gamma| of the channel's BatchNorm scale (Liu et al. 2017, network slimming).
* ``random``: uniform random scores from a seeded generator.

For a zoo width unit the filter is the unit's conv and the BatchNorm the unit's BN, as in the
reference code. A generic group with several producers or BatchNorms (a residual stream) scores the
mean over them, so groups coupling many layers are not favoured by construction.
"""

from __future__ import annotations

import torch
from torch import nn

from prunelab.errors import PrunelabError, check_choice
from prunelab.prune.structured.groups import BN_TYPES, GroupSet
from prunelab.prune.structured.masks import ChannelMasks

CRITERIA = ("fisher", "l1", "l1-signed", "bn", "random")


def _member(group, module: str):
    for m in group.members:
        if m.module == module and m.kind in ("out", "depthwise"):
            return m
    raise PrunelabError(f"layer {module} does not produce channels of group {group.name}")


def _per_channel(values: list[torch.Tensor], width: int) -> torch.Tensor:
    return torch.stack(values).mean(0) if values else torch.zeros(width)


def filter_scores(model: nn.Module, groups: GroupSet, signed: bool = False) -> dict[str, torch.Tensor]:
    """Sum of |w| (or of w, ``signed``) of each channel's producing filter(s)."""
    out = {}
    for g in groups:
        values = []
        for name in g.l1_modules:
            m = _member(g, name)
            w = model.get_submodule(name).weight.detach().float()
            flat = w.flatten(1)
            per = flat.sum(1) if signed else flat.abs().sum(1)
            vec = torch.zeros(g.width, device=per.device)
            vec[torch.tensor(m.channels, device=per.device)] = per[torch.tensor(m.idxs, device=per.device)]
            values.append(vec.cpu())
        out[g.name] = _per_channel(values, g.width)
    return out


def bn_scores(model: nn.Module, groups: GroupSet) -> dict[str, torch.Tensor]:
    """|gamma| of each channel's BatchNorm(s)."""
    out = {}
    for g in groups:
        if not g.bn_modules:
            raise PrunelabError(f"criterion 'bn' needs a BatchNorm in every group; group {g.name} has none "
                                f"(use --criterion l1 or fisher, or exclude it)")
        values = []
        for name in g.bn_modules:
            bn = model.get_submodule(name)
            if not isinstance(bn, BN_TYPES) or bn.weight is None:
                raise PrunelabError(f"criterion 'bn' needs an affine BatchNorm; {name} has no scale")
            m = _member(g, name)
            gamma = bn.weight.detach().float().abs()
            vec = torch.zeros(g.width, device=gamma.device)
            vec[torch.tensor(m.channels, device=gamma.device)] = gamma[torch.tensor(m.idxs, device=gamma.device)]
            values.append(vec.cpu())
        out[g.name] = _per_channel(values, g.width)
    return out


def random_scores(groups: GroupSet, generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {g.name: torch.rand(g.width, generator=generator) for g in groups}


def channel_scores(criterion: str, model: nn.Module, groups: GroupSet, masks: ChannelMasks | None = None,
                   generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Scores of every channel of every group under ``criterion`` (before cost terms and masking)."""
    check_choice("criterion", criterion, CRITERIA)
    if criterion == "fisher":
        if masks is None:
            raise PrunelabError("criterion 'fisher' needs channel masks with accumulated Fisher signal")
        return masks.fisher.scores()
    if criterion in ("l1", "l1-signed"):
        return filter_scores(model, groups, signed=criterion == "l1-signed")
    if criterion == "bn":
        return bn_scores(model, groups)
    return random_scores(groups, generator or torch.Generator().manual_seed(0))
