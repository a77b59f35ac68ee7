"""CIFAR ResNet-20/32/44/56/110 (He et al. 2016, sec. 4.2) with per-block internal widths.

Layout of Pruning from Scratch (Wang et al. 2020, ``models/resnet.py``): a 3x3 stem conv, three
stages of n = (depth - 2) / 6 basic blocks (conv3x3-BN-ReLU-conv3x3-BN, add the shortcut, ReLU)
with widths w, 2w, 4w (w = 16 by default) and strides 1, 2, 2, global average pooling and a linear
classifier. The internal width of every block (conv1's output) is its own entry of
``block_widths``: the channels PFS gates and pytorch-prunes-style pruning removes, while the
residual stream is never pruned.

Shortcuts where the stride or width changes:

* option ``"B"`` (PFS, the default): a 1x1 strided conv + BN projection;
* option ``"A"`` (He et al.'s parameter-free variant, as in the widely used CIFAR code of
  Y. Idelbayev): spatial subsampling and zero-padding of the new channels.

``dims=1`` builds the same network with 1-D convolutions (BatchNorm1d, option B shortcuts only) for
signals such as MNIST-1D (1 x 40); widths, width units and module names are those of the 2-D network.

Initialisation follows the reference of each option: option B uses PFS's rule (conv weights
N(0, sqrt(2 / (k*k*out_channels))), BN gamma 1 / beta 0, PyTorch's default for the classifier);
option A uses ``kaiming_normal_`` (fan-in) on every conv and linear weight.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from prunelab.errors import PrunelabError, check_choice
from prunelab.models.common import (
    BN_TYPES,
    CONV_TYPES,
    bn_constant_,
    check_dims,
    check_int,
    check_positive,
    check_widths,
    conv_bn,
    default_shape,
    he_fan_out_init,
    he_normal_fan_in_,
    out_width,
    scaled,
)
from prunelab.models.registry import ArchSpec, WidthUnit, register_family, register_model
from prunelab.models.widths import scale_explicit, scale_list

SHORTCUTS = ("A", "B")
DEFAULT_WIDTHS = (16, 32, 64)


class ZeroPadShortcut(nn.Module):
    """Option A shortcut: subsample by ``stride`` and zero-pad the extra channels on both sides."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.stride = int(stride)
        extra = int(out_planes) - int(in_planes)
        self.pad_front = extra // 2
        self.pad_back = extra - extra // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back))


