"""DenseNet-BC (Huang et al. 2017) with per-layer bottleneck widths, for CIFAR.

Layout of pytorch-prunes (Crowley et al. 2018, ``models/densenet.py``, bottleneck=True): a 3x3
stem conv to 2k channels, three dense blocks of n = (depth - 4) / 6 bottleneck layers, each
BN-ReLU-conv1x1(in->mid)-BN-ReLU-conv3x3(mid->k) concatenated to its input, transitions
BN-ReLU-conv1x1 to floor(C x compression)-avgpool2x2 between blocks, then BN-ReLU, global average
pooling and a linear classifier.

``mid`` (4k by default) is the bottleneck width Crowley et al. prune (masked after BN2 and ReLU);
each layer's is one entry of ``block_widths``. ``bottle_mult`` sets every bottleneck width to
int(4k x bottle_mult) (their reduced DenseNets). Module names follow pytorch-prunes.
Initialisation as there: conv N(0, sqrt(2 / (k*k*out_channels))), BN 1/0, linear bias 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.models.common import check_fraction, check_int, check_positive, check_widths, out_width, scaled
from prunelab.models.registry import ArchSpec, WidthUnit, register_family, register_model
from prunelab.models.widths import round_width, scale_explicit
from prunelab.models.wrn import init as _wrn_init


class DenseBottleneck(nn.Module):
    """BN-ReLU-conv1x1(in->mid)-BN-ReLU-conv3x3(mid->growth), concatenated with the input."""

    def __init__(self, in_planes: int, mid_planes: int, growth_rate: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, mid_planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_planes)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(mid_planes, growth_rate, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.relu1(self.bn1(x)))
        out = self.conv2(self.relu2(self.bn2(out)))
        return torch.cat([x, out], 1)


class Transition(nn.Module):
    """BN-ReLU-conv1x1-avgpool2x2."""

    def __init__(self, in_planes: int, out_planes: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, out_planes, 1, bias=False)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv1(self.relu(self.bn1(x))))


class DenseNet(nn.Module):
    """``block_mids[b][i]``: bottleneck width of layer i of dense block b."""

    def __init__(self, growth_rate: int, block_mids: Sequence[Sequence[int]], *, reduction: float = 0.5,
                 num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        planes = 2 * growth_rate
        self.conv1 = nn.Conv2d(in_channels, planes, 3, padding=1, bias=False)
        for b, mids in enumerate(block_mids, start=1):
            layers = []
            for mid in mids:
                layers.append(DenseBottleneck(planes, mid, growth_rate))
                planes += growth_rate
            self.add_module(f"dense{b}", nn.Sequential(*layers))
            if b < len(block_mids):
                out_planes = int(math.floor(planes * reduction))
                self.add_module(f"trans{b}", Transition(planes, out_planes))
                planes = out_planes
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(planes, num_classes)

    def dense_blocks(self) -> list[nn.Sequential]:
        return [self.dense1, self.dense2, self.dense3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.trans1(self.dense1(out))
        out = self.trans2(self.dense2(out))
        out = self.relu(self.bn1(self.dense3(out)))
        return self.fc(torch.flatten(self.avgpool(out), 1))


def layers_per_block(depth: int) -> int:
    """n = (depth - 4) / 6 bottleneck layers per dense block; depth must be 6n + 4 with n >= 1."""
    depth = check_int("DenseNet-BC depth", depth)
    if depth < 10 or (depth - 4) % 6:
        raise PrunelabError(f"DenseNet-BC depth must be 6n+4 with n >= 1 (40, 100, 190, ...), got {depth}")
    return (depth - 4) // 6


def densenet(depth: int = 100, growth_rate: int = 12, block_widths: Sequence[int] | None = None,
             bottle_mult: float = 1.0, reduction: float = 0.5, num_classes: int = 10,
             in_channels: int = 3) -> DenseNet:
    """Build DenseNet-BC-depth (growth ``growth_rate``, compression ``reduction``).

    ``block_widths``: the bottleneck width of each of the 3n layers in forward order; default
    int(4 x growth_rate x ``bottle_mult``). Explicit lists are absolute.
    """
    n = layers_per_block(depth)
    growth = check_int("growth_rate", growth_rate)
    mult = check_positive("bottle_mult", bottle_mult)
    reduction = check_fraction("reduction (compression)", reduction, low=0.0, high=1.0, closed_high=True)
    if reduction <= 0:
        raise PrunelabError(f"reduction (compression) must lie in (0, 1], got {reduction}")
    if block_widths is None:
        mids = [scaled(4 * growth, mult)] * (3 * n)
    else:
        mids = check_widths("block_widths", block_widths, 3 * n)
    planes = 2 * growth
    for _ in range(2):
        planes = int(math.floor((planes + n * growth) * reduction))
        if planes < 1:
            raise PrunelabError(f"reduction {reduction} leaves a transition with 0 channels")
    model = DenseNet(growth, [mids[i * n:(i + 1) * n] for i in range(3)], reduction=reduction,
                     num_classes=check_int("num_classes", num_classes),
                     in_channels=check_int("in_channels", in_channels))
    init(model)
    return model


def units(model: DenseNet) -> list[WidthUnit]:
    """One unit per bottleneck layer: its conv1 output, masked after bn2/relu2."""
    out, k = [], 0
    for b, block in enumerate(model.dense_blocks(), start=1):
        for i, layer in enumerate(block):
            path = f"dense{b}.{i}"
            out.append(WidthUnit(path, f"{path}.bn2", f"{path}.conv1", "block_widths", k, out_width(layer.conv1)))
            k += 1
    return out


def init(model: nn.Module) -> None:
    """pytorch-prunes' rule (same as its WRN)."""
    _wrn_init(model)


def input_shape(kwargs: dict) -> tuple[int, ...]:
    return (int(kwargs.get("in_channels", 3)), 32, 32)


def scale_width(spec: ArchSpec, mult: float, round_to: int = 1) -> ArchSpec:
    """The growth rate times ``mult``, explicit block widths too."""
    growth = int(spec.kwargs.get("growth_rate", 12))
    new = spec.with_kwargs(growth_rate=round_width(growth * mult, round_to))
    return scale_explicit(spec, new, "block_widths", mult, round_to)


register_family("densenet", densenet, units=units, init=init, shape_of=input_shape, scale_width=scale_width,
                width_keys=("block_widths",), doc="DenseNet-BC for CIFAR (pytorch-prunes layout)")
register_model("densenet-bc-100-12", "densenet", depth=100, growth_rate=12,
               doc="DenseNet-BC-100, k=12 (Crowley et al.)")
register_model("densenet-bc-40-12", "densenet", depth=40, growth_rate=12, doc="DenseNet-BC-40, k=12")
