"""Filter-magnitude criteria: the L1 norm of each channel's producing filter (Li et al. 2017).

* ``l1``: sum of |w| of the filter. Ranked globally with no normalisation, as Crowley et al.
  (2018) compare it with Fisher. A filter's L1 grows with its fan-in (C_in x k x k weights), so
  the global ranking takes the filters of thin and early layers first: on WRN-16-1 pruned to 15%
  of its parameters it empties whole blocks (5 of them), and on the small digits CNN it takes the
  9-weight filters of the first convolution down to one channel. Use ``l1-normalized`` (or
  ``--exclude``) when that is not the point of the experiment.
* ``l1-normalized``: the same L1 divided by the mean L1 of the group's live channels, so each
  filter is compared with the others of its own layer (Torch-Pruning's ``normalizer="mean"``,
  ``torch_pruning/pruner/importance.py``). Li et al. rank filters within each layer and prune every
  layer by its own ratio; the normalised scores keep one global ranking but make it relative to
  each layer, which is the per-layer comparison of Li et al. under a single global threshold.
* ``l1-signed``: the plain *signed* sum of the filter, which is what pytorch-prunes' ``--l1_prune``
  computes (``funcs.py``, ``Pruner.l1_prune``); only for bit-for-bit reproduction (channels with
  large negative sums go first).

For a zoo width unit the filter is the unit's conv, as in the reference code. A generic group with
several producers (a residual stream) scores the mean over them. A transformer head scores the mean
over Q, K and V of the sum |w| of its head_dim rows (a key/value head adds its query group's rows), so
unnormalised ``l1`` ranks whole heads far above single MLP units; ``l1-normalized`` compares each
within its own group.
"""

from __future__ import annotations

import torch

from prunelab.prune.structured.criterion import (
    Criterion,
    in_group_order,
    mean_over_layers,
    output_rows,
    producer,
    register_criterion,
)


def filter_scores(model, groups, signed: bool = False) -> dict[str, torch.Tensor]:
    """Sum of |w| (or of w, ``signed``) of each channel's producing filter(s), averaged over producers."""
    out = {}
    for g in groups:
        values = []
        for name in g.producers:
            flat = output_rows(model.get_submodule(name)).detach().float().flatten(1)
            per = flat.sum(1) if signed else flat.abs().sum(1)
            values.append(in_group_order(g, producer(g, name), per).cpu())
        out[g.name] = mean_over_layers(values, g.width)
    return out


@register_criterion
class L1(Criterion):
    """Li et al. (2017): L1 norm of the channel's producing filter, ranked globally unnormalised."""

    name = "l1"
    summary = "sum |w| of the filter, ranked across layers unnormalised (thin layers go first)"

    def scores(self) -> dict[str, torch.Tensor]:
        return filter_scores(self.model, self.groups)


@register_criterion
class L1Signed(Criterion):
    """pytorch-prunes' ``--l1_prune``: the signed sum of the filter."""

    name = "l1-signed"
    summary = "pytorch-prunes' signed filter sum (reproduction only)"

    def scores(self) -> dict[str, torch.Tensor]:
        return filter_scores(self.model, self.groups, signed=True)


@register_criterion
class L1Normalized(Criterion):
    """L1 of the filter divided by the mean L1 of its group's live channels (see the module docstring)."""

    name = "l1-normalized"
    summary = "sum |w| of the filter over its layer's mean (per-layer comparison, Li et al.)"

    def scores(self) -> dict[str, torch.Tensor]:
        out = {}
        for name, l1 in filter_scores(self.model, self.groups).items():
            live = self.masks.alive[name] if self.masks is not None else torch.ones(l1.numel(), dtype=torch.bool)
            mean = l1[live].mean() if bool(live.any()) else l1.new_zeros(())
            out[name] = l1 / mean if mean > 0 else torch.zeros_like(l1)
        return out
