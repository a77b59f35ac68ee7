"""The ImageNet preprocessing of the seed papers, without torchvision: Pillow in the workers, torch on
the device.

Training (Gupta et al. 2022, ``GlobalMP`` ImageNet code; Wang et al. 2020, ``train_pruned_imagenet.py``):
``RandomResizedCrop(224, scale)`` and a horizontal flip per sample, in the DataLoader workers, where
the image is decoded anyway and its size varies (:class:`TrainCrop`); then, on the device, on the whole
batch (:class:`ImageNetBatch`): ``ColorJitter(brightness, contrast, saturation)`` and AlexNet-style PCA
lighting (Krizhevsky et al. 2012) for PFS, and normalisation with the ImageNet channel statistics.
Scale ranges: ``(0.08, 1)`` (torchvision's default: Gupta et al.; PFS ResNet-50) or ``(0.25, 1)`` (PFS's
"mobile setting" for MobileNets and for gate learning). PFS uses jitter 0.4 and lighting 0.1.
Evaluation (both papers): resize the shorter side to 256, centre-crop 224 (:class:`EvalCrop`).

The crops follow torchvision's algorithms exactly (``RandomResizedCrop.get_params``, ``Resize`` on
PIL images, ``CenterCrop``'s rounding), with Pillow's bilinear filter as torchvision uses on PIL
images. The jitter follows torchvision's tensor implementation (factors uniform in
``[1 - j, 1 + j]``, the three adjustments in a random order per image, clamped to [0, 1]); torchvision
applies it to PIL images in the reference code, whose rounding to 8 bits is not reproduced. Flipping
before the jitter, as here, is the same in distribution as after it (the jitter is global per image).
"""

from __future__ import annotations

import math
import random

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: PCA of ImageNet RGB pixels (fb.resnet.torch / the reference ``Lighting`` transform)
PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
PCA_EIGVEC = ((-0.5675, 0.7192, 0.4009),
              (-0.5808, -0.0045, -0.8140),
              (-0.5836, -0.6948, 0.4203))
_GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


def random_resized_box(width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float],
                       rng: random.Random) -> tuple[int, int, int, int]:
    """``(left, top, w, h)`` of a random crop: torchvision's ``RandomResizedCrop.get_params``.

    Ten tries at an area uniform in ``scale`` x the image area and a log-uniform aspect ratio in
    ``ratio``; if none fits, the largest centred crop whose aspect ratio lies in ``ratio``.
    """
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = rng.randint(0, height - h)
            left = rng.randint(0, width - w)
            return left, top, w, h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


class TrainCrop:
    """Random resized crop to ``size`` x ``size`` and, with ``flip``, a left-right flip with p = 1/2."""

    def __init__(self, size: int = 224, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: bool = True) -> None:
        self.size, self.scale, self.ratio, self.flip = int(size), tuple(scale), tuple(ratio), bool(flip)

    def __call__(self, img, rng: random.Random):
        from PIL import Image

        left, top, w, h = random_resized_box(img.width, img.height, self.scale, self.ratio, rng)
        # crop, then resize (torchvision's resized_crop): Pillow's ``box=`` would filter across the crop edge
        out = img.crop((left, top, left + w, top + h)).resize((self.size, self.size), Image.BILINEAR)
        if self.flip and rng.random() < 0.5:
            out = out.transpose(Image.FLIP_LEFT_RIGHT)
        return out


class EvalCrop:
    """Resize the shorter side to ``resize`` (torchvision ``Resize(resize)``), centre-crop ``size``."""

    def __init__(self, size: int = 224, resize: int = 256) -> None:
        self.size, self.resize = int(size), int(resize)

    def __call__(self, img, rng: random.Random | None = None):
        from PIL import Image

        w, h = img.size
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = self.resize, int(self.resize * long / short)
        nw, nh = (new_short, new_long) if w <= h else (new_long, new_short)
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), Image.BILINEAR)
        top = int(round((nh - self.size) / 2.0))
        left = int(round((nw - self.size) / 2.0))
        return img.crop((left, top, left + self.size, top + self.size))


def _gray(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(_GRAY, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def color_jitter(x: torch.Tensor, brightness: float, contrast: float, saturation: float,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """torchvision's ``ColorJitter(brightness, contrast, saturation)`` on a float (N, 3, H, W) batch in
    [0, 1]: a factor per image and adjustment, uniform in ``[max(0, 1 - s), 1 + s]``, the three applied
    in a random order per image (each computed for the batch, chosen per image by its order)."""
    n, dev = x.shape[0], x.device
    strengths = (float(brightness), float(contrast), float(saturation))
    u = torch.rand(n, 3, generator=generator, device=dev, dtype=x.dtype)
    lo = torch.tensor([max(0.0, 1.0 - s) for s in strengths], device=dev, dtype=x.dtype)
    hi = torch.tensor([1.0 + s for s in strengths], device=dev, dtype=x.dtype)
    factors = lo + u * (hi - lo)
    order = torch.rand(n, 3, generator=generator, device=dev).argsort(1)  # a random permutation per image
    for position in range(3):
        which = order[:, position]
        out = x
        for op in range(3):
            if strengths[op] == 0:
                continue
            f = factors[:, op].view(n, 1, 1, 1)
            if op == 0:
                adjusted = x * f
            elif op == 1:
                adjusted = f * x + (1 - f) * _gray(x).mean(dim=(1, 2, 3), keepdim=True)
            else:
                adjusted = f * x + (1 - f) * _gray(x)
            out = torch.where((which == op).view(n, 1, 1, 1), adjusted.clamp(0, 1), out)
        x = out
    return x


def pca_lighting(x: torch.Tensor, alphastd: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """AlexNet PCA lighting: add ``eigvec @ (alpha * eigval)`` to every pixel, ``alpha ~ N(0, alphastd)``
    per image (the reference ``Lighting`` transform, applied to [0, 1] tensors, not clamped)."""
    n = x.shape[0]
    alpha = torch.randn(n, 3, generator=generator, device=x.device, dtype=x.dtype) * float(alphastd)
    eigval = torch.tensor(PCA_EIGVAL, dtype=x.dtype, device=x.device)
    eigvec = torch.tensor(PCA_EIGVEC, dtype=x.dtype, device=x.device)
    rgb = (alpha * eigval) @ eigvec.T
    return x + rgb.view(n, 3, 1, 1)


class ImageNetBatch:
    """The device half of the pipeline (a :class:`~prunelab.data.stream.BatchTransform`): uint8 batch ->
    float in [0, 1] -> (training only) colour jitter and PCA lighting -> ``(x - mean) / std``."""

    def __init__(self, jitter: float = 0.0, lighting: float = 0.0, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> None:
        self.jitter, self.lighting = float(jitter), float(lighting)
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        if generator is not None and self.jitter > 0:
            x = color_jitter(x, self.jitter, self.jitter, self.jitter, generator)
        if generator is not None and self.lighting > 0:
            x = pca_lighting(x, self.lighting, generator)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std
