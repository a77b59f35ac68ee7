"""VGG-11/13/16/19 with batch normalisation, CIFAR variant, with a width per conv layer.

Layout of Pruning from Scratch (Wang et al. 2020, ``models/vgg.py``, after Liu et al.'s network
slimming VGG): five stages of conv3x3-BN-ReLU layers with widths c, 2c, 4c, 8c, 8c (c = 64),
2x2 max pooling between stages (four pools), the remaining 2x2 map average-pooled and fed to a
single linear classifier (no FC stack). ``cfg`` lists the width of every conv (PFS gates every
conv's output channels), without the pooling markers, whose places are fixed by the depth.

PFS pools inline in ``forward`` (``nn.AvgPool2d(2)(x)``), so its MAC counter misses the pool; here
it is a module and is counted (512 x 2 x 2 = 2,048 MACs for VGG-16 on 32x32).
``dims=1`` builds the same network with 1-D convolutions and pools (signals such as MNIST-1D, 1 x 40:
the four pools take 40 steps to 2).
Initialisation as PFS: conv N(0, sqrt(2 / (k*k*out_channels))), BN gamma **0.5** / beta 0,
linear N(0, 0.01) with bias 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from prunelab.errors import check_choice
from prunelab.models.common import (
    check_dims,
    check_int,
    check_positive,
    check_widths,
    conv_bn,
    default_shape,
    he_fan_out_init,
    out_width,
    scaled,
)
from prunelab.models.registry import WidthUnit, register_family, register_model
from prunelab.models.widths import scale_units

#: convs per stage for each depth; a 2x2 max pool follows every stage but the last
STAGES: dict[int, tuple[int, ...]] = {11: (1, 1, 2, 2, 2), 13: (2, 2, 2, 2, 2), 16: (2, 2, 3, 3, 3),
                                      19: (2, 2, 4, 4, 4)}
STAGE_MULT = (1, 2, 4, 8, 8)


class ConvBNReLU(nn.Sequential):
    """conv3x3 (no bias)-BN-ReLU, with PFS's module names ``conv``, ``bn``, ``relu``."""

    def __init__(self, in_planes: int, out_planes: int, dims: int = 2) -> None:
        super().__init__()
        conv, bn = conv_bn(dims)
        self.conv = conv(in_planes, out_planes, 3, padding=1, bias=False)
        self.bn = bn(out_planes)
        self.relu = nn.ReLU()


class CifarVGG(nn.Module):
    def __init__(self, stages: Sequence[int], cfg: Sequence[int], *, num_classes: int = 10,
                 in_channels: int = 3, dims: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        planes, i = in_channels, 0
        for s, count in enumerate(stages):
            for _ in range(count):
                layers.append(ConvBNReLU(planes, cfg[i], dims))
                planes, i = cfg[i], i + 1
            if s < len(stages) - 1:
                layers.append(nn.MaxPool1d(2, 2) if dims == 1 else nn.MaxPool2d(2, 2))
        self.feature = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool1d(1) if dims == 1 else nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.feature(x)), 1))


def default_cfg(depth: int, base: int = 64) -> list[int]:
    return [base * m for m, count in zip(STAGE_MULT, STAGES[depth]) for _ in range(count)]


def vgg(depth: int = 16, cfg: Sequence[int] | None = None, width_mult: float = 1.0, num_classes: int = 10,
        in_channels: int = 3, dims: int = 2) -> CifarVGG:
    """Build a CIFAR VGG-BN. ``cfg``: width of each conv in order (8/10/13/16 entries); default
    c, 2c, 4c, 8c, 8c per stage with c = 64 x ``width_mult`` (PFS's expansion ``e`` is
    ``width_mult = e / 64``). An explicit ``cfg`` is absolute. ``dims``: 2 (images) or 1 (signals)."""
    depth = int(check_choice("VGG depth", str(depth), [str(d) for d in STAGES]))
    if cfg is None:
        cfg = [scaled(w, check_positive("width_mult", width_mult)) for w in default_cfg(depth)]
    cfg = check_widths("cfg", cfg, sum(STAGES[depth]))
    model = CifarVGG(STAGES[depth], cfg, num_classes=check_int("num_classes", num_classes),
                     in_channels=check_int("in_channels", in_channels), dims=check_dims(dims))
    init(model)
    return model


def units(model: CifarVGG) -> list[WidthUnit]:
    """Every conv's output channels (gated after its BN in PFS)."""
    out = []
    for j, layer in enumerate(model.feature):
        if isinstance(layer, ConvBNReLU):
            path = f"feature.{j}"
            out.append(WidthUnit(path, f"{path}.bn", f"{path}.conv", "cfg", len(out), out_width(layer.conv)))
    return out


def init(model: nn.Module) -> None:
    """PFS's VGG rule: conv He fan-out normal, BN gamma 0.5, linear N(0, 0.01)."""
    he_fan_out_init(model, bn_weight=0.5, linear="normal")


def input_shape(kwargs: dict) -> tuple[int, ...]:
    return default_shape(kwargs)


# Its width units are all its widths (``cfg``).
register_family("vgg", vgg, units=units, init=init, shape_of=input_shape, scale_width=scale_units,
                width_keys=("cfg",), doc="VGG-BN, CIFAR variant (PFS layout)")
for _depth in (11, 13, 16, 19):
    register_model(f"vgg{_depth}-bn", "vgg", depth=_depth, doc=f"VGG-{_depth}-BN, CIFAR variant (PFS)")
