"""Counts computed by hand in the tests, independent of prunelab's counter."""

from __future__ import annotations

import torch
from torch import nn


def hand_macs(model: nn.Module, shape) -> int:
    """The PFS MAC convention from forward hooks written here rather than prunelab's counter: Conv
    weight numel x output positions, Linear in x out, average pools their input numel."""
    total = []

    def hook(module, inputs, out):
        if isinstance(module, nn.Conv2d):
            total.append(module.weight.numel() * out.shape[2] * out.shape[3])
        elif isinstance(module, nn.Linear):
            total.append(module.in_features * module.out_features)
        elif isinstance(module, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
            total.append(inputs[0][0].numel())

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.no_grad():
        model.eval()(torch.zeros(1, *shape))
    for h in handles:
        h.remove()
    return sum(total)
