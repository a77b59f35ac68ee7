"""Soft channel masks, and the Fisher signal read from the masked activations.

A mask is one 0/1 vector per channel group, applied by a forward hook that multiplies the output of
each of the group's *mask points*: its BatchNorms (as pytorch-prunes' ``MaskBlock`` multiplies the
block's internal activation after BN and ReLU; for a 0/1 mask, after BN is the same), plus producers
whose output does not go straight into one. A masked channel is therefore exactly zero wherever a
consumer reads it, so the masked network computes what the compressed one will, and fine-tuning
simply continues between prunes (gradients of a masked channel are zero too).

Fisher pruning (Theis et al. 2018, eq. 6; Crowley et al. 2018, sec. 3): for a channel c with masked
activation a (N x C x H x W) and loss gradient g = dL/da,

    Delta_c = 1/(2N) * sum_n ( sum_{h,w} a[n,c,h,w] * g[n,c,h,w] )^2

i.e. half the empirical Fisher information of a per-channel mask at 1 (sum_{h,w} a*g is dL/dm_c for
sample n). Per training step it is **summed** into a running buffer; at a prune decision the buffer
is divided by the number of steps since the last prune and reset (pytorch-prunes ``funcs.Pruner``).
The gradient is that of the mean mini-batch loss, as in the reference code. When a group has several
mask points (a residual stream pruned jointly), the per-sample terms sum_{h,w} a*g of all its points
are added before squaring: the Fisher information of the one mask shared by all of them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.prune.structured.groups import GroupSet


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


class ChannelMasks:
    """0/1 channel masks on a model's channel groups, applied by forward hooks.

    ``alive[name]`` is a bool vector over the group's channels (positions of its root's outputs).
    ``collect_fisher(True)`` makes the hooks record the Fisher terms of every training backward pass.
    """

    def __init__(self, model: nn.Module, groups: GroupSet, keep: dict[str, list[int]] | None = None) -> None:
        self.model = model
        self.groups = groups
        self.alive = {g.name: torch.ones(g.width, dtype=torch.bool) for g in groups}
        self._version = 0
        if keep:
            for name, kept in keep.items():
                self.set_kept(name, kept)
        self.fisher = FisherAccumulator({g.name: g.width for g in groups})
        self._collect = False
        self._cache: dict[tuple[str, torch.device, torch.dtype], tuple[int, torch.Tensor]] = {}
        # mask point -> [(group, positions in the module's output, group channels)]
        # (identity: the module's outputs are exactly the group's channels, in order)
        self._points: dict[str, list[tuple[str, torch.Tensor, torch.Tensor, bool]]] = {}
        for g in groups:
            by_module = {m.module: m for m in g.members if m.kind in ("out", "depthwise")}
            for point in g.mask_points:
                m = by_module[point]
                identity = m.idxs == list(range(g.width)) and m.channels == list(range(g.width))
                self._points.setdefault(point, []).append(
                    (g.name, torch.tensor(m.idxs, dtype=torch.long), torch.tensor(m.channels, dtype=torch.long),
                     identity))
        self._handles: list = []
        self.attach()

    # -- state -------------------------------------------------------------------------------------
    def set_kept(self, name: str, kept) -> None:
        if name not in self.alive:
            raise PrunelabError(f"unknown channel group {name!r}")
        width = self.alive[name].numel()
        vec = torch.zeros(width, dtype=torch.bool)
        idx = torch.as_tensor(list(kept), dtype=torch.long)
        if idx.numel() and (idx.min() < 0 or idx.max() >= width):
            raise PrunelabError(f"kept channels of group {name} must lie in [0, {width})")
        vec[idx] = True
        self.alive[name] = vec
        self._version += 1

    def set_alive(self, alive: dict[str, torch.Tensor]) -> None:
        """Replace every group's live-channel vector (copies of ``alive``), e.g. to undo trial removals."""
        for name, v in alive.items():
            self.alive[name] = v.clone()
        self._version += 1

    def remove(self, channels: list[tuple[str, int]]) -> None:
        """Switch off channels given as (group, channel) pairs."""
        for name, c in channels:
            self.alive[name][c] = False
        self._version += 1

    def kept(self) -> dict[str, list[int]]:
        return {name: torch.nonzero(v).flatten().tolist() for name, v in self.alive.items()}

    def widths(self) -> dict[str, int]:
        return {name: int(v.sum()) for name, v in self.alive.items()}

    @property
    def remaining(self) -> int:
        return sum(int(v.sum()) for v in self.alive.values())

    def flat_alive(self) -> torch.Tensor:
        return torch.cat([self.alive[g.name] for g in self.groups]) if len(self.groups) else torch.zeros(0, dtype=bool)

    def state_dict(self) -> dict:
        return {"alive": {k: v.clone() for k, v in self.alive.items()}, "fisher": self.fisher.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state["alive"].items():
            self.alive[k] = v.clone().bool()
        self.fisher.load_state_dict(state.get("fisher", {}))
        self._version += 1

    # -- hooks -------------------------------------------------------------------------------------
    def collect_fisher(self, on: bool = True) -> None:
        self._collect = on

    def attach(self) -> None:
        if self._handles:
            return
        for point in self._points:
            module = self.model.get_submodule(point)
            self._handles.append(module.register_forward_hook(self._make_hook(point)))

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    @contextlib.contextmanager
    def detached(self) -> Iterator[None]:
        """Temporarily without hooks (to copy the model, or to run it unmasked)."""
        was = bool(self._handles)
        self.detach()
        try:
            yield
        finally:
            if was:
                self.attach()

    def _vector(self, point: str, like: torch.Tensor) -> torch.Tensor:
        key = (point, like.device, like.dtype)
        hit = self._cache.get(key)
        if hit is not None and hit[0] == self._version:
            return hit[1]
        vec = torch.ones(like.shape[1], dtype=torch.bool)
        for name, idxs, channels, _ in self._points[point]:
            vec[idxs] = self.alive[name][channels]
        vec = vec.to(device=like.device, dtype=like.dtype)
        self._cache[key] = (self._version, vec)
        return vec

    def _make_hook(self, point: str):
        def hook(module: nn.Module, inputs, output):
            if not isinstance(output, torch.Tensor):
                raise PrunelabError(f"cannot mask {point}: its output is a {type(output).__name__}, not a tensor")
            vec = self._vector(point, output)
            y = output * vec.view(1, -1, *([1] * (output.dim() - 2)))
            if self._collect and y.requires_grad and module.training:
                act = y.detach()
                y.register_hook(lambda grad: self._record(point, act, grad))
            return y

        return hook

    def _record(self, point: str, act: torch.Tensor, grad: torch.Tensor) -> None:
        terms = per_sample_terms(act, grad)
        for name, idxs, channels, identity in self._points[point]:
            if identity and terms.shape[1] == idxs.numel():
                self.fisher.add_terms(name, terms)
            else:
                part = terms.index_select(1, idxs.to(terms.device))
                full = terms.new_zeros((terms.shape[0], self.alive[name].numel()))
                full.index_add_(1, channels.to(terms.device), part)
                self.fisher.add_terms(name, full)