class BasicBlock(nn.Module):
    """conv3x3(in->mid, stride)-BN-ReLU-conv3x3(mid->out)-BN, add shortcut, ReLU."""

    def __init__(self, in_planes: int, mid_planes: int, out_planes: int, stride: int, shortcut: str,
                 dims: int = 2) -> None:
        super().__init__()
        conv, bn = conv_bn(dims)
        self.conv1 = conv(in_planes, mid_planes, 3, stride, 1, bias=False)
        self.bn1 = bn(mid_planes)
        self.relu1 = nn.ReLU()
        self.conv2 = conv(mid_planes, out_planes, 3, 1, 1, bias=False)
        self.bn2 = bn(out_planes)
        self.relu2 = nn.ReLU()
        if stride == 1 and in_planes == out_planes:
            self.shortcut: nn.Module = nn.Sequential()
        elif shortcut == "B":
            self.shortcut = nn.Sequential(
                conv(in_planes, out_planes, 1, stride, bias=False),
                bn(out_planes),
            )
        else:
            self.shortcut = ZeroPadShortcut(in_planes, out_planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """Stem conv-BN-ReLU, three stages of :class:`BasicBlock`, global average pool, linear.

    ``stage_block_widths[s][b]`` is the internal width of block b of stage s.
    """

    def __init__(self, widths: Sequence[int], stage_block_widths: Sequence[Sequence[int]], *,
                 shortcut: str = "B", num_classes: int = 10, in_channels: int = 3, dims: int = 2) -> None:
        super().__init__()
        conv, bn = conv_bn(dims)
        self.shortcut_type = shortcut
        self.conv1 = conv(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = bn(widths[0])
        self.relu = nn.ReLU()
        in_planes = widths[0]
        for s, (width, mids) in enumerate(zip(widths, stage_block_widths)):
            blocks = []
            for b, mid in enumerate(mids):
                stride = 2 if s > 0 and b == 0 else 1
                blocks.append(BasicBlock(in_planes, mid, width, stride, shortcut, dims))
                in_planes = width
            self.add_module(f"layer{s + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool1d(1) if dims == 1 else nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(in_planes, num_classes)

    def stages(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(torch.flatten(self.avgpool(out), 1))


def blocks_per_stage(depth: int) -> int:
    """n = (depth - 2) / 6; the depth must be 6n + 2 with n >= 1."""
    depth = check_int("CIFAR ResNet depth", depth)
    if depth < 8 or (depth - 2) % 6:
        raise PrunelabError(f"CIFAR ResNet depth must be 6n+2 with n >= 1 (8, 20, 32, 44, 56, 110), got {depth}")
    return (depth - 2) // 6


def resnet_cifar(depth: int = 20, widths: Sequence[int] = DEFAULT_WIDTHS, block_widths: Sequence[int] | None = None,
                 width_mult: float = 1.0, shortcut: str = "B", num_classes: int = 10,
                 in_channels: int = 3, dims: int = 2) -> CifarResNet:
    """Build a CIFAR ResNet.

    ``widths``: stem/stage-1, stage-2 and stage-3 widths (the residual stream), scaled by
    ``width_mult`` (PFS's expansion ``e`` is ``width_mult = e / 16``). ``block_widths``: the internal
    width of each of the 3n blocks, in forward order; default = its stage width. Explicit
    ``block_widths`` are absolute (not scaled). ``dims``: 2 (images) or 1 (signals; option B only).
    """
    n = blocks_per_stage(depth)
    shortcut = check_choice("CIFAR ResNet shortcut option", str(shortcut).upper(), SHORTCUTS)
    mult = check_positive("width_mult", width_mult)
    stage = [scaled(w, mult) for w in check_widths("widths", widths, 3)]
    if block_widths is None:
        mids = [w for w in stage for _ in range(n)]
    else:
        mids = check_widths("block_widths", block_widths, 3 * n)
    dims = check_dims(dims)
    if shortcut == "A" and dims == 1:
        raise PrunelabError("shortcut option A pads 2-D feature maps; use option B with dims 1")
    if shortcut == "A" and any(b < a for a, b in zip(stage, stage[1:])):
        raise PrunelabError(f"shortcut option A pads channels, so stage widths must not decrease, got {stage}")
    model = CifarResNet(stage, [mids[i * n:(i + 1) * n] for i in range(3)], shortcut=shortcut,
                        num_classes=check_int("num_classes", num_classes),
                        in_channels=check_int("in_channels", in_channels), dims=dims)
    init(model)
    return model


def units(model: CifarResNet) -> list[WidthUnit]:
    """One unit per block: the internal channels (conv1 output, gated after bn1 in PFS)."""
    out, k = [], 0
    for s, stage in enumerate(model.stages(), start=1):
        for b, block in enumerate(stage):
            path = f"layer{s}.{b}"
            out.append(WidthUnit(path, f"{path}.bn1", f"{path}.conv1", "block_widths", k, out_width(block.conv1)))
            k += 1
    return out


def init(model: CifarResNet) -> None:
    """Option B: PFS's rule. Option A: ``kaiming_normal_`` (fan-in) on conv and linear weights."""
    if getattr(model, "shortcut_type", "B") == "A":
        for m in model.modules():
            if isinstance(m, CONV_TYPES):
                he_normal_fan_in_(m.weight)
            elif isinstance(m, nn.Linear):
                m.reset_parameters()
                he_normal_fan_in_(m.weight)
            elif isinstance(m, BN_TYPES):
                bn_constant_(m)
    else:
        he_fan_out_init(model, linear="default")


def input_shape(kwargs: dict) -> tuple[int, ...]:
    return default_shape(kwargs)


def scale_width(spec: ArchSpec, mult: float, round_to: int = 1) -> ArchSpec:
    """Stage widths (times the spec's own width multiplier) times ``mult``, explicit block widths too."""
    base = float(spec.kwargs.get("width_mult", 1.0))
    widths = spec.kwargs.get("widths") or [16, 32, 64]
    new = spec.with_kwargs(widths=scale_list([int(w * base) for w in widths], mult, round_to), width_mult=1.0)
    return scale_explicit(spec, new, "block_widths", mult, round_to)


# Pruning from Scratch widens the residual stream of CIFAR ResNets with the gated widths ("-e").
register_family("resnet_cifar", resnet_cifar, units=units, init=init, shape_of=input_shape, scale_width=scale_width,
                expansion="width", width_keys=("block_widths",),
                doc="CIFAR ResNet-6n+2, shortcut option A or B (PFS layout)")

# CIFAR ResNets: option B (PFS) under the plain name, option A with "-a".
for _depth in (20, 32, 44, 56, 110):
    register_model(f"resnet{_depth}", "resnet_cifar", depth=_depth, shortcut="B",
                   doc=f"CIFAR ResNet-{_depth}, 1x1-conv shortcuts (option B, PFS)")
    register_model(f"resnet{_depth}-a", "resnet_cifar", depth=_depth, shortcut="A",
                   doc=f"CIFAR ResNet-{_depth}, zero-padding shortcuts (option A)")
