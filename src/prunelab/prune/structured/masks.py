"""Soft channel masks on a model's channel groups.

A mask is one 0/1 vector per channel group, applied by a forward hook that multiplies the output of
each of the group's *mask points*: its BatchNorms (as pytorch-prunes' ``MaskBlock`` multiplies the
block's internal activation after BN and ReLU; for a 0/1 mask, after BN is the same), plus producers
whose output does not go straight into one. A masked channel is therefore exactly zero wherever a
consumer reads it, so the masked network computes what the compressed one will, and fine-tuning
simply continues between prunes (gradients of a masked channel are zero too).

Criteria that read activations (:mod:`prunelab.prune.structured.criteria`) register one observer
with :meth:`ChannelMasks.observe`; the hooks hand it every masked training-mode output, and
:meth:`ChannelMasks.to_groups` maps a mask point's per-channel values onto the groups' channels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.prune.structured.groups import GroupSet
from prunelab.prune.structured.norms import norm_rule, normalise_live

#: ``observer(mask_point, masked_output)``: called for every training-mode forward of a mask point
Observer = Callable[[str, torch.Tensor], None]


class ChannelMasks:
    """0/1 channel masks on a model's channel groups, applied by forward hooks.

    ``alive[name]`` is a bool vector over the group's channels (positions of its root's outputs).
    """

    def __init__(self, model: nn.Module, groups: GroupSet, keep: dict[str, list[int]] | None = None) -> None:
        self.model = model
        self.groups = groups
        self.alive = {g.name: torch.ones(g.width, dtype=torch.bool) for g in groups}
        self._version = 0
        if keep:
            for name, kept in keep.items():
                self.set_kept(name, kept)
        self._observer: Observer | None = None
        self._cache: dict[tuple[str, torch.device, torch.dtype], tuple[int, torch.Tensor]] = {}
        # mask point -> [(group, positions in the module's output, group channels)]
        # (identity: the module's outputs are exactly the group's channels, in order)
        # Points are keyed "<module>" (its output is masked) or "<module>:input" (its input is: the
        # gate of a transformer unit, before the output / down projection).
        self._points: dict[str, list[tuple[str, torch.Tensor, torch.Tensor, bool]]] = {}
        self._dims: dict[str, int] = {}
        for g in groups:
            outs = {m.module: m for m in g.members if m.kind in ("out", "depthwise")}
            ins = {m.module: m for m in g.members if m.kind == "in"}
            for point, m in [*((p, outs[p]) for p in g.mask_points),
                             *((f"{p}:input", ins[p]) for p in g.input_points)]:
                identity = m.idxs == list(range(g.width)) and m.channels == list(range(g.width))
                self._points.setdefault(point, []).append(
                    (g.name, torch.tensor(m.idxs, dtype=torch.long), torch.tensor(m.channels, dtype=torch.long),
                     identity))
                self._dims[point] = _channel_dim(model.get_submodule(m.module), point.endswith(":input"))
            norms = {m.module: m for m in g.members if m.kind == "norm"}
            for p in g.norm_points:
                m = norms[p]
                self._points.setdefault(f"{p}:norm", []).append(
                    (g.name, torch.tensor(m.idxs, dtype=torch.long), torch.tensor(m.channels, dtype=torch.long),
                     False))
                self._dims[f"{p}:norm"] = norm_rule(model.get_submodule(p)).channel_dim(model.get_submodule(p))
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

    def state_dict(self) -> dict:
        return {"alive": {k: v.clone() for k, v in self.alive.items()}}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state["alive"].items():
            self.alive[k] = v.clone().bool()
        self._version += 1

    # -- hooks -------------------------------------------------------------------------------------
    def observe(self, observer: Observer | None) -> None:
        """Hand every masked training-mode output of a mask point to ``observer`` (None: stop)."""
        self._observer = observer

    def channels_first(self, point: str, t: torch.Tensor) -> torch.Tensor:
        """``t`` (an output seen by an observer) with the channel dimension of mask point ``point`` at
        position 1 (a Linear on (B, T, F) has its channels last)."""
        dim = self._dims.get(point, 1)
        return t if dim == 1 or t.dim() <= 2 else t.movedim(dim, 1)

    def to_groups(self, point: str, values: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
        """``values`` (N x C, one column per output channel of mask point ``point``) as (group, N x width)
        pairs in each group's channel order; channels of a group the point does not carry are 0."""
        for name, idxs, channels, identity in self._points[point]:
            if identity and values.shape[1] == idxs.numel():
                yield name, values
            else:
                part = values.index_select(1, idxs.to(values.device))
                full = values.new_zeros((values.shape[0], self.alive[name].numel()))
                full.index_add_(1, channels.to(values.device), part)
                yield name, full

    def attach(self) -> None:
        if self._handles:
            return
        for point in self._points:
            if point.endswith(":input"):
                module = self.model.get_submodule(point.removesuffix(":input"))
                self._handles.append(module.register_forward_pre_hook(self._make_pre_hook(point)))
            elif point.endswith(":norm"):
                module = self.model.get_submodule(point.removesuffix(":norm"))
                self._handles.append(module.register_forward_hook(self._make_norm_hook(point)))
            else:
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
        vec = torch.ones(like.shape[self._dims.get(point, 1)], dtype=torch.bool)
        for name, idxs, channels, _ in self._points[point]:
            vec[idxs] = self.alive[name][channels]
        vec = vec.to(device=like.device, dtype=like.dtype)
        self._cache[key] = (self._version, vec)
        return vec

    def _masked(self, point: str, t: torch.Tensor) -> torch.Tensor:
        vec = self._vector(point, t)
        dim = self._dims.get(point, 1)
        if dim == 1 or t.dim() <= 2:
            return t * vec.view(1, -1, *([1] * (t.dim() - 2)))
        return t * vec

    def _make_hook(self, point: str):
        def hook(module: nn.Module, inputs, output):
            if not isinstance(output, torch.Tensor):
                raise PrunelabError(f"cannot mask {point}: its output is a {type(output).__name__}, not a tensor")
            y = self._masked(point, output)
            if self._observer is not None and module.training:
                self._observer(point, y)
            return y

        return hook

    def _make_norm_hook(self, point: str):
        def hook(module: nn.Module, inputs, output):
            x = inputs[0] if inputs else None
            if not isinstance(x, torch.Tensor) or not isinstance(output, torch.Tensor):
                raise PrunelabError(f"cannot mask the norm {point.removesuffix(':norm')}: its input is not a tensor")
            vec = self._vector(point, x)
            if bool(vec.all()):
                return output
            return normalise_live(module, x, torch.nonzero(vec).flatten())

        return hook

    def _make_pre_hook(self, point: str):
        def hook(module: nn.Module, inputs):
            if not inputs or not isinstance(inputs[0], torch.Tensor):
                raise PrunelabError(f"cannot mask the input of {point.removesuffix(':input')}: it is not a tensor")
            y = self._masked(point, inputs[0])
            if self._observer is not None and module.training:
                self._observer(point, y)
            return (y, *inputs[1:])

        return hook


def _channel_dim(module: nn.Module, input_side: bool) -> int:
    """Where a mask point's channels are: dimension 1 for convolutions and BatchNorm (N x C x ...), the
    last dimension for linear layers (``nn.Linear``, ``Conv1D``: N x ... x F) and their inputs."""
    from prunelab.models.common import BN_TYPES, CONV_TYPES

    if isinstance(module, (*CONV_TYPES, *BN_TYPES, nn.PReLU)):
        return 1
    return -1
