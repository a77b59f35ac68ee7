"""Stand-ins for layers of a channel group that lost every channel.

When every internal channel of a residual (or dense) block is pruned, the block reduces to its
shortcut: the producing convolution outputs nothing and the consuming convolution outputs zeros (or
its bias) of the right shape. pytorch-prunes does the same with "zero" modules (Crowley et al. 2018,
``--deploy``). These modules keep the shapes right without zero-sized weights, export to ONNX, and
keep the consumer's bias under its original state_dict key.
"""

from __future__ import annotations

import torch
from torch import nn

from prunelab.errors import PrunelabError


def _as_tuple(v, n: int) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


class _Geometry(nn.Module):
    """Output spatial size of a convolution, from its kernel, stride, padding and dilation. The
    attributes callers read from a convolution (``in_channels``, ``out_channels``, ``kernel_size``,
    ``stride``, ``padding``, ``dilation``, ``groups``, ``padding_mode``, ``transposed``) are kept as
    the stand-in's, with the channel counts it really has."""

    def __init__(self, conv: nn.modules.conv._ConvNd) -> None:
        super().__init__()
        for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                     "padding_mode", "transposed", "output_padding"):
            if hasattr(conv, attr):
                setattr(self, attr, getattr(conv, attr))
        nd = len(conv.kernel_size)
        self.kernel = _as_tuple(conv.kernel_size, nd)
        self.stride = _as_tuple(conv.stride, nd)
        self.dilation = _as_tuple(conv.dilation, nd)
        if conv.transposed:
            raise PrunelabError(f"cannot remove every channel of transposed convolution {type(conv).__name__}")
        if isinstance(conv.padding, str):
            if conv.padding == "same":
                self.padding = tuple((d * (k - 1)) // 2 for d, k in zip(self.dilation, self.kernel))
                self.same = True
            else:  # "valid"
                self.padding, self.same = (0,) * nd, False
        else:
            self.padding, self.same = _as_tuple(conv.padding, nd), False

    def spatial(self, x: torch.Tensor) -> list[int]:
        sizes = list(x.shape[2:])
        if self.same:
            return sizes
        return [(s + 2 * p - d * (k - 1) - 1) // st + 1
                for s, p, d, k, st in zip(sizes, self.padding, self.dilation, self.kernel, self.stride)]

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}, stride={self.stride}, padding={self.padding}, dilation={self.dilation}"


class EmptyConv(_Geometry):
    """A convolution with no output channels left: returns an ``N x 0 x H' x W'`` tensor.

    Its ``weight`` is an empty, non-persistent buffer, so code reading widths from weights sees 0.
    """

    def __init__(self, conv: nn.modules.conv._ConvNd) -> None:
        super().__init__(conv)
        self.out_channels = 0
        self.register_buffer("weight", torch.zeros(0, *conv.weight.shape[1:]), persistent=False)
        self.bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros((x.shape[0], 0, *self.spatial(x)))


class ZeroConv(_Geometry):
    """A convolution with no input channels left: outputs its bias (or zeros) of the right shape."""

    def __init__(self, conv: nn.modules.conv._ConvNd) -> None:
        super().__init__(conv)
        self.in_channels = 0
        self.out_channels = conv.out_channels
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (x.shape[0], self.out_channels, *self.spatial(x))
        out = x.new_zeros(shape)
        if self.bias is None:
            return out
        # a fresh tensor (not an expanded view of the bias): callers may add into it in place
        return out + self.bias.view(1, -1, *([1] * (len(shape) - 2)))

    def extra_repr(self) -> str:
        return f"out_channels={self.out_channels}, " + super().extra_repr()


class EmptyLinear(nn.Module):
    """A linear layer with no output features left (empty non-persistent ``weight``, as EmptyConv)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = 0
        self.register_buffer("weight", torch.zeros(0, linear.in_features), persistent=False)
        self.bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros((*x.shape[:-1], 0))


class ZeroLinear(nn.Module):
    """A linear layer with no input features left: outputs its bias (or zeros)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features = 0
        self.out_features = linear.out_features
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x.new_zeros((*x.shape[:-1], self.out_features))
        return out if self.bias is None else out + self.bias  # fresh, never a view of the bias


def emptied(module: nn.Module, kind: str) -> nn.Module:
    """The stand-in for ``module`` once the group removes every channel it touches (``kind``: out, in,
    depthwise). Per-channel layers (BatchNorm, PReLU) become identities on the empty tensor."""
    from prunelab.models.common import CONV_TYPES
    from prunelab.prune.structured.groups import PER_CHANNEL_TYPES

    if isinstance(module, CONV_TYPES):
        return ZeroConv(module) if kind == "in" else EmptyConv(module)
    if isinstance(module, nn.Linear):
        return ZeroLinear(module) if kind == "in" else EmptyLinear(module)
    if isinstance(module, PER_CHANNEL_TYPES):
        return nn.Identity()
    raise PrunelabError(f"cannot remove every channel of {type(module).__name__}; keep at least one channel")
