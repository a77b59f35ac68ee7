"""MobileNet-V2 (Sandler et al. 2018): the ImageNet model and the CIFAR variant, with explicit widths.

**ImageNet** (:func:`mobilenet_v2`), layout of Pruning from Scratch (Wang et al. 2020,
``models/mobilenet.py``; the same layers and parameter count as torchvision's, 3,504,872 at 1000
classes): a stride-2 3x3 stem, 17 inverted residual blocks (block 0 has no expansion: depthwise
then linear pointwise; the others expand with a 1x1 conv to their hidden width, depthwise 3x3,
project linearly), a 1x1 conv to 1280, global average pooling and a linear classifier. ReLU6
throughout. Widths: ``stem_width``, ``hidden_widths`` (16, blocks 1-16), ``last_width`` (the
channels PFS gates) and ``out_widths`` (17 block outputs, the residual stream). ``hidden_mult``
scales the default stem/hidden/last widths (PFS's ``e / 32``), ``width_mult`` the block outputs
(PFS's ``-m``). The block layout is fixed by position, not by comparing widths (PFS switches block
type whenever a pruned hidden width happens to equal its input width).

**CIFAR** (:func:`mobilenet_v2_cifar`), the variant of K. Liu's pytorch-cifar used by Global MP
(Gupta et al. 2022, ``model_list.py``): stride-1 stem, stride 1 in the second stage, every block
(block 0 too) has an expansion conv, a 1x1 conv + BN shortcut where the stride is 1 and the width
changes, ReLU (not ReLU6), 4x4 average pool: 2,296,922 parameters at 10 classes. Widths:
``stem_width``, ``hidden_widths`` (17), ``out_widths`` (17), ``last_width``.

Initialisation: PFS's rule for ImageNet (conv He fan-out normal, BN 1/0, linear N(0, 0.01));
PyTorch's defaults for the CIFAR variant, which sets none.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from prunelab.models.common import (
    check_fraction,
    check_int,
    check_positive,
    check_widths,
    he_fan_out_init,
    out_width,
    reset_default_,
    scaled,
)
from prunelab.models.mobilenet_v1 import ConvBNReLU
from prunelab.models.registry import ArchSpec, WidthUnit, register_family, register_model
from prunelab.models.widths import scale_list, scale_units

OUT_WIDTHS = (16, 24, 24, 32, 32, 32, 64, 64, 64, 64, 96, 96, 96, 160, 160, 160, 320)
EXPANSION = 6
STEM_WIDTH = 32
LAST_WIDTH = 1280
IMAGENET_STRIDES = (1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1)
CIFAR_STRIDES = (1, 1, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1)


def _default_hidden(stem: int, outs: Sequence[int]) -> list[int]:
    """Hidden width of each of the 17 blocks: its input width x the expansion (1 for block 0, else 6)."""
    ins = [stem, *outs[:-1]]
    return [i * (EXPANSION if b > 0 else 1) for b, i in enumerate(ins)]


# --------------------------------------------------------------------------- ImageNet


class ExpandBlock(nn.Module):
    """1x1 expand-BN-ReLU6, depthwise 3x3-BN-ReLU6, 1x1 project-BN (PFS's ``InvertedBlock``)."""

    def __init__(self, in_planes: int, out_planes: int, hidden: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.relu1 = nn.ReLU6()
        self.conv2 = nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.relu2 = nn.ReLU6()
        self.conv3 = nn.Conv2d(hidden, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        return self.bn3(self.conv3(x))


class InvertedResidual(nn.Module):
    """An inverted block with the identity shortcut when the stride is 1 and the width is kept."""

    def __init__(self, in_planes: int, out_planes: int, hidden: int | None, stride: int) -> None:
        super().__init__()
        self.use_res_connect = stride == 1 and in_planes == out_planes
        if hidden is None:  # no expansion: depthwise on the input, then linear pointwise
            self.conv: nn.Module = nn.Sequential(
                nn.Conv2d(in_planes, in_planes, 3, stride, 1, groups=in_planes, bias=False),
                nn.BatchNorm2d(in_planes),
                nn.ReLU6(),
                nn.Conv2d(in_planes, out_planes, 1, bias=False),
                nn.BatchNorm2d(out_planes),
            )
        else:
            self.conv = ExpandBlock(in_planes, out_planes, hidden, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """``features`` = stem, 17 inverted blocks, last 1x1 conv; then pool and classifier."""

    def __init__(self, stem: int, hidden: Sequence[int], outs: Sequence[int], last: int, *,
                 num_classes: int = 1000, dropout: float = 0.0, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvBNReLU(in_channels, stem, 3, 2, activation=nn.ReLU6)]
        planes = stem
        for b, (out, stride) in enumerate(zip(outs, IMAGENET_STRIDES)):
            layers.append(InvertedResidual(planes, out, None if b == 0 else hidden[b - 1], stride))
            planes = out
        layers.append(ConvBNReLU(planes, last, 1, 1, activation=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def mobilenet_v2(stem_width: int | None = None, hidden_widths: Sequence[int] | None = None,
                 out_widths: Sequence[int] | None = None, last_width: int | None = None,
                 hidden_mult: float = 1.0, width_mult: float = 1.0, dropout: float = 0.0,
                 num_classes: int = 1000, in_channels: int = 3) -> MobileNetV2:
    """Build the ImageNet MobileNet-V2 (see the module docstring for the widths). Explicit widths are
    absolute; the multipliers only scale defaults."""
    hm = check_positive("hidden_mult", hidden_mult)
    wm = check_positive("width_mult", width_mult)
    outs = check_widths("out_widths", out_widths if out_widths is not None else
                        [scaled(w, wm) for w in OUT_WIDTHS], len(OUT_WIDTHS))
    stem = check_int("stem_width", stem_width if stem_width is not None else scaled(STEM_WIDTH, hm))
    if hidden_widths is None:
        hidden_widths = [scaled(h, hm) for h in _default_hidden(STEM_WIDTH, OUT_WIDTHS)[1:]]
    hidden = check_widths("hidden_widths", hidden_widths, len(OUT_WIDTHS) - 1)
    last = check_int("last_width", last_width if last_width is not None else scaled(LAST_WIDTH, hm))
    model = MobileNetV2(stem, hidden, outs, last, num_classes=check_int("num_classes", num_classes),
                        dropout=check_fraction("dropout", dropout), in_channels=check_int("in_channels", in_channels))
    init(model)
    return model


def units(model: MobileNetV2) -> list[WidthUnit]:
    """PFS gate placement: the stem, each expanding block's hidden width, the last 1x1 conv."""
    feats = model.features
    out = [WidthUnit("features.0", "features.0.bn", "features.0.conv", "stem_width", None, out_width(feats[0].conv))]
    for b in range(2, len(feats) - 1):
        path = f"features.{b}.conv"
        out.append(WidthUnit(f"features.{b}", f"{path}.bn1", f"{path}.conv1", "hidden_widths", b - 2,
                             out_width(feats[b].conv.conv1)))
    j = len(feats) - 1
    out.append(WidthUnit(f"features.{j}", f"features.{j}.bn", f"features.{j}.conv", "last_width", None,
                         out_width(feats[j].conv)))
    return out


def init(model: nn.Module) -> None:
    """PFS's MobileNet rule: conv He fan-out normal, BN 1/0, linear N(0, 0.01)."""
    he_fan_out_init(model, linear="normal")


def input_shape(kwargs: dict) -> tuple[int, ...]:
    return (int(kwargs.get("in_channels", 3)), 224, 224)


# --------------------------------------------------------------------------- CIFAR (K. Liu's variant)


class CifarBlock(nn.Module):
    """Expand 1x1-BN-ReLU, depthwise 3x3-BN-ReLU, project 1x1-BN; shortcut only at stride 1."""

    def __init__(self, in_planes: int, out_planes: int, hidden: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv1 = nn.Conv2d(in_planes, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(hidden, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()
        if stride == 1 and in_planes != out_planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, bias=False), nn.BatchNorm2d(out_planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + self.shortcut(x) if self.stride == 1 else out


class MobileNetV2Cifar(nn.Module):
    def __init__(self, stem: int, hidden: Sequence[int], outs: Sequence[int], last: int, *,
                 num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu1 = nn.ReLU()
        blocks, planes = [], stem
        for h, out, stride in zip(hidden, outs, CIFAR_STRIDES):
            blocks.append(CifarBlock(planes, out, h, stride))
            planes = out
        self.layers = nn.Sequential(*blocks)
        self.conv2 = nn.Conv2d(planes, last, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(last)
        self.relu2 = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(self.relu1(self.bn1(self.conv1(x))))
        out = self.relu2(self.bn2(self.conv2(out)))
        return self.linear(torch.flatten(self.avgpool(out), 1))


def mobilenet_v2_cifar(stem_width: int | None = None, hidden_widths: Sequence[int] | None = None,
                       out_widths: Sequence[int] | None = None, last_width: int | None = None,
                       width_mult: float = 1.0, num_classes: int = 10, in_channels: int = 3) -> MobileNetV2Cifar:
    """Build the CIFAR MobileNet-V2. ``width_mult`` scales the default stem, block-output and last
    widths; default hidden widths are the expansion (1 for block 0, else 6) times the block input."""
    wm = check_positive("width_mult", width_mult)
    stem = check_int("stem_width", stem_width if stem_width is not None else scaled(STEM_WIDTH, wm))
    outs = check_widths("out_widths", out_widths if out_widths is not None else
                        [scaled(w, wm) for w in OUT_WIDTHS], len(OUT_WIDTHS))
    if hidden_widths is None:
        hidden_widths = _default_hidden(stem, outs)
    hidden = check_widths("hidden_widths", hidden_widths, len(OUT_WIDTHS))
    last = check_int("last_width", last_width if last_width is not None else scaled(LAST_WIDTH, wm))
    model = MobileNetV2Cifar(stem, hidden, outs, last, num_classes=check_int("num_classes", num_classes),
                             in_channels=check_int("in_channels", in_channels))
    init_cifar(model)
    return model


def units_cifar(model: MobileNetV2Cifar) -> list[WidthUnit]:
    """The stem, every block's hidden (expanded) width, the last 1x1 conv."""
    out = [WidthUnit("conv1", "bn1", "conv1", "stem_width", None, out_width(model.conv1))]
    for b, block in enumerate(model.layers):
        path = f"layers.{b}"
        out.append(WidthUnit(path, f"{path}.bn1", f"{path}.conv1", "hidden_widths", b, out_width(block.conv1)))
    out.append(WidthUnit("conv2", "bn2", "conv2", "last_width", None, out_width(model.conv2)))
    return out


def init_cifar(model: nn.Module) -> None:
    """PyTorch's default rule (the reference code sets no initialisation)."""
    reset_default_(model)


def input_shape_cifar(kwargs: dict) -> tuple[int, ...]:
    return (int(kwargs.get("in_channels", 3)), 32, 32)


def scale_width(spec: ArchSpec, mult: float, round_to: int = 1) -> ArchSpec:
    """Every width unit (hidden widths) times ``mult``, and the block outputs (the residual stream, not
    width units) with them."""
    outs = spec.kwargs.get("out_widths")
    if outs is None:
        wm = float(spec.kwargs.get("width_mult", 1.0))
        outs = [max(1, int(w * wm)) for w in OUT_WIDTHS]
    return scale_units(spec, mult, round_to).with_kwargs(out_widths=scale_list(outs, mult, round_to))


register_family("mobilenet_v2", mobilenet_v2, units=units, init=init, input_shape=(3, 224, 224), shape_of=input_shape,
                scale_width=scale_width, doc="MobileNet-V2, ImageNet")
register_family("mobilenet_v2_cifar", mobilenet_v2_cifar, units=units_cifar, init=init_cifar,
                shape_of=input_shape_cifar, scale_width=scale_width,
                doc="MobileNet-V2, CIFAR variant (K. Liu, Global MP)")
register_model("mobilenet-v2", "mobilenet_v2", num_classes=1000, doc="MobileNet-V2 (PFS / torchvision layers)")
register_model("mobilenet-v2-cifar", "mobilenet_v2_cifar", doc="MobileNet-V2 for CIFAR (K. Liu, Global MP)")
