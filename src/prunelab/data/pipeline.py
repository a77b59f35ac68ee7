"""Batched augmentation on the device: pad-and-crop and flip of whole batches.

Augmentation is done on whole batches with tensor ops on the training device (the data path of
Keller Jordan's airbench): one pad of the batch and one ``gather`` that cuts a differently shifted
(and, for a random half, mirrored) H x W window out of every padded image, with no per-sample Python.
In-memory and streamed splits alike get it (:mod:`prunelab.data.feed`). The random draws come from a
caller-owned ``torch.Generator`` so the trainer can make them repeatable and resumable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from prunelab.data.base import Augment


def pad_batch(x: torch.Tensor, pad: int, mode: str = "reflect", fill: tuple[float, ...] | None = None) -> torch.Tensor:
    """Pad an (N, C, H, W) batch by ``pad`` pixels on every side.

    ``mode="reflect"`` mirrors the border (WRN / pytorch-prunes); ``"zeros"`` pads with ``fill`` per
    channel (the normalised value of a black pixel) or 0.
    """
    if mode == "reflect":
        return F.pad(x, (pad, pad, pad, pad), mode="reflect")
    if fill is None:
        return F.pad(x, (pad, pad, pad, pad))
    f = torch.as_tensor(fill, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return F.pad(x - f, (pad, pad, pad, pad)) + f


def crop_flip(padded: torch.Tensor, height: int, width: int, dy: torch.Tensor, dx: torch.Tensor,
              flip: torch.Tensor | None = None) -> torch.Tensor:
    """Cut ``padded[n, :, dy[n]:dy[n]+height, dx[n]:dx[n]+width]`` for every n, mirrored left-right
    where ``flip[n]``, with one ``gather``: the flip is folded into the column index."""
    n, c, hp, wp = padded.shape
    dev = padded.device
    cols = torch.arange(width, device=dev).expand(n, width)
    if flip is not None:
        cols = torch.where(flip.view(n, 1), width - 1 - cols, cols)
    cols = cols + dx.view(n, 1)
    rows = torch.arange(height, device=dev).view(1, height) + dy.view(n, 1)
    index = (rows.view(n, height, 1) * wp + cols.view(n, 1, width)).view(n, 1, height * width)
    out = padded.reshape(n, c, hp * wp).gather(2, index.expand(n, c, height * width))
    return out.view(n, c, height, width)


def draw_augment_params(n: int, augment: Augment, generator: torch.Generator | None = None,
                        device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random ``(dy, dx, flip)`` for ``n`` samples from one draw: shifts uniform in ``[0, 2 pad]``
    (offsets into the padded image) and flips with probability 1/2 (never when ``augment.flip`` is off)."""
    span = 2 * augment.pad + 1
    r = torch.randint(0, span * span * 2, (n,), generator=generator, device=device)
    flip = (r % 2 == 1) if augment.flip else torch.zeros(n, dtype=torch.bool, device=r.device)
    r = r // 2
    return r // span, r % span, flip


def augment_batch(x: torch.Tensor, augment: Augment, generator: torch.Generator | None = None,
                  params: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Random pad-and-crop and horizontal flip of an (N, C, H, W) batch, all samples at once.

    Each sample gets its own shift in ``[-pad, pad]`` on both axes and is flipped with probability
    1/2, as ``RandomCrop(H, padding=pad)`` + ``RandomHorizontalFlip()`` do one sample at a time.
    ``params`` (from :func:`draw_augment_params`) supplies the draws; otherwise they are drawn here
    from ``generator``. Inputs that are not 4-D are returned unchanged.
    """
    if x.dim() != 4 or not augment.active or x.shape[0] == 0:
        return x
    n, _, h, w = x.shape
    dy, dx, flip = params if params is not None else draw_augment_params(n, augment, generator, x.device)
    padded = pad_batch(x, augment.pad, augment.pad_mode, augment.fill) if augment.pad > 0 else x
    return crop_flip(padded, h, w, dy, dx, flip if augment.flip else None)
