"""BatchNorm-scale criterion ``bn``: |gamma| of the channel's BatchNorm (Liu et al. 2017, network
slimming, reference code ``Eric-mingjie/network-slimming``, whose pruning scripts threshold
``m.weight.data.abs()`` of every BatchNorm). Network slimming trains with an L1 penalty on gamma
first (``main.py``, ``updateBN``); here the scales are ranked as they are. For a zoo width unit the BatchNorm is the
unit's BN; a group with several BatchNorms (a residual stream) scores the mean over them.
"""

from __future__ import annotations

import torch

from prunelab.errors import PrunelabError
from prunelab.models.common import BN_TYPES
from prunelab.prune.structured.criterion import (
    Criterion,
    in_group_order,
    mean_over_layers,
    producer,
    register_criterion,
)


@register_criterion
class BNScale(Criterion):
    """|gamma| of each channel's BatchNorm(s)."""

    name = "bn"
    summary = "|gamma| of the channel's BatchNorm (network slimming, Liu et al.)"

    def scores(self) -> dict[str, torch.Tensor]:
        out = {}
        for g in self.groups:
            if not g.batchnorms:
                raise PrunelabError(f"criterion 'bn' needs a BatchNorm in every group; group {g.name} has none "
                                    f"(use --criterion l1 or fisher, or exclude it)")
            values = []
            for name in g.batchnorms:
                bn = self.model.get_submodule(name)
                if not isinstance(bn, BN_TYPES) or bn.weight is None:
                    raise PrunelabError(f"criterion 'bn' needs an affine BatchNorm; {name} has no scale")
                gamma = bn.weight.detach().float().abs()
                values.append(in_group_order(g, producer(g, name), gamma).cpu())
            out[g.name] = mean_over_layers(values, g.width)
        return out
