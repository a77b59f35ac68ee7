"""Helpers shared by the model families: width checks, width scaling and initialisation rules.

Every family constructor validates its widths with the checks here, so an impossible architecture
fails with one :class:`~prunelab.errors.PrunelabError` line that names the rule, before any layer
is built. The initialisation rules read each layer's *actual* weight shape, so they are correct for
a compressed model too (a plan narrows layers; ``family.init(model)`` then re-draws them).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from prunelab.errors import PrunelabError

#: the convolutions prunelab prunes and counts (the one table; counting adds the transposed ones)
CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
TRANSPOSED_CONV_TYPES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
#: average pools (counted in MACs; they pass channels through one to one)
POOL_TYPES = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
              nn.AdaptiveAvgPool3d)


def is_conv1d(module: nn.Module) -> bool:
    """Hugging Face's ``Conv1D`` (``transformers.pytorch_utils.Conv1D``, GPT-2): a linear layer whose
    weight is stored ``(in, out)``, with ``nf`` outputs. Recognised by shape, so transformers stays optional."""
    weight = getattr(module, "weight", None)
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and isinstance(weight, torch.Tensor) \
        and weight.dim() == 2


def check_int(name: str, value: Any, *, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``, else a PrunelabError naming ``name``."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value)
            or int(value) != value):
        raise PrunelabError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if int(value) < minimum:
        raise PrunelabError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def check_widths(name: str, values: Any, length: int | None = None, *, minimum: int = 1) -> list[int]:
    """A list of integer widths, each >= ``minimum``, with exactly ``length`` entries when given."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise PrunelabError(f"{name} must be a list of integers, got {values!r}")
    if length is not None and len(values) != length:
        raise PrunelabError(f"{name} must have {length} entries for this architecture, got {len(values)}")
    return [check_int(f"{name}[{i}]", v, minimum=minimum) for i, v in enumerate(values)]


def check_fraction(name: str, value: Any, *, low: float = 0.0, high: float = 1.0, closed_high: bool = False) -> float:
    """A float in [low, high) (or [low, high] with ``closed_high``)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise PrunelabError(f"{name} must be a number, got {value!r}") from None
    ok = low <= v <= high if closed_high else low <= v < high
    if not ok:
        bracket = "]" if closed_high else ")"
        raise PrunelabError(f"{name} must lie in [{low}, {high}{bracket}, got {value!r}")
    return v


def check_positive(name: str, value: Any) -> float:
    """A float > 0."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise PrunelabError(f"{name} must be a positive number, got {value!r}") from None
    if not v > 0 or not math.isfinite(v):
        raise PrunelabError(f"{name} must be a positive number, got {value!r}")
    return v


def scaled(width: int, mult: float) -> int:
    """``int(width * mult)``, at least 1: the truncating rule of the reference code (PFS ``multiplier``,
    pytorch-prunes ``int(16 * widen_factor)``)."""
    return max(1, int(width * mult))


# --------------------------------------------------------------------------- initialisation rules


def he_normal_fan_out_(weight: torch.Tensor) -> None:
    """N(0, sqrt(2 / (prod(kernel) * out_channels))): the rule of pytorch-prunes, PFS and torchvision's
    ``kaiming_normal_(mode="fan_out", nonlinearity="relu")`` (groups are ignored, as there)."""
    fan_out = weight.shape[0] * math.prod(weight.shape[2:])
    with torch.no_grad():
        weight.normal_(0.0, math.sqrt(2.0 / fan_out))


def he_normal_fan_in_(weight: torch.Tensor) -> None:
    """``nn.init.kaiming_normal_`` with its defaults (fan-in, gain sqrt(2))."""
    nn.init.kaiming_normal_(weight)


def bn_constant_(module: nn.Module, weight: float = 1.0, bias: float = 0.0) -> None:
    """Set a BatchNorm's affine parameters and reset its running statistics."""
    module.reset_running_stats()
    if module.weight is not None:
        with torch.no_grad():
            module.weight.fill_(weight)
            module.bias.fill_(bias)


def reset_default_(model: nn.Module) -> None:
    """PyTorch's default initialisation of every layer (its ``reset_parameters``)."""
    for m in model.modules():
        reset = getattr(m, "reset_parameters", None)
        if callable(reset):
            reset()


def he_fan_out_init(model: nn.Module, *, bn_weight: float = 1.0, linear: str = "default") -> None:
    """Conv: He fan-out normal, bias 0. BN: gamma ``bn_weight``, beta 0. Linear (``linear``):
    ``"default"`` PyTorch's rule, ``"zero_bias"`` PyTorch's rule with bias 0 (pytorch-prunes),
    ``"normal"`` N(0, 0.01) with bias 0 (PFS VGG and MobileNets)."""
    for m in model.modules():
        if isinstance(m, CONV_TYPES):
            he_normal_fan_out_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, BN_TYPES):
            bn_constant_(m, bn_weight, 0.0)
        elif isinstance(m, nn.Linear):
            if linear == "normal":
                nn.init.normal_(m.weight, 0.0, 0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            else:
                m.reset_parameters()
                if linear == "zero_bias" and m.bias is not None:
                    nn.init.zeros_(m.bias)


def out_width(module: nn.Module) -> int:
    """Output channels / features of a conv or linear layer, read from its weight (robust to layers
    whose attributes were not updated when a plan sliced the weight)."""
    return int(module.weight.shape[0])


#: default input length of a 1-D (``dims=1``) zoo network: MNIST-1D's 40 steps (Greydanus & Kobak 2020)
SIGNAL_LENGTH = 40


def check_dims(dims: Any) -> int:
    """The spatial dimensions of a convolutional family: 2 (images, Conv2d) or 1 (signals, Conv1d)."""
    if dims not in (1, 2) or isinstance(dims, bool):
        raise PrunelabError(f"dims must be 1 (Conv1d, signals) or 2 (Conv2d, images), got {dims!r}")
    return int(dims)


def conv_bn(dims: int) -> tuple[type[nn.Module], type[nn.Module]]:
    """(convolution, BatchNorm) classes for ``dims`` spatial dimensions."""
    return (nn.Conv1d, nn.BatchNorm1d) if dims == 1 else (nn.Conv2d, nn.BatchNorm2d)


def default_shape(kwargs: dict, size: int = 32) -> tuple[int, ...]:
    """A convolutional family's default input shape: (C, size, size) for images, (C, 40) for ``dims: 1``."""
    channels = int(kwargs.get("in_channels", 3))
    return (channels, SIGNAL_LENGTH) if int(kwargs.get("dims", 2)) == 1 else (channels, size, size)
