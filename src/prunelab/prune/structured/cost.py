"""Size of the would-be compressed model, without compressing it.

Every Conv / Linear layer's weight count is ``out * (in / groups) * k``; its MACs are that (plus one
per output element for a conv bias) times its output positions; an average pool costs its input
elements; a BatchNorm holds 2 parameters per channel (a LayerNorm / RMSNorm / GroupNorm its weights
and biases per channel, an embedding one row entry per token, a bare parameter its numel over its
channels). A channel group changes the ``out`` of its producers, the ``in`` of its consumers (at
concat offsets), both sides of its depthwise layers and the channels of the pools it passes through,
so for a given set of live channels every layer's size is known exactly. The estimate is the
measured size of the current model (``prunelab.measure``) minus these layers' current contributions
plus their contributions with only the live channels: it moves exactly as the compressed model's
counts do under the conventions of :func:`prunelab.measure.count_params` /
:func:`prunelab.measure.count_macs`. Layers run from inline functional code are not seen; targets
are therefore confirmed on the compressed model before a run stops.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from prunelab.models.common import BN_TYPES, CONV_TYPES
from prunelab.prune.structured.groups import PER_CHANNEL_TYPES, PRODUCER_TYPES, GroupSet
from prunelab.prune.structured.norms import is_norm, norm_width
from prunelab.prune.structured.transformer import is_conv1d


@dataclass
class _Side:
    fixed: int  # channels not in any group
    ids: torch.Tensor  # global ids of the group channels on this side


@dataclass
class _Layer:
    name: str
    out: _Side
    inp: _Side | None
    kernel: int
    groups: int
    depthwise: bool
    bias: bool
    positions: int
    per_channel_params: int  # for BatchNorm-like layers
    conv: bool = False  # a conv's bias costs one MAC per output element; a Linear's is free
    pool: bool = False  # an average pool: MACs = input elements


def model_size(model: nn.Module, inputs) -> tuple[int, int]:
    """(parameters, MACs at batch 1) of ``model`` with prunelab's counters (:mod:`prunelab.measure`);
    ``inputs``: a shape or an :class:`~prunelab.models.inputs.InputSpec`."""
    from prunelab.measure import count_macs, count_params
    from prunelab.models.inputs import as_input_spec

    spec = as_input_spec(inputs)
    was = model.training
    try:
        return int(count_params(model).params), int(count_macs(model, spec.shape if spec.is_plain else spec))
    finally:
        model.train(was)


class CostModel:
    """Parameters and MACs of the model compressed to a given set of live channels."""

    def __init__(self, model: nn.Module, groups: GroupSet, params: int | None = None,
                 macs: int | None = None) -> None:
        self.groups = groups
        self.offsets: dict[str, int] = {}
        total = 0
        for g in groups:
            self.offsets[g.name] = total
            total += g.width
        self.total = total
        out_maps: dict[str, dict[int, int]] = {}
        in_maps: dict[str, dict[int, int]] = {}
        for g in groups:
            off = self.offsets[g.name]
            for m in g.members:
                if m.kind in ("out", "pool"):
                    targets = (out_maps,)
                elif m.kind == "in":
                    targets = (in_maps,)
                else:
                    targets = (out_maps, in_maps)
                for t in targets:
                    d = t.setdefault(m.module, {})
                    for i, c in zip(m.idxs, m.channels):
                        d[i] = off + c
        self.layers: list[_Layer] = []
        shared = {id(m.weight) for m in model.modules()
                  if (isinstance(m, PRODUCER_TYPES) or is_conv1d(m)) and isinstance(m.weight, torch.Tensor)}
        for name, module in model.named_modules():
            if name not in out_maps and name not in in_maps:
                continue
            shape = groups.layers.get(name)
            if shape is not None and shape.kind == "pool":
                self.layers.append(_Layer(name, self._side(out_maps.get(name, {}), shape.out_channels), None, 0, 1,
                                          False, False, shape.positions, 0, pool=True))
            elif isinstance(module, PRODUCER_TYPES) or is_conv1d(module):
                shape = groups.layers.get(name)
                if shape is None:
                    continue
                self.layers.append(_Layer(
                    name, self._side(out_maps.get(name, {}), shape.out_channels),
                    self._side(in_maps.get(name, {}), shape.in_channels), shape.kernel, shape.groups,
                    isinstance(module, CONV_TYPES) and module.groups > 1 and name in out_maps and name in in_maps,
                    shape.bias, shape.positions, 0, shape.kind == "conv"))
            elif isinstance(module, PER_CHANNEL_TYPES) or is_norm(module) or isinstance(module, nn.Embedding):
                n = _channels_of(module)
                per = sum(p.numel() for p in module.parameters(recurse=False)) // max(n, 1)
                if isinstance(module, nn.Embedding) and id(module.weight) in shared:
                    per = 0  # tied to an output head (GPT-2): its parameters are counted there, once
                self.layers.append(_Layer(name, self._side(out_maps.get(name, {}), n), None, 0, 1, False, False, 0,
                                          per))
        params_of = dict(model.named_parameters())
        for name, dim in {m.module: m.dim for g in groups for m in g.members if m.kind == "param"}.items():
            p = params_of.get(name)  # a bare parameter: numel / channels values per channel
            if p is not None:
                self.layers.append(_Layer(name, self._side(out_maps.get(name, {}), p.shape[dim]), None, 0, 1, False,
                                          False, 0, p.numel() // p.shape[dim]))
        for name, shape in groups.layers.items():  # attention matmuls: MACs scale with the live heads
            if shape.kind == "attention" and name in out_maps:
                self.layers.append(_Layer(name, self._side(out_maps[name], shape.out_channels), None, 0, 1, False,
                                          False, shape.positions, 0, pool=True))
        dense = torch.ones(total, dtype=torch.bool)
        p0, m0 = self._layer_cost(dense)
        if params is None or macs is None:
            mp, mm = model_size(model, groups.inputs)
            params = mp if params is None else params
            macs = mm if macs is None else macs
        self._params_rest = int(params) - p0
        self._macs_rest = int(macs) - m0

    @staticmethod
    def _side(mapping: dict[int, int], size: int) -> _Side:
        return _Side(size - len(mapping), torch.tensor(sorted(mapping.values()), dtype=torch.long))

    def _layer_cost(self, alive: torch.Tensor) -> tuple[int, int]:
        alive = alive.to(torch.long)
        params = macs = 0
        for layer in self.layers:
            out = layer.out.fixed + int(alive[layer.out.ids].sum()) if layer.out.ids.numel() else layer.out.fixed
            if layer.pool:
                macs += out * layer.positions
                continue
            if layer.inp is None:
                params += layer.per_channel_params * out
                continue
            inp = layer.inp.fixed + int(alive[layer.inp.ids].sum()) if layer.inp.ids.numel() else layer.inp.fixed
            per_out = layer.kernel if layer.depthwise else (inp // layer.groups) * layer.kernel
            weights = out * per_out
            params += weights + (out if layer.bias else 0)
            macs += (weights + (out if layer.bias and layer.conv else 0)) * layer.positions
        return params, macs

    def alive_vector(self, alive: dict[str, torch.Tensor]) -> torch.Tensor:
        if not self.total:
            return torch.zeros(0, dtype=torch.bool)
        return torch.cat([alive[g.name].bool() for g in self.groups])

    def size(self, alive: dict[str, torch.Tensor] | torch.Tensor) -> tuple[int, int]:
        """(params, MACs) of the model compressed to the live channels ``alive``."""
        vec = alive if isinstance(alive, torch.Tensor) else self.alive_vector(alive)
        p, m = self._layer_cost(vec)
        return self._params_rest + p, self._macs_rest + m

    def freed_per_channel(self, alive: dict[str, torch.Tensor], metric: str = "macs") -> dict[str, float]:
        """MACs (or params) freed by removing one more live channel of each group (the cost term of
        Theis et al. 2018, eq. 7); 0 for a group with no live channel."""
        vec = self.alive_vector(alive)
        base = self.size(vec)
        k = 1 if metric == "macs" else 0
        out = {}
        for g in self.groups:
            live = torch.nonzero(alive[g.name]).flatten()
            if live.numel() == 0:
                out[g.name] = 0.0
                continue
            v = vec.clone()
            v[self.offsets[g.name] + int(live[0])] = False
            out[g.name] = float(base[k] - self.size(v)[k])
        return out


def _channels_of(module: nn.Module) -> int:
    if isinstance(module, BN_TYPES):
        return module.num_features
    if isinstance(module, nn.PReLU):
        return module.num_parameters
    if isinstance(module, nn.Embedding):
        return module.embedding_dim
    if is_norm(module):
        return norm_width(module)
    return 0
