"""Fisher pruning (Theis et al. 2018, eq. 6; Crowley et al. 2018, sec. 3): the Fisher information of
a per-channel mask, read from the masked activations and their gradients.

For a channel c with masked activation a (N x C x H x W) and loss gradient g = dL/da,

    Delta_c = 1/(2N) * sum_n ( sum_{h,w} a[n,c,h,w] * g[n,c,h,w] )^2

i.e. half the empirical Fisher information of a per-channel mask at 1 (sum_{h,w} a*g is dL/dm_c for
sample n). Per training step it is **summed** into a running buffer; at a prune decision the buffer
is divided by the number of steps since the last prune and reset (pytorch-prunes ``funcs.Pruner``,
``running_fisher``). The gradient is that of the mean mini-batch loss, as in the reference code.
When a group has several mask points (a residual stream pruned jointly), the per-sample terms
sum_{h,w} a*g of all its points are added before squaring: the Fisher information of the one mask
shared by all of them. An optional cost term (Theis et al., eq. 7) subtracts ``fisher_beta`` times
the MACs or parameters freed by removing the channel; the reference code uses beta = 0, the default.
"""

from __future__ import annotations

from typing import Any

import torch

from prunelab.prune.structured.criterion import Criterion, register_criterion


def fisher_delta(activation: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Delta_c of one batch (see the module docstring); ``activation`` and ``grad`` are N x C x ..."""
    return per_sample_terms(activation, grad).pow(2).sum(0) / (2 * activation.shape[0])


def per_sample_terms(activation: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """sum over positions of a*g for each sample and channel: an N x C tensor (float32)."""
    prod = activation.float() * grad.float()
    return prod.flatten(2).sum(2) if prod.dim() > 2 else prod


class FisherAccumulator:
    """Running sums of Delta_c per group over training steps (pytorch-prunes' ``running_fisher``)."""

    def __init__(self, widths: dict[str, int]) -> None:
        self.widths = dict(widths)
        self.running: dict[str, torch.Tensor] = {}
        self.steps = 0
        self._terms: dict[str, torch.Tensor] = {}

    def add_terms(self, group: str, terms: torch.Tensor) -> None:
        """Add one mask point's per-sample terms (N x width, already in group channel order)."""
        prev = self._terms.get(group)
        self._terms[group] = terms if prev is None else prev + terms

    def end_step(self, grad_scale: torch.Tensor | float | None = None) -> None:
        """Fold the step's terms into the running sums. ``grad_scale``: an AMP loss scale to undo."""
        if not self._terms:
            return
        for name, terms in self._terms.items():
            delta = terms.pow(2).sum(0) / (2 * terms.shape[0])
            if grad_scale is not None:
                delta = delta / (torch.as_tensor(grad_scale, device=delta.device, dtype=delta.dtype) ** 2)
            # An AMP step that overflowed is skipped by the optimiser; skip its signal too.
            delta = torch.where(torch.isfinite(delta), delta, torch.zeros_like(delta))
            run = self.running.get(name)
            self.running[name] = delta if run is None else run + delta
        self._terms.clear()
        self.steps += 1

    def scores(self) -> dict[str, torch.Tensor]:
        """Accumulated Delta_c divided by the number of steps (zeros before any step)."""
        out = {}
        for name, width in self.widths.items():
            run = self.running.get(name)
            out[name] = torch.zeros(width) if run is None else run.detach().float().cpu() / max(self.steps, 1)
        return out

    def reset(self) -> None:
        self.running.clear()
        self._terms.clear()
        self.steps = 0

    def state_dict(self) -> dict:
        return {"steps": self.steps, "running": {k: v.detach().cpu() for k, v in self.running.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state.get("steps", 0))
        self.running = {k: v.clone() for k, v in (state.get("running") or {}).items()}


@register_criterion
class Fisher(Criterion):
    """Theis et al. (2018) / Crowley et al. (2018): the accumulated Fisher signal of the channel mask."""

    name = "fisher"
    summary = "Fisher information of the channel mask, activation x gradient over K steps (Theis et al.)"
    needs = frozenset({"activations", "gradients", "data"})
    all_reduce = "mean"
    cost_term = True

    def __init__(self, model, groups, masks, seed: int = 0) -> None:
        super().__init__(model, groups, masks, seed)
        self.accumulator = FisherAccumulator({g.name: g.width for g in groups})

    @property
    def steps(self) -> int:
        return self.accumulator.steps

    def start(self) -> None:
        self.masks.observe(self._observe)

    def stop(self) -> None:
        self.masks.observe(None)

    def _observe(self, point: str, output: torch.Tensor) -> None:
        if output.requires_grad:
            act = output.detach()
            output.register_hook(lambda grad: self._record(point, act, grad))

    def _record(self, point: str, act: torch.Tensor, grad: torch.Tensor) -> None:
        act, grad = self.masks.channels_first(point, act), self.masks.channels_first(point, grad)
        for name, terms in self.masks.to_groups(point, per_sample_terms(act, grad)):
            self.accumulator.add_terms(name, terms)

    def end_step(self, loss_scale=None) -> None:
        self.accumulator.end_step(loss_scale)

    def scores(self) -> dict[str, torch.Tensor]:
        return self.accumulator.scores()

    def reset(self) -> None:
        self.accumulator.reset()

    def state_dict(self) -> dict[str, Any]:
        return self.accumulator.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.accumulator.load_state_dict(state)
