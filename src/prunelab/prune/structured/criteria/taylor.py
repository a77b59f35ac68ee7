"""First-order Taylor importance ``taylor`` (Molchanov et al. 2019, "Importance Estimation for Neural
Network Pruning", eq. 8; reference code ``NVlabs/Taylor_pruning``, ``pruning_engine.py``,
``add_criteria`` / ``compute_saliency``).

The loss change from removing a set S of parameters is estimated to first order as

    I_S = ( sum_{s in S} g_s * w_s )^2

with g = dL/dw the gradient of the mini-batch loss. It is computed after every training backward
pass, summed, and divided by the number of steps at the prune (the reference's ``add_criteria``
and ``compute_saliency``; its optional momentum across pruning intervals is off here, the
reference's own comment finding it useless). S is the channel's share of the group's per-channel
parameters: the scale and shift of its BatchNorm(s) where the group has them (the reference's
method 31, "BN scale Taylor FO", which equals its method 22, a gate after BatchNorm: sum_s g_s w_s
is then exactly the batch sum of the masked activation times its gradient), else the producing
filter(s) with their bias (method 0 sums the squares per weight instead; eq. 8 squares the sum). A residual
stream with several BatchNorms adds them before squaring: one mask is shared by all of them.
Compared with Fisher (Theis et al. 2018), which squares per sample and averages, Taylor squares the
batch sum, so it is the square of the mini-batch gradient of the mask rather than its second moment.

Torch-Pruning's ``TaylorImportance(multivariable=True)`` (``torch_pruning/pruner/importance.py``)
computes |sum g*w| per layer; on one layer its square is this criterion for one batch.
"""

from __future__ import annotations

from typing import Any

import torch

from prunelab.prune.structured.criterion import Criterion, in_group_order, producer, register_criterion
from prunelab.prune.structured.transformer import is_conv1d


@register_criterion
class Taylor(Criterion):
    """(sum over the channel's parameters of g * w)^2, averaged over the training steps."""

    name = "taylor"
    summary = "first-order Taylor (sum of g*w over the channel's BN or filter)^2 over K steps (Molchanov et al.)"
    needs = frozenset({"weights", "gradients", "data"})
    all_reduce = "mean"

    def __init__(self, model, groups, masks, seed: int = 0) -> None:
        super().__init__(model, groups, masks, seed)
        self.running: dict[str, torch.Tensor] = {}
        self.steps = 0

    def _batch_terms(self) -> dict[str, torch.Tensor]:
        """sum of g * w per channel of every group, for the gradients now in ``.grad``."""
        out = {}
        for g in self.groups:
            total = None
            for name in g.batchnorms or g.producers:
                module = self.model.get_submodule(name)
                member = producer(g, name)
                for param in (module.weight, getattr(module, "bias", None)):
                    if param is None or param.grad is None:
                        continue
                    prod = (param.detach().float() * param.grad.detach().float())
                    if prod.dim() == 2 and is_conv1d(module):  # Conv1D stores (in, out)
                        prod = prod.t()
                    per = prod if prod.dim() == 1 else prod.flatten(1).sum(1)
                    vec = in_group_order(g, member, per)
                    total = vec if total is None else total + vec
            if total is not None:
                out[g.name] = total
        return out

    def end_step(self, loss_scale=None) -> None:
        for name, s in self._batch_terms().items():
            delta = s.pow(2)
            # An AMP step that overflowed is skipped by the optimiser; skip its signal too.
            delta = torch.where(torch.isfinite(delta), delta, torch.zeros_like(delta))
            run = self.running.get(name)
            self.running[name] = delta if run is None else run + delta
        self.steps += 1

    def scores(self) -> dict[str, torch.Tensor]:
        out = {}
        for g in self.groups:
            run = self.running.get(g.name)
            out[g.name] = torch.zeros(g.width) if run is None else run.cpu() / max(self.steps, 1)
        return out

    def reset(self) -> None:
        self.running.clear()
        self.steps = 0

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "running": {k: v.detach().cpu() for k, v in self.running.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state.get("steps", 0))
        self.running = {k: v.clone() for k, v in (state.get("running") or {}).items()}
