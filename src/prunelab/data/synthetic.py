"""Synthetic classification data of any shape and size, for scale tests and benchmarks.

Each class has a smooth random prototype (images: a 4x4 random pattern per channel upsampled to
H x W and made left-right symmetric so flips keep the class; sequences: 8 knots per feature upsampled
along time; vectors: a random vector), scaled to unit RMS. A sample of class ``y`` is::

    x = P[y] + mix * (z @ P) + noise * e,      z ~ N(0, I_K),  e ~ N(0, I)

so the label is recoverable from the projection on the prototypes (learnable) but not perfectly:
the ``mix`` term moves samples toward other classes, which bounds the best accuracy (about 0.9 for
10 classes with the defaults), so accuracy reflects how well a model has learned. Everything is
drawn from one ``torch.Generator`` seeded by ``seed``: the same arguments give the same tensors.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from prunelab.data.base import Augment, DataBundle, Split
from prunelab.data.registry import register_dataset
from prunelab.errors import PrunelabError
from prunelab.resources import check_claim


def _parse_shape(shape) -> tuple[int, ...]:
    if isinstance(shape, str):
        try:
            dims = tuple(int(t) for t in shape.replace("x", ",").split(",") if t.strip())
        except ValueError:
            raise PrunelabError(f"synthetic shape {shape!r} must look like 3x32x32, 128x9 or 20") from None
    else:
        dims = tuple(int(d) for d in shape)
    if not 1 <= len(dims) <= 3 or any(d < 1 for d in dims):
        raise PrunelabError(f"synthetic shape {shape!r} must have 1 to 3 positive dimensions (CxHxW, TxF or F)")
    return dims


def _prototypes(shape: tuple[int, ...], k: int, g: torch.Generator) -> torch.Tensor:
    if len(shape) == 3:
        c, h, w = shape
        low = torch.randn(k, c, min(h, 4), min(w, 4), generator=g)
        p = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False) if (h, w) != low.shape[-2:] else low
        p = 0.5 * (p + p.flip(-1))
    elif len(shape) == 2:
        t, f = shape
        low = torch.randn(k, f, min(t, 8), generator=g)
        p = F.interpolate(low, size=t, mode="linear", align_corners=False) if t != low.shape[-1] else low
        p = p.transpose(1, 2)
    else:
        p = torch.randn(k, *shape, generator=g)
    rms = p.flatten(1).pow(2).mean(1).sqrt().clamp_min(1e-6)
    return (p / rms.view(-1, *([1] * len(shape)))).contiguous()


def _samples(protos: torch.Tensor, n: int, mix: float, noise: float, g: torch.Generator) -> Split:
    k = protos.shape[0]
    y = torch.randint(0, k, (n,), generator=g)
    flat = protos.flatten(1)
    coeff = F.one_hot(y, k).float() + mix * torch.randn(n, k, generator=g)
    x = coeff @ flat
    x += noise * torch.randn(x.shape, generator=g)
    return Split(x.view(n, *protos.shape[1:]), y)


def load_synthetic(root=None, *, val_fraction: float | None = None, seed: int = 0, shape="3x32x32",
                   num_classes: int = 10, n_train: int = 2048, n_val: int = 256, n_test: int = 512,
                   mix: float = 0.3, noise: float = 1.0, pad: int | None = None,
                   flip: bool | None = None) -> DataBundle:
    """Random prototype data of any ``shape`` (CxHxW images, TxF sequences, F vectors), deterministic by seed.

    ``n_val`` sets the validation size (``val_fraction``, if given, overrides it as a share of
    ``n_train + n_val``). Images get pad-and-crop (``pad``, default H // 8) and flip augmentation.
    """
    dims = _parse_shape(shape)
    num_classes, n_train, n_val, n_test = int(num_classes), int(n_train), int(n_val), int(n_test)
    if num_classes < 2:
        raise PrunelabError(f"synthetic num_classes must be >= 2, got {num_classes}")
    if n_train < 1 or n_val < 0 or n_test < 0:
        raise PrunelabError(f"synthetic sizes must be n_train >= 1, n_val >= 0, n_test >= 0; got {n_train}, "
                            f"{n_val}, {n_test}")
    if val_fraction is not None:
        if not 0.0 <= float(val_fraction) < 1.0:
            raise PrunelabError(f"val_fraction must be in [0, 1), got {val_fraction}")
        total = n_train + n_val
        n_val = int(round(total * float(val_fraction)))
        n_train = total - n_val
    if not (math.isfinite(mix) and math.isfinite(noise) and mix >= 0 and noise >= 0):
        raise PrunelabError(f"synthetic mix and noise must be finite numbers >= 0, got {mix}, {noise}")
    n = n_train + n_val + n_test
    # the samples, and the noise and class-mixing terms drawn for them, before they are summed
    check_claim(f"synthetic data of {n:,} samples of shape {'x'.join(map(str, dims))} and {num_classes:,} classes",
                4 * (2 * n * math.prod(dims) + num_classes * math.prod(dims) + 2 * n * num_classes))
    g = torch.Generator().manual_seed(int(seed))
    protos = _prototypes(dims, num_classes, g)
    train = _samples(protos, n_train, mix, noise, g)
    val = _samples(protos, n_val, mix, noise, g)
    test = _samples(protos, n_test, mix, noise, g)
    # Scale to unit variance on the training split (the same affine map for every split).
    mean, std = train.x.mean(), train.x.std().clamp_min(1e-6)
    for s in (train, val, test):
        s.x.sub_(mean).div_(std)
    task = {3: "image", 2: "sequence", 1: "vector"}[len(dims)]
    if task == "image":
        pad = max(0, dims[1] // 8) if pad is None else int(pad)
        augment = Augment(pad=pad, flip=True if flip is None else bool(flip), pad_mode="reflect")
    else:
        augment = Augment.none()
    return DataBundle(
        name="synthetic", train=train, val=val, test=test, num_classes=num_classes, input_shape=dims, task=task,
        augment=augment,
        info={"seed": int(seed), "mix": float(mix), "noise": float(noise),
              "approx_best_acc": round(_bayes_hint(num_classes, mix), 3)},
    )


def _bayes_hint(k: int, mix: float) -> float:
    """Rough accuracy of the nearest-prototype rule ignoring the per-pixel noise (union bound)."""
    if mix == 0:
        return 1.0
    z = 1.0 / (mix * math.sqrt(2.0))
    p_wrong_pair = 0.5 * math.erfc(z / math.sqrt(2.0))
    return max(1.0 / k, 1.0 - (k - 1) * p_wrong_pair)


register_dataset("synthetic", load_synthetic, doc="random prototype data of any shape (scale tests, benchmarks)")
