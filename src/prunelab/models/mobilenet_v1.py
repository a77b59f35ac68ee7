"""MobileNet-V1 (Howard et al. 2017) for ImageNet with a width per layer.

A stride-2 3x3 stem conv-BN-ReLU, 13 depthwise-separable blocks (depthwise 3x3-BN-ReLU, pointwise
1x1-BN-ReLU; strides 2 at blocks 1, 3, 5 and 11), global average pooling and a linear classifier.
``widths`` has 14 entries: the stem's output and each block's pointwise output, which is also the
next block's depthwise width. These are exactly the channels Pruning from Scratch gates (Wang et
al. 2020, ``models/mobilenet.py``); the depthwise layers shrink with them.

The classifier has no bias by default, as in Global MP's ``model_list.py`` (Gupta et al. 2022):
4,230,976 parameters at 1000 classes (``fc_bias=True`` gives the usual 4,231,976).
Initialisation as PFS: conv N(0, sqrt(2 / (k*k*out_channels))) (depthwise included), BN 1/0,
linear N(0, 0.01) with bias 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from prunelab.models.common import check_int, check_positive, check_widths, he_fan_out_init, out_width, scaled
from prunelab.models.registry import WidthUnit, register_family, register_model
from prunelab.models.widths import scale_units

DEFAULT_WIDTHS = (32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024)
STRIDES = (1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1)


class ConvBNReLU(nn.Sequential):
    def __init__(self, in_planes: int, out_planes: int, kernel: int, stride: int, *, groups: int = 1,
                 activation: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_planes, out_planes, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_planes)
        self.relu = activation()


class DepthwiseSeparable(nn.Module):
    """Depthwise 3x3 (stride)-BN-ReLU, pointwise 1x1-BN-ReLU."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, in_planes, 3, stride, 1, groups=in_planes, bias=False)
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(in_planes, out_planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(x)))


class MobileNetV1(nn.Module):
    def __init__(self, widths: Sequence[int], *, num_classes: int = 1000, fc_bias: bool = False,
                 in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = ConvBNReLU(in_channels, widths[0], 3, 2)
        self.features = nn.Sequential(*[DepthwiseSeparable(a, b, s) for a, b, s in zip(widths, widths[1:], STRIDES)])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(widths[-1], num_classes, bias=fc_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.conv1(x))
        return self.classifier(torch.flatten(self.pool(x), 1))


def mobilenet_v1(widths: Sequence[int] | None = None, width_mult: float = 1.0, num_classes: int = 1000,
                 fc_bias: bool = False, in_channels: int = 3) -> MobileNetV1:
    """Build MobileNet-V1. ``widths``: 14 layer widths (stem, then each block's pointwise output);
    default the standard widths x ``width_mult`` (PFS's ``e`` is ``width_mult = e / 32``).
    An explicit ``widths`` is absolute."""
    if widths is None:
        widths = [scaled(w, check_positive("width_mult", width_mult)) for w in DEFAULT_WIDTHS]
    widths = check_widths("widths", widths, len(DEFAULT_WIDTHS))
    model = MobileNetV1(widths, num_classes=check_int("num_classes", num_classes), fc_bias=bool(fc_bias),
                        in_channels=check_int("in_channels", in_channels))
    init(model)
    return model


def units(model: MobileNetV1) -> list[WidthUnit]:
    """The stem's output and every pointwise output (PFS gate placement)."""
    out = [WidthUnit("conv1", "conv1.bn", "conv1.conv", "widths", 0, out_width(model.conv1.conv))]
    for i, block in enumerate(model.features):
        path = f"features.{i}"
        out.append(WidthUnit(path, f"{path}.bn2", f"{path}.conv2", "widths", i + 1, out_width(block.conv2)))
    return out


def init(model: nn.Module) -> None:
    """PFS's MobileNet rule: conv He fan-out normal, BN 1/0, linear N(0, 0.01)."""
    he_fan_out_init(model, linear="normal")


def input_shape(kwargs: dict) -> tuple[int, ...]:
    return (int(kwargs.get("in_channels", 3)), 224, 224)


# Its width units are all its widths (``widths``).
register_family("mobilenet_v1", mobilenet_v1, units=units, init=init, input_shape=(3, 224, 224), shape_of=input_shape,
                scale_width=scale_units, doc="MobileNet-V1, ImageNet")
register_model("mobilenet-v1", "mobilenet_v1", num_classes=1000, doc="MobileNet-V1, bias-free classifier (Global MP)")
