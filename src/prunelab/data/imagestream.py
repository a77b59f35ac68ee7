"""ImageNet-style class folders, streamed: decoded in DataLoader workers, memory bounded by the batch.

Layout (the ImageNet / torchvision ``ImageFolder`` one; the class index is the folder's rank in
sorted order)::

    root/train/<class>/<image>
    root/val/<class>/<image>        (reported as ``test``, as the ImageNet validation set is)

Only the file list is held: relative paths as one fixed-width NumPy byte array and labels as an
int64 array (about 50 bytes per image, no Python object per file, so forked workers do not copy
it page by page through reference counting). Images are decoded, cropped and flipped in the
workers (:mod:`prunelab.data.imagenet`) and cross to the device as uint8; colour jitter, lighting
and normalisation run there on whole batches. Peak memory therefore depends on batch size, workers
and prefetch depth, not on the number of images (``tests/test_imagestream.py`` measures it).

Validation for model selection: ``val_per_class`` holds out the last N training images of every
class (Wang et al. 2020 on ImageNet: 50 per class), or ``val_fraction`` a stratified share; the
held-out images are read with the evaluation crop. A file that cannot be decoded stops the run with
one line naming it (``corrupt=stop``), or is left out of its batch and counted in the log
(``corrupt=skip``). Tar shards of the same data: :mod:`prunelab.data.shards`.
"""

from __future__ import annotations

import os
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prunelab.data.base import DataBundle
from prunelab.data.imagenet import IMAGENET_MEAN, IMAGENET_STD, EvalCrop, ImageNetBatch, TrainCrop
from prunelab.data.registry import register_dataset
from prunelab.data.splits import check_fraction, stratified_split
from prunelab.data.stream import Skipped, StreamSplit
from prunelab.errors import PrunelabError, check_choice, require

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".gif", ".tif", ".tiff", ".webp")
CORRUPT_CHOICES = ("stop", "skip")


class FolderFiles:
    """Images as files under ``root``: relative paths in one NumPy byte array."""

    def __init__(self, root: str, paths: np.ndarray) -> None:
        self.root, self.paths = str(root), paths

    def __len__(self) -> int:
        return int(self.paths.shape[0])

    def describe(self, i: int) -> str:
        return os.path.join(self.root, self.paths[i].decode("utf-8", "surrogateescape"))

    def open(self, i: int):
        return open(self.describe(i), "rb")  # noqa: SIM115 (closed by the caller's with-block)

    def subset(self, idx: np.ndarray) -> FolderFiles:
        return FolderFiles(self.root, self.paths[idx])


class ImageSamples(torch.utils.data.Dataset):
    """Decoded, cropped images and their labels: ``(uint8 tensor (3, size, size), label)`` per item.

    ``store`` reads the encoded bytes of item ``i`` (:class:`FolderFiles`, or tar shards);
    ``crop`` is :class:`~prunelab.data.imagenet.TrainCrop` or :class:`~prunelab.data.imagenet.EvalCrop`.
    Items are keyed ``(index, seed)`` (``seeded``): a random crop depends only on the sample and the
    seed the feed derives from the run's seed and epoch, never on the worker that reads it.
    """

    seeded = True

    def __init__(self, store: Any, labels: np.ndarray, crop, eval_crop: EvalCrop, corrupt: str = "stop") -> None:
        self.store, self.labels, self.crop, self.eval_crop = store, labels, crop, eval_crop
        self.corrupt = check_choice("corrupt", corrupt, CORRUPT_CHOICES)

    @property
    def targets(self) -> np.ndarray:
        return self.labels

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (int(key), int(key))
        try:
            img = self._decode(index)
        except _Unreadable as exc:
            return Skipped(self.store.describe(index), str(exc), self.corrupt == "stop")
        out = self.crop(img, random.Random(seed))
        arr = np.asarray(out, dtype=np.uint8)
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))), int(self.labels[index])

    def _decode(self, index: int):
        from PIL import Image, UnidentifiedImageError

        try:
            with warnings.catch_warnings():
                # Pillow's guard against decompression bombs, as an error rather than a warning.
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with self.store.open(index) as fh, Image.open(fh) as img:
                    return img.convert("RGB")
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _Unreadable(f"too large to decode safely: {exc}") from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
            raise _Unreadable(f"corrupt or not an image: {type(exc).__name__}: {' '.join(str(exc).split())}") from None

    def select(self, indices: list[int], evaluation: bool = False) -> ImageSamples:
        idx = np.asarray(indices, dtype=np.int64)
        return ImageSamples(self.store.subset(idx), self.labels[idx], self.eval_crop if evaluation else self.crop,
                            self.eval_crop, self.corrupt)


