"""Average Percentage of Zeros ``apoz`` (Hu et al. 2016, "Network Trimming: A Data-Driven Neuron
Pruning Approach towards Efficient Deep Architectures", eq. 1).

For channel c with post-ReLU output O_c over N samples and M positions,

    APoZ_c = sum_n sum_m [ O_c[n, m] == 0 ] / (N * M)

A channel that is mostly zero carries little to its consumers, so the score is 1 - APoZ_c (the
fraction of activations that are not zero; low scores go first). The counts are taken at each
group's mask points (their BatchNorm outputs, masked), where an activation is counted as zero when
it is <= 0: exactly the zeros of the ReLU (or ReLU6) that follows the mask point in every zoo width
unit; for a group not followed by a ReLU it is the same count of the activations a ReLU would zero.
Hu et al. measure on held-out data with the trained network; here the counts come from the
training-mode forward passes since the last prune (the fine-tuning steps of the iterative schedule,
or a one-shot prune's data pass of ``prune_every`` batches, forward only). The authors published no
code; the formula is the paper's.
"""

from __future__ import annotations

from typing import Any

import torch

from prunelab.prune.structured.criterion import Criterion, register_criterion


@register_criterion
class APoZ(Criterion):
    """1 - the fraction of a channel's activations that a ReLU zeroes, over the steps since the last prune."""

    name = "apoz"
    summary = "1 - average percentage of zero activations after the ReLU (Hu et al.)"
    needs = frozenset({"activations", "data"})
    all_reduce = "mean"

    def __init__(self, model, groups, masks, seed: int = 0) -> None:
        super().__init__(model, groups, masks, seed)
        self.zeros: dict[str, torch.Tensor] = {}
        self.seen: dict[str, torch.Tensor] = {}
        self.steps = 0

    def start(self) -> None:
        self.masks.observe(self._observe)

    def stop(self) -> None:
        self.masks.observe(None)

    def _observe(self, point: str, output: torch.Tensor) -> None:
        with torch.no_grad():
            y = self.masks.channels_first(point, output.detach())
            zero = (y <= 0).float()
            zero = zero.flatten(2).sum(2) if zero.dim() > 2 else zero
            count = zero.sum(0, keepdim=True)  # 1 x C
            per_sample = y[0, 0].numel() if y.dim() > 2 else 1
            seen = torch.full_like(count, float(y.shape[0] * per_sample))
            for (name, z), (_, s) in zip(self.masks.to_groups(point, count), self.masks.to_groups(point, seen)):
                self.zeros[name] = z[0] if name not in self.zeros else self.zeros[name] + z[0]
                self.seen[name] = s[0] if name not in self.seen else self.seen[name] + s[0]

    def end_step(self, loss_scale=None) -> None:
        self.steps += 1

    def scores(self) -> dict[str, torch.Tensor]:
        out = {}
        for g in self.groups:
            zeros, seen = self.zeros.get(g.name), self.seen.get(g.name)
            if zeros is None:
                out[g.name] = torch.zeros(g.width)
                continue
            zeros, seen = zeros.cpu(), seen.cpu()
            apoz = torch.where(seen > 0, zeros / seen.clamp_min(1), torch.ones_like(zeros))
            out[g.name] = 1 - apoz
        return out

    def reset(self) -> None:
        self.zeros.clear()
        self.seen.clear()
        self.steps = 0

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "zeros": {k: v.cpu() for k, v in self.zeros.items()},
                "seen": {k: v.cpu() for k, v in self.seen.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state.get("steps", 0))
        self.zeros = {k: v.clone() for k, v in (state.get("zeros") or {}).items()}
        self.seen = {k: v.clone() for k, v in (state.get("seen") or {}).items()}
