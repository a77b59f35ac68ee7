"""Pruning functions for layers Torch-Pruning does not know: Hugging Face's ``Conv1D`` (GPT-2).

``Conv1D`` is a linear layer whose weight is stored transposed, ``(in, out)``, with ``nf`` outputs
(``transformers.pytorch_utils.Conv1D``). :class:`Conv1DPruner` is a Torch-Pruning
``BasePruningFunc`` (its documented extension point, passed as ``customized_pruners``), so the
dependency graph treats the layer as a linear layer; the same functions cut it at compression.
Parameters are replaced by new leaf ``nn.Parameter`` objects (no views of the old storage).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch_pruning as tp
from torch import nn


def _keep(size: int, idxs: Sequence[int]) -> torch.Tensor:
    drop = set(int(i) for i in idxs)
    return torch.tensor([i for i in range(size) if i not in drop], dtype=torch.long)


def _param(t: torch.Tensor, requires_grad: bool) -> nn.Parameter:
    return nn.Parameter(t.detach().clone().contiguous(), requires_grad=requires_grad)


def prune_conv1d_out_channels(layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
    """Remove outputs ``idxs`` of a ``Conv1D`` (columns of its ``(in, out)`` weight, entries of its bias)."""
    keep = _keep(layer.weight.shape[1], idxs).to(layer.weight.device)
    layer.weight = _param(layer.weight.index_select(1, keep), layer.weight.requires_grad)
    if getattr(layer, "bias", None) is not None:
        layer.bias = _param(layer.bias.index_select(0, keep), layer.bias.requires_grad)
    layer.nf = int(keep.numel())
    return layer


def prune_conv1d_in_channels(layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
    """Remove inputs ``idxs`` of a ``Conv1D`` (rows of its weight)."""
    keep = _keep(layer.weight.shape[0], idxs).to(layer.weight.device)
    layer.weight = _param(layer.weight.index_select(0, keep), layer.weight.requires_grad)
    if hasattr(layer, "nx"):
        layer.nx = int(keep.numel())
    return layer


class Conv1DPruner(tp.pruner.function.BasePruningFunc):
    """Torch-Pruning pruner for Hugging Face ``Conv1D``."""

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        return prune_conv1d_out_channels(layer, idxs)

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        return prune_conv1d_in_channels(layer, idxs)

    def get_out_channels(self, layer: nn.Module) -> int:
        return int(layer.weight.shape[1])

    def get_in_channels(self, layer: nn.Module) -> int:
        return int(layer.weight.shape[0])
