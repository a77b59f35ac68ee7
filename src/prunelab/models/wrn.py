"""Pre-activation Wide ResNet WRN-depth-k (Zagoruyko & Komodakis 2016) with per-block internal widths.

Layout of pytorch-prunes (Crowley et al. 2018, ``models/wideresnet.py``): a 3x3 stem conv to 16
channels, three groups of n = (depth - 4) / 6 blocks of widths int(16k), int(32k), int(64k) with
strides 1, 2, 2, then BN-ReLU, global average pooling and a linear classifier. A block is
BN-ReLU-conv3x3(in->mid, stride)-BN-ReLU-[dropout]-conv3x3(mid->out) plus the shortcut: identity,
or a 1x1 strided conv of the *pre-activated* input where the width or stride changes.

``mid`` (conv1's output) is the block-internal width that Crowley et al. prune (their MaskBlock
masks it after BN2 and ReLU2); it is one entry of ``block_widths``. ``bottle_mult`` sets every
internal width to int(group width x bottle_mult) (their ``WideResNetBottle`` reduced networks).
``k`` may be fractional. Dropout 0.3 is the Global MP setting for WRN-22-8 / WRN-28-8 (Gupta et al.
2022); their model returns log-probabilities, ours returns logits (same argmax and loss under
cross-entropy).

``dims=1`` builds the same network with 1-D convolutions (kernel 3, BatchNorm1d) for signals such as
MNIST-1D (1 x 40): the widths, width units and module names are those of the 2-D network.

Module names follow pytorch-prunes (``block1.layer.0.convShortcut``...), so its checkpoints load.
Initialisation as there: conv N(0, sqrt(2 / (k*k*out_channels))), BN gamma 1 / beta 0, linear
bias 0 (weight by PyTorch's default rule).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.models.common import (
    check_dims,
    check_fraction,
    check_int,
    check_positive,
    check_widths,
    conv_bn,
    default_shape,
    he_fan_out_init,
    out_width,
    scaled,
)
from prunelab.models.registry import ArchSpec, WidthUnit, register_family, register_model
from prunelab.models.widths import scale_explicit, scale_list


class WideBlock(nn.Module):
    """Pre-activation basic block with an explicit internal width."""

    def __init__(self, in_planes: int, mid_planes: int, out_planes: int, stride: int, dropout: float,
                 dims: int = 2) -> None:
        super().__init__()
        conv, bn = conv_bn(dims)
        self.bn1 = bn(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = conv(in_planes, mid_planes, 3, stride, 1, bias=False)
        self.bn2 = bn(mid_planes)
        self.relu2 = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv(mid_planes, out_planes, 3, 1, 1, bias=False)
        needs_projection = in_planes != out_planes or stride != 1
        self.convShortcut = conv(in_planes, out_planes, 1, stride, 0, bias=False) if needs_projection else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu1(self.bn1(x))
        out = self.conv2(self.dropout(self.relu2(self.bn2(self.conv1(pre)))))
        return out + (x if self.convShortcut is None else self.convShortcut(pre))


class WideGroup(nn.Module):
    """A group of blocks (pytorch-prunes' ``NetworkBlock``; keeps its ``.layer`` state_dict prefix)."""

    def __init__(self, blocks: Sequence[nn.Module]) -> None:
        super().__init__()
        self.layer = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """``widths`` = [stem, group1, group2, group3]; ``group_block_widths[g][b]`` the internal widths."""

    def __init__(self, widths: Sequence[int], group_block_widths: Sequence[Sequence[int]], *, dropout: float = 0.0,
                 num_classes: int = 10, in_channels: int = 3, dims: int = 2) -> None:
        super().__init__()
        conv, bn = conv_bn(dims)
        self.conv1 = conv(in_channels, widths[0], 3, 1, 1, bias=False)
        in_planes = widths[0]
        for g, (width, mids) in enumerate(zip(widths[1:], group_block_widths)):
            blocks = []
            for b, mid in enumerate(mids):
                stride = 2 if g > 0 and b == 0 else 1
                blocks.append(WideBlock(in_planes, mid, width, stride, dropout, dims))
                in_planes = width
            self.add_module(f"block{g + 1}", WideGroup(blocks))
        self.bn1 = bn(in_planes)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool1d(1) if dims == 1 else nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)

    def groups(self) -> list[WideGroup]:
        return [self.block1, self.block2, self.block3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        return self.fc(torch.flatten(self.avgpool(out), 1))


def blocks_per_group(depth: int) -> int:
    """n = (depth - 4) / 6; the depth must be 6n + 4 with n >= 1."""
    depth = check_int("WRN depth", depth)
    if depth < 10 or (depth - 4) % 6:
        raise PrunelabError(f"WRN depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 40, ...), got {depth}")
    return (depth - 4) // 6


def wrn(depth: int = 16, widen_factor: float = 1.0, widths: Sequence[int] | None = None,
        block_widths: Sequence[int] | None = None, bottle_mult: float = 1.0, dropout: float = 0.0,
        num_classes: int = 10, in_channels: int = 3, dims: int = 2) -> WideResNet:
    """Build WRN-depth-k.

    ``widths``: [stem, group1, group2, group3]; default [16, int(16k), int(32k), int(64k)].
    ``block_widths``: internal width of each of the 3n blocks in forward order; default
    int(group width x ``bottle_mult``). Explicit lists are absolute. ``dims``: 2 (images) or 1 (signals).
    """
    n = blocks_per_group(depth)
    k = check_positive("WRN widen_factor", widen_factor)
    mult = check_positive("bottle_mult", bottle_mult)
    dropout = check_fraction("dropout", dropout)
    if widths is None:
        widths = [16, int(16 * k), int(32 * k), int(64 * k)]
        if min(widths) < 1:
            raise PrunelabError(f"WRN widen_factor {widen_factor} gives a group width of 0; use k >= 1/16")
    widths = check_widths("widths", widths, 4)
    if block_widths is None:
        mids = [scaled(w, mult) for w in widths[1:] for _ in range(n)]
    else:
        mids = check_widths("block_widths", block_widths, 3 * n)
    model = WideResNet(widths, [mids[i * n:(i + 1) * n] for i in range(3)], dropout=dropout,
                       num_classes=check_int("num_classes", num_classes),
                       in_channels=check_int("in_channels", in_channels), dims=check_dims(dims))
    init(model)
    return model


def units(model: WideResNet) -> list[WidthUnit]:
    """One unit per block: the internal channels (conv1 output, masked after bn2/relu2)."""
    out, k = [], 0
    for g, group in enumerate(model.groups(), start=1):
        for b, block in enumerate(group.layer):
            path = f"block{g}.layer.{b}"
            out.append(WidthUnit(path, f"{path}.bn2", f"{path}.conv1", "block_widths", k, out_width(block.conv1)))
            k += 1
    return out


def init(model: nn.Module) -> None:
    """pytorch-prunes' rule (conv He fan-out normal, BN 1/0, linear bias 0)."""
    he_fan_out_init(model, linear="zero_bias")


def input_shape(kwargs: dict) -> tuple[int, ...]:
    return default_shape(kwargs)


def scale_width(spec: ArchSpec, mult: float, round_to: int = 1) -> ArchSpec:
    """Widths times ``mult``: the stem stays 16 channels, the group widths int(16k), int(32k), int(64k)
    scale (pytorch-prunes' k), and explicit block widths with them."""
    k = float(spec.kwargs.get("widen_factor", 1.0))
    widths = spec.kwargs.get("widths") or [16, int(16 * k), int(32 * k), int(64 * k)]
    new = spec.with_kwargs(widths=[int(widths[0])] + scale_list(widths[1:], mult, round_to))
    return scale_explicit(spec, new, "block_widths", mult, round_to)


register_family("wrn", wrn, units=units, init=init, shape_of=input_shape, scale_width=scale_width,
                width_keys=("block_widths",), doc="pre-activation Wide ResNet WRN-depth-k (pytorch-prunes layout)")

# Wide ResNets (pytorch-prunes; dropout 0.3 for the Global MP WRN-22-8 / WRN-28-8 settings).
for _depth, _k, _drop in ((16, 1, 0.0), (16, 2, 0.0), (16, 8, 0.0), (22, 8, 0.3), (28, 8, 0.3), (28, 10, 0.3),
                          (40, 1, 0.0), (40, 2, 0.0), (40, 4, 0.0)):
    register_model(f"wrn-{_depth}-{_k}", "wrn", depth=_depth, widen_factor=_k, dropout=_drop,
                   doc=f"WRN-{_depth}-{_k}" + (f", dropout {_drop}" if _drop else ""))
