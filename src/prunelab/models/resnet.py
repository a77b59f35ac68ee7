"""ImageNet ResNet-18/34/50 (He et al. 2016) with torchvision's layout and state_dict keys.

``conv1``-``bn1``-``relu``-``maxpool``, ``layer1``..``layer4`` of basic blocks (conv1/bn1,
conv2/bn2) or bottlenecks (conv1/bn1, conv2/bn2 carrying the stride, conv3/bn3, expansion 4), a
``downsample`` (1x1 conv + BN) where the stride or width changes, ``avgpool`` and ``fc``: the same
modules and keys as ``torchvision.models.resnet``, so its state_dicts load unchanged.

Widths: ``stem_width`` (64), per-stage ``widths`` (planes 64, 128, 256, 512; a bottleneck outputs
4 x planes), and ``block_widths``: the internal widths, one per basic block (conv1's output) or two
per bottleneck (conv1's and conv2's outputs), in forward order. These are the channels Pruning from
Scratch gates in ResNet-50 (Wang et al. 2020); the residual stream is never pruned. ``width_mult``
scales the stem and stage widths (PFS's ``-m``), and the default internal widths with them.
Initialisation as torchvision: conv ``kaiming_normal_(mode="fan_out")``, BN 1/0, PyTorch's default
for ``fc``; ``zero_init_residual`` zeroes each block's last BN gamma.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from prunelab.errors import check_choice
from prunelab.models.common import check_int, check_positive, check_widths, he_fan_out_init, out_width, scaled
from prunelab.models.registry import ArchSpec, WidthUnit, register_family, register_model
from prunelab.models.widths import round_width, scale_explicit, scale_list

BLOCKS = ("basic", "bottleneck")


def _downsample(in_planes: int, out_planes: int, stride: int) -> nn.Module | None:
    if stride == 1 and in_planes == out_planes:
        return None
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride, bias=False), nn.BatchNorm2d(out_planes))


class BasicBlock(nn.Module):
    expansion = 1
    internal = 1

    def __init__(self, in_planes: int, planes: int, mids: Sequence[int], stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, mids[0], 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mids[0])
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(mids[0], planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(in_planes, planes, stride)

    def internal_convs(self) -> list[str]:
        return ["conv1"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4
    internal = 2

    def __init__(self, in_planes: int, planes: int, mids: Sequence[int], stride: int) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, mids[0], 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mids[0])
        self.conv2 = nn.Conv2d(mids[0], mids[1], 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mids[1])
        self.conv3 = nn.Conv2d(mids[1], out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU()
        self.downsample = _downsample(in_planes, out_planes, stride)

    def internal_convs(self) -> list[str]:
        return ["conv1", "conv2"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: Sequence[int], stem: int,
                 widths: Sequence[int], mids: Sequence[int], *, num_classes: int = 1000, in_channels: int = 3,
                 zero_init_residual: bool = False) -> None:
        super().__init__()
        self.zero_init_residual = zero_init_residual
        self.conv1 = nn.Conv2d(in_channels, stem, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_planes, k = stem, 0
        for s, (count, planes) in enumerate(zip(layers, widths)):
            blocks = []
            for b in range(count):
                stride = 2 if s > 0 and b == 0 else 1
                blocks.append(block(in_planes, planes, mids[k:k + block.internal], stride))
                k += block.internal
                in_planes = planes * block.expansion
            self.add_module(f"layer{s + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(in_planes, num_classes)

    def stages(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet(block: str = "bottleneck", layers: Sequence[int] = (3, 4, 6, 3), widths: Sequence[int] = (64, 128, 256, 512),
           stem_width: int = 64, block_widths: Sequence[int] | None = None, width_mult: float = 1.0,
           zero_init_residual: bool = False, num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """Build an ImageNet ResNet. ``block_widths`` (absolute when given): the internal widths in
    forward order, 1 per basic block or 2 per bottleneck; default the stage's planes."""
    cls = {"basic": BasicBlock, "bottleneck": Bottleneck}[check_choice("ResNet block", block, BLOCKS)]
    layers = check_widths("layers", layers, 4)
    mult = check_positive("width_mult", width_mult)
    planes = [scaled(w, mult) for w in check_widths("widths", widths, 4)]
    stem = scaled(check_int("stem_width", stem_width), mult)
    if block_widths is None:
        mids = [p for p, n in zip(planes, layers) for _ in range(n * cls.internal)]
    else:
        mids = check_widths("block_widths", block_widths, sum(layers) * cls.internal)
    model = ResNet(cls, layers, stem, planes, mids, num_classes=check_int("num_classes", num_classes),
                   in_channels=check_int("in_channels", in_channels), zero_init_residual=bool(zero_init_residual))
    init(model)
    return model


def units(model: ResNet) -> list[WidthUnit]:
    """The internal channels of every block (conv1, and conv2 in bottlenecks), gated after their BN."""
    out = []
    for s, stage in enumerate(model.stages(), start=1):
        for b, block in enumerate(stage):
            for name in block.internal_convs():
                path = f"layer{s}.{b}"
                bn = f"{path}.bn{name[-1]}"
                out.append(WidthUnit(f"{path}.{name}", bn, f"{path}.{name}", "block_widths", len(out),
                                     out_width(getattr(block, name))))
    return out


def init(model: nn.Module) -> None:
    """torchvision's rule: conv He fan-out normal, BN 1/0, fc PyTorch default; optional zero-init of
    each residual branch's last BN."""
    he_fan_out_init(model, linear="default")
    if getattr(model, "zero_init_residual", False):
        for m in model.modules():
            last = getattr(m, "bn3", None) if isinstance(m, Bottleneck) else getattr(m, "bn2", None)
            if isinstance(m, (BasicBlock, Bottleneck)) and last is not None:
                nn.init.zeros_(last.weight)


def input_shape(kwargs: dict) -> tuple[int, ...]:
    return (int(kwargs.get("in_channels", 3)), 224, 224)


def scale_width(spec: ArchSpec, mult: float, round_to: int = 1) -> ArchSpec:
    """Stem and stage widths (times the spec's own width multiplier) times ``mult``, explicit block
    widths too."""
    wm = float(spec.kwargs.get("width_mult", 1.0))
    widths = spec.kwargs.get("widths") or [64, 128, 256, 512]
    stem = int(spec.kwargs.get("stem_width", 64))
    new = spec.with_kwargs(widths=scale_list([max(1, int(w * wm)) for w in widths], mult, round_to),
                           stem_width=round_width(max(1, int(stem * wm)) * mult, round_to), width_mult=1.0)
    return scale_explicit(spec, new, "block_widths", mult, round_to)


register_family("resnet", resnet, units=units, init=init, input_shape=(3, 224, 224), shape_of=input_shape,
                scale_width=scale_width, width_keys=("block_widths",),
                doc="ImageNet ResNet, torchvision layout and keys")
for _name, _block, _layers in (("resnet18", "basic", [2, 2, 2, 2]), ("resnet34", "basic", [3, 4, 6, 3]),
                               ("resnet50", "bottleneck", [3, 4, 6, 3])):
    register_model(_name, "resnet", block=_block, layers=_layers, num_classes=1000,
                   doc=f"ResNet-{_name[6:]} (torchvision layout and keys)")
