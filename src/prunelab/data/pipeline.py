"""The in-memory batch pipeline: ordered batches for evaluation, batched augmentation for training.

Augmentation is done on whole batches with tensor ops on the training device (the airbench data
path, anchors.md 7): one pad of the batch, two ``gather`` calls that cut a differently shifted
H x W window out of every padded image, and a ``torch.where`` that flips a random half. There is no
per-sample Python, no DataLoader and no worker process. The random draws come from a caller-owned
``torch.Generator`` so the trainer can make them repeatable and resumable.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from prunelab.data.base import Augment, DataBundle


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


def random_crop(padded: torch.Tensor, height: int, width: int, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Cut ``padded[n, :, dy[n]:dy[n]+height, dx[n]:dx[n]+width]`` for every n with two gathers."""
    n, c, hp, wp = padded.shape
    rows = (dy.view(n, 1) + torch.arange(height, device=padded.device)).view(n, 1, height, 1)
    out = padded.gather(2, rows.expand(n, c, height, wp))
    cols = (dx.view(n, 1) + torch.arange(width, device=padded.device)).view(n, 1, 1, width)
    return out.gather(3, cols.expand(n, c, height, width))


def augment_batch(x: torch.Tensor, augment: Augment, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random pad-and-crop and horizontal flip of an (N, C, H, W) batch, all samples at once.

    Each sample gets its own shift in ``[-pad, pad]`` on both axes and is flipped with probability
    1/2, as ``RandomCrop(H, padding=pad)`` + ``RandomHorizontalFlip()`` do one sample at a time.
    Inputs that are not 4-D are returned unchanged.
    """
    if x.dim() != 4 or not augment.active or x.shape[0] == 0:
        return x
    n, _, h, w = x.shape
    r = torch.rand((3, n), generator=generator, device=x.device)
    if augment.pad > 0:
        span = 2 * augment.pad + 1
        dy = (r[0] * span).long().clamp_(max=span - 1)
        dx = (r[1] * span).long().clamp_(max=span - 1)
        x = random_crop(pad_batch(x, augment.pad, augment.pad_mode, augment.fill), h, w, dy, dx)
    if augment.flip:
        x = torch.where((r[2] < 0.5).view(n, 1, 1, 1), x.flip(3), x)
    return x


def batches(data: DataBundle, split: str = "test", batch_size: int = 512,
            device: torch.device | str | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Iterate ``(x, y)`` batches of a split in order, without augmentation (views of the stored tensors,
    moved to ``device`` when given)."""
    s = data.split(split)
    n = len(s)
    for start in range(0, n, int(batch_size)):
        x, y = s.x[start:start + batch_size], s.y[start:start + batch_size]
        if device is not None:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        yield x, y