class _Unreadable(Exception):
    pass


def image_bundle(name: str, train: tuple[Any, np.ndarray], test: tuple[Any, np.ndarray], classes: list[str], *,
                 val_fraction: float, seed: int, size: int, resize: int, scale_min: float, scale_max: float,
                 flip: bool, jitter: float, lighting: float, workers: int, prefetch: int, val_per_class: int,
                 corrupt: str, info: dict) -> DataBundle:
    """The streamed bundle of an image store (folders or shards): train / held-out val / test."""
    size, resize = int(size), int(resize)
    if size < 8 or resize < size:
        raise PrunelabError(f"{name}: size must be >= 8 and resize >= size, got size {size}, resize {resize}")
    if not 0 < scale_min <= scale_max <= 1:
        raise PrunelabError(f"{name}: crop scale range must satisfy 0 < scale_min <= scale_max <= 1, got "
                            f"({scale_min}, {scale_max})")
    if jitter < 0 or lighting < 0:
        raise PrunelabError(f"{name}: jitter and lighting must be >= 0, got {jitter}, {lighting}")
    check_choice("corrupt", corrupt, CORRUPT_CHOICES)
    val_fraction = check_fraction("val_fraction", val_fraction)
    if val_fraction and val_per_class:
        raise PrunelabError(f"{name}: give val_per_class (last N images per class) or val_fraction, not both")
    if val_per_class < 0:
        raise PrunelabError(f"{name}: val_per_class must be >= 0, got {val_per_class}")
    store, labels = train
    if val_per_class:
        counts = np.bincount(labels, minlength=len(classes))
        if counts.min() <= val_per_class:
            c = int(counts.argmin())
            raise PrunelabError(f"{name}: class {classes[c]!r} has {counts[c]} training images; val_per_class "
                                f"{val_per_class} would leave none for training")
        held_mask = np.zeros(labels.shape[0], dtype=bool)
        for c in range(len(classes)):
            held_mask[np.flatnonzero(labels == c)[-val_per_class:]] = True
        keep, held = np.flatnonzero(~held_mask), np.flatnonzero(held_mask)
    else:
        keep, held = stratified_split(labels, val_fraction, seed)
    eval_crop = EvalCrop(size, resize)
    full = ImageSamples(store, labels, TrainCrop(size, (scale_min, scale_max), flip=flip), eval_crop, corrupt)
    transform = ImageNetBatch(jitter, lighting)
    common = {"workers": int(workers), "prefetch": int(prefetch), "transform": transform, "seeded": True}
    train_split = StreamSplit(full.select(keep.tolist()), targets=torch.from_numpy(labels[keep]), **common)
    val_split = StreamSplit(full.select(held.tolist(), evaluation=True), targets=torch.from_numpy(labels[held]),
                            **common)
    test_store, test_labels = test
    test_split = StreamSplit(ImageSamples(test_store, test_labels, eval_crop, eval_crop, corrupt),
                             targets=torch.from_numpy(test_labels), **common)
    recipe = {"size": size, "resize": resize, "scale": [scale_min, scale_max], "flip": flip, "jitter": jitter,
              "lighting": lighting, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    return DataBundle(name=name, train=train_split, val=val_split, test=test_split, num_classes=len(classes),
                      input_shape=(3, size, size), task="image",
                      info={**info, "class_names": list(classes), "preprocessing": recipe,
                            "held_out": int(held.shape[0])})


# ------------------------------------------------------------------------------------------ folders


def _layout_error(root: Path, problem: str) -> PrunelabError:
    return PrunelabError(f"image folder dataset under {root}: {problem}; expected {root}/train/<class>/<images> "
                         f"and {root}/val/<class>/<images>")


def class_folders(split_dir: Path) -> list[str]:
    with os.scandir(split_dir) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def scan_folder(root: Path, split: str, classes: list[str]) -> tuple[FolderFiles, np.ndarray]:
    """Relative paths and labels of ``root/split``, class by class (one class's names in Python at once)."""
    split_dir = root / split
    found = class_folders(split_dir)
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise _layout_error(root, f"class folder {unknown[0]!r} in {split}/ has no counterpart in train/")
    parts, labels = [], []
    for c, name in enumerate(classes):
        folder = split_dir / name
        if not folder.is_dir():
            continue
        with os.scandir(folder) as it:
            files = sorted(e.name for e in it if e.is_file() and not e.name.startswith(".")
                           and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS)
        if not files and split == "train":
            raise _layout_error(root, f"class folder train/{name} holds no images")
        rel = [os.path.join(split, name, f).encode("utf-8", "surrogateescape") for f in files]
        parts.append(np.array(rel, dtype=bytes) if rel else np.zeros(0, dtype="S1"))
        labels.append(np.full(len(rel), c, dtype=np.int64))
    width = max((p.dtype.itemsize for p in parts), default=1)
    paths = np.concatenate([p.astype(f"S{width}") for p in parts]) if parts else np.zeros(0, dtype="S1")
    if paths.shape[0] == 0:
        raise _layout_error(root, f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {split_dir}")
    return FolderFiles(str(root), paths), np.concatenate(labels)


def load_imagefolder_stream(root, *, val_fraction: float = 0.0, seed: int = 0, size: int = 224, resize: int = 256,
                            scale_min: float = 0.08, scale_max: float = 1.0, flip: bool = True, jitter: float = 0.0,
                            lighting: float = 0.0, workers: int = 2, prefetch: int = 2, val_per_class: int = 0,
                            corrupt: str = "stop") -> DataBundle:
    """ImageNet-style folders (train/ and val/) streamed with the ImageNet crops; see the module docstring.

    ``size`` / ``resize``: crop side and the evaluation resize (224 / 256); ``scale_min`` /
    ``scale_max``: the random resized crop's area range; ``jitter``: ColorJitter strength for
    brightness, contrast and saturation; ``lighting``: PCA lighting standard deviation; ``workers`` /
    ``prefetch``: DataLoader worker processes and batches loaded ahead per worker.
    """
    require("PIL.Image", "imagefolder-stream", "images", "Pillow")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise _layout_error(root, "folder not found")
    for d in ("train", "val"):
        if not (root / d).is_dir():
            raise _layout_error(root, f"missing {d}/ folder")
    classes = class_folders(root / "train")
    if len(classes) < 2:
        raise _layout_error(root, f"train/ must hold at least two class folders, found {len(classes)}")
    train = scan_folder(root, "train", classes)
    test = scan_folder(root, "val", classes)
    return image_bundle("imagefolder-stream", train, test, classes, val_fraction=val_fraction, seed=seed, size=size,
                        resize=resize, scale_min=scale_min, scale_max=scale_max, flip=flip, jitter=jitter,
                        lighting=lighting, workers=workers, prefetch=prefetch, val_per_class=val_per_class,
                        corrupt=corrupt, info={"source": str(root)})


register_dataset("imagefolder-stream", load_imagefolder_stream, needs_root=True,
                 doc="ImageNet-style class folders streamed by DataLoader workers with the ImageNet crops")
