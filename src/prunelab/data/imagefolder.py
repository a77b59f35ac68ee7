"""ImageNet-style class folders, loaded into memory at a fixed size (for small real datasets).

Layout::

    root/train/<class>/<image>    (one folder per class; the class index is the folder's rank in
    root/val/<class>/<image>       sorted order, as torchvision's ImageFolder)

``val/`` is the evaluation set reported as ``test`` (as the ImageNet validation set is); ``val_fraction``
holds out a stratified share of ``train/`` as the validation split used for model selection. Every
image is decoded with PIL, converted to RGB (or L with ``channels=1``), resized so its shorter side is
``size`` and centre-cropped to ``size`` x ``size`` (``keep_aspect=False`` squashes instead), then
normalised with the training split's per-channel statistics. Training augmentation is pad-and-crop
(``pad``, default size // 8) plus horizontal flip, the in-memory analogue of a random crop.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from prunelab.data.base import Augment, DataBundle
from prunelab.data.registry import register_dataset
from prunelab.data.splits import channel_stats, check_fraction, normalize, stratified_split, to_split
from prunelab.errors import PrunelabError, require
from prunelab.resources import check_claim

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".gif", ".tif", ".tiff", ".webp")


def _class_dirs(split_dir: Path) -> list[Path]:
    return sorted((d for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name)


def _images(class_dir: Path) -> list[Path]:
    # Hidden files (macOS "._name.jpg" metadata, editors' backups) are not images, as hidden folders are not classes.
    return sorted(p for p in class_dir.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)


def _layout_error(root: Path, problem: str) -> PrunelabError:
    return PrunelabError(f"image folder dataset under {root}: {problem}; expected {root}/train/<class>/<images> "
                         f"and {root}/val/<class>/<images>")


def _decode(path: Path, size: int, mode: str, keep_aspect: bool) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Pillow's guard against decompression bombs: refuse such an image with one line.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img = img.convert(mode)
                if keep_aspect:
                    w, h = img.size
                    scale = size / min(w, h)
                    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
                    img = img.resize((nw, nh), Image.BILINEAR)
                    left, top = (nw - size) // 2, (nh - size) // 2
                    img = img.crop((left, top, left + size, top + size))
                else:
                    img = img.resize((size, size), Image.BILINEAR)
                arr = np.asarray(img, dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PrunelabError(f"image {path} is too large to decode safely ({exc})") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise PrunelabError(f"image {path} is corrupt or not an image ({type(exc).__name__})") from exc
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _read_split(root: Path, split_dir: Path, classes: list[str], size: int, mode: str,
                keep_aspect: bool) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    index = {c: i for i, c in enumerate(classes)}
    for d in _class_dirs(split_dir):
        if d.name not in index:
            raise _layout_error(root, f"class folder {d.name!r} in {split_dir.name}/ has no counterpart in train/")
        files = _images(d)
        for f in files:
            xs.append(_decode(f, size, mode, keep_aspect))
            ys.append(index[d.name])
    if not xs:
        raise _layout_error(root, f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {split_dir}")
    return np.stack(xs), np.asarray(ys, dtype=np.int64)


def load_imagefolder(root, *, val_fraction: float = 0.0, seed: int = 0, size: int = 32, channels: int = 3,
                     keep_aspect: bool = True, pad: int | None = None, flip: bool = True) -> DataBundle:
    """Class-folder images (train/ and val/), decoded with PIL into memory at ``size`` x ``size``."""
    require("PIL.Image", "imagefolder", "images", "Pillow")
    root = Path(root).expanduser()
    size = int(size)
    if size < 4:
        raise PrunelabError(f"imagefolder size must be >= 4 pixels, got {size}")
    if channels not in (1, 3):
        raise PrunelabError(f"imagefolder channels must be 1 or 3, got {channels}")
    val_fraction = check_fraction("val_fraction", val_fraction)
    if not root.is_dir():
        raise _layout_error(root, "folder not found")
    train_dir, val_dir = root / "train", root / "val"
    for d in (train_dir, val_dir):
        if not d.is_dir():
            raise _layout_error(root, f"missing {d.name}/ folder")
    classes = [d.name for d in _class_dirs(train_dir)]
    if len(classes) < 2:
        raise _layout_error(root, f"train/ must hold at least two class folders, found {len(classes)}")
    for c in classes:
        if not _images(train_dir / c):
            raise _layout_error(root, f"class folder train/{c} holds no images")
    count = sum(len(_images(d)) for split in (train_dir, val_dir) for d in _class_dirs(split))
    # decoded as bytes, then as float32 (and its normalised copy)
    check_claim(f"imagefolder {root} ({count:,} images at {channels}x{size}x{size})",
                count * channels * size * size * 9)
    mode = "RGB" if channels == 3 else "L"
    x, y = _read_split(root, train_dir, classes, size, mode, keep_aspect)
    x_test, y_test = _read_split(root, val_dir, classes, size, mode, keep_aspect)
    keep, held = stratified_split(y, val_fraction, seed)
    x = x.astype(np.float32) / 255.0
    x_test = x_test.astype(np.float32) / 255.0
    mean, std = channel_stats(x[keep], channel_axis=1)
    x, x_test = normalize(x, mean, std, 1), normalize(x_test, mean, std, 1)
    pad = max(1, size // 8) if pad is None else int(pad)
    fill = tuple(float(-m / s) for m, s in zip(mean, std))
    return DataBundle(
        name="imagefolder",
        train=to_split(x[keep], y[keep]),
        val=to_split(x[held], y[held]),
        test=to_split(x_test, y_test),
        num_classes=len(classes),
        input_shape=(channels, size, size),
        task="image",
        augment=Augment(pad=pad, flip=bool(flip), pad_mode="reflect", fill=fill),
        info={"source": str(root), "class_names": classes, "mean": mean.tolist(), "std": std.tolist()},
    )


register_dataset("imagefolder", load_imagefolder, needs_root=True,
                 doc="ImageNet-style class folders (train/ and val/), resized in memory")
