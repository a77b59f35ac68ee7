"""How close two outputs are: the one error measure every export check uses."""

from __future__ import annotations

import torch

__all__ = ["relative_error"]


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``||actual - expected|| / ||expected||`` over the whole tensor (0 when both are zero)."""
    actual = actual.detach().double().cpu()
    expected = expected.detach().double().cpu()
    denom = float(expected.norm())
    diff = float((actual - expected).norm())
    return diff / denom if denom > 0 else diff
