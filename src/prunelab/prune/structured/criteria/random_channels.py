"""The random baseline ``random``: uniform scores from a generator seeded by the run's seed, drawn
afresh at every prune (Crowley et al. 2018's random-channel baseline)."""

from __future__ import annotations

import torch

from prunelab.prune.structured.criterion import Criterion, register_criterion


@register_criterion
class RandomChannels(Criterion):
    """Uniform random scores; the same seed gives the same channels."""

    name = "random"
    summary = "uniform random scores from the run's seed (baseline)"

    def __init__(self, model, groups, masks, seed: int = 0) -> None:
        super().__init__(model, groups, masks, seed)
        self.generator = torch.Generator().manual_seed(seed)

    def scores(self) -> dict[str, torch.Tensor]:
        return {g.name: torch.rand(g.width, generator=self.generator) for g in self.groups}
