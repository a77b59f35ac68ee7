"""Deterministic splits and normalisation shared by the dataset loaders.

Every loader carves its validation split the same way: stratified by class, drawn with a NumPy
generator seeded by ``seed``, so the same call always gives the same split on every machine.
"""

from __future__ import annotations

import numpy as np
import torch

from prunelab.data.base import Split
from prunelab.errors import PrunelabError


def check_fraction(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise PrunelabError(f"{name} must be in [0, 1), got {value}")
    return value


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices ``0..len(labels)-1`` into (keep, held_out), holding out ``fraction`` of each class.

    Each class contributes ``round(fraction * n_class)`` samples to the held-out part (at least one
    when ``fraction > 0`` and the class has two or more samples). Both parts are returned in
    ascending index order, so the split does not reorder the data.

    Samples labelled with a sequence (``labels`` of shape ``(N, T)``: next-token blocks) have no class,
    so ``fraction`` of them is held out uniformly at random (at least one of two or more).
    """
    labels = np.asarray(labels)
    fraction = check_fraction("val_fraction", fraction)
    n = labels.shape[0] if labels.ndim else 0
    if fraction == 0.0 or labels.size == 0:
        return np.arange(n), np.arange(0)
    rng = np.random.default_rng(seed)
    if labels.ndim > 1:
        k = min(max(int(round(fraction * n)), 1), n - 1) if n >= 2 else 0
        held_idx = np.sort(rng.permutation(n)[:k])
        return np.setdiff1d(np.arange(n), held_idx), held_idx
    held = []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        k = int(round(fraction * idx.size))
        if k == 0 and idx.size >= 2:
            k = 1
        k = min(k, idx.size - 1) if idx.size >= 2 else 0
        held.append(rng.permutation(idx)[:k])
    held_idx = np.sort(np.concatenate(held)) if held else np.arange(0)
    mask = np.ones(labels.size, dtype=bool)
    mask[held_idx] = False
    return np.flatnonzero(mask), held_idx


def to_split(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> Split:
    """A :class:`Split` with float32 inputs and int64 labels (copies, never views of caller arrays)."""
    if isinstance(x, torch.Tensor):
        xt, yt = x.detach().to(torch.float32).clone(), torch.as_tensor(y).to(torch.int64).clone()
    else:
        xt = torch.from_numpy(np.array(x, dtype=np.float32, order="C", copy=True))
        yt = torch.from_numpy(np.array(y, dtype=np.int64, copy=True))
    if xt.shape[0] != yt.shape[0]:
        raise PrunelabError(f"inputs and labels disagree: {xt.shape[0]} inputs, {yt.shape[0]} labels")
    return Split(xt, yt)


def channel_stats(x: np.ndarray, channel_axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation over every other axis (float64 accumulation)."""
    axes = tuple(a for a in range(x.ndim) if a != channel_axis % x.ndim)
    x64 = x.astype(np.float64, copy=False)
    mean = x64.mean(axis=axes)
    std = x64.std(axis=axes)
    std = np.where(std > 0, std, 1.0)
    return mean, std


def normalize(x: np.ndarray, mean, std, channel_axis: int) -> np.ndarray:
    """``(x - mean) / std`` per channel along ``channel_axis``, as float32."""
    shape = [1] * x.ndim
    shape[channel_axis % x.ndim] = -1
    m = np.asarray(mean, dtype=np.float32).reshape(shape)
    s = np.asarray(std, dtype=np.float32).reshape(shape)
    return ((x.astype(np.float32, copy=False) - m) / s).astype(np.float32, copy=False)
