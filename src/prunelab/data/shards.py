"""Pre-sharded images for cluster scale: WebDataset-style tar shards, read by random access.

Layout (the WebDataset convention: a sample is the members sharing a key, the name up to the first
dot of the basename)::

    root/classes.txt              optional: class names, one per line (line i names class i)
    root/train-000000.tar, ...    plain tar files of samples KEY.jpg (or .jpeg, .png, .webp, ...) + KEY.cls
    root/val-000000.tar, ...      (KEY.cls holds the class index as decimal text)

:func:`write_shards` turns an ImageNet-style folder into this layout.

Why this format. A cluster file system (Lustre, GPFS, NFS) or an object store serves a thousand
100 MB files far better than 1.28 million small ones: listing and opening files, not reading them,
is what limits an ImageNet epoch there. Tar is the format WebDataset's tools, ``tar`` itself and
public ImageNet copies already produce, and Python's :mod:`tarfile` reads it with no new
dependency. Shards are *uncompressed*, so one pass over the headers (seeking past the data) gives
every image's byte offset: reads stay map-style, so the epoch order is still the seeded permutation
sharded by rank, a run resumes inside an epoch, and shards give the same numbers as the folder they
were written from. A sequential WebDataset pipeline (shard shuffle plus a shuffle buffer) would give
those up for purely sequential reads; with page-cached or SSD-backed shards the random reads cost
little. Alternatives weighed: TFRecord (TensorFlow's framing and protobuf records), LMDB (a C
extension and one huge memory-mapped file, awkward on network file systems), FFCV's ``.beton`` and
Parquet (their own loaders or pyarrow, large dependencies).

Safety: nothing is ever extracted to disk; a member whose name is absolute or climbs out with
``..``, a link or device member, an image over 64 MiB or a label over 64 bytes is refused with one
line naming the shard. The index is four NumPy arrays (about 28 bytes per sample).
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path, PurePosixPath

import numpy as np

from prunelab.data.base import DataBundle
from prunelab.data.imagestream import IMAGE_EXTENSIONS, class_folders, image_bundle, scan_folder
from prunelab.data.registry import register_dataset
from prunelab.errors import PrunelabError, require

MAX_IMAGE_BYTES = 64 * 2**20
MAX_LABEL_BYTES = 64
_IMAGE_EXTS = tuple(e.lstrip(".") for e in IMAGE_EXTENSIONS)


class ShardFiles:
    """Images inside tar shards: shard number, data offset and size per sample."""

    def __init__(self, shards: list[str], shard: np.ndarray, offset: np.ndarray, size: np.ndarray) -> None:
        self.shards, self.shard, self.offset, self.size = shards, shard, offset, size

    def __len__(self) -> int:
        return int(self.shard.shape[0])

    def describe(self, i: int) -> str:
        return f"{self.shards[int(self.shard[i])]} (image at byte {int(self.offset[i])})"

    def open(self, i: int) -> io.BytesIO:
        with open(self.shards[int(self.shard[i])], "rb") as fh:
            fh.seek(int(self.offset[i]))
            return io.BytesIO(fh.read(int(self.size[i])))

    def subset(self, idx: np.ndarray) -> ShardFiles:
        return ShardFiles(self.shards, self.shard[idx], self.offset[idx], self.size[idx])


def _member_key(shard: Path, member: tarfile.TarInfo) -> tuple[str, str]:
    name = member.name
    parts = PurePosixPath(name).parts
    if name.startswith("/") or ".." in parts or "\\" in name or not parts:
        raise PrunelabError(f"shard {shard}: member {name!r} has an unsafe path (absolute or '..'); refusing it")
    base = parts[-1]
    if "." not in base:
        return name, ""
    stem, ext = base.split(".", 1)
    return "/".join((*parts[:-1], stem)), ext.lower()


def index_shard(path: Path, num_classes: int | None) -> tuple[list[int], list[int], list[int]]:
    """(offsets, sizes, labels) of the samples in one shard, in member order; see the module docstring."""
    images: dict[str, tuple[int, int]] = {}
    labels: dict[str, int] = {}
    order: dict[str, None] = {}  # sample keys in member order
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if member.isdir():
                    continue
                key, ext = _member_key(path, member)
                if not member.isfile():
                    raise PrunelabError(f"shard {path}: member {member.name!r} is a link or device; shards hold "
                                        f"regular files only")
                if ext == "cls":
                    if member.size > MAX_LABEL_BYTES:
                        raise PrunelabError(f"shard {path}: label {member.name!r} is {member.size} bytes; a label "
                                            f"is a class index as text")
                    fh = tar.extractfile(member)
                    text = fh.read().decode("ascii", "replace").strip() if fh is not None else ""
                    try:
                        label = int(text)
                    except ValueError:
                        raise PrunelabError(f"shard {path}: label {member.name!r} holds {text[:20]!r}, not a class "
                                            f"index") from None
                    if label < 0 or (num_classes is not None and label >= num_classes):
                        raise PrunelabError(f"shard {path}: label {label} of {member.name!r} is outside "
                                            f"0..{(num_classes or 1) - 1}")
                    labels[key] = label
                    order.setdefault(key)
                elif ext in _IMAGE_EXTS:
                    if member.size > MAX_IMAGE_BYTES:
                        raise PrunelabError(f"shard {path}: image {member.name!r} is {member.size:,} bytes, over the "
                                            f"{MAX_IMAGE_BYTES // 2**20} MiB limit")
                    if key not in images:
                        images[key] = (member.offset_data, member.size)
                        order.setdefault(key)
                # other members of a sample (.json, .txt) are not used
    except tarfile.ReadError as exc:
        raise PrunelabError(f"shard {path} is not a plain tar file ({exc}); shards must be uncompressed tar for "
                            f"random access") from None
    except (tarfile.TarError, EOFError) as exc:
        raise PrunelabError(f"shard {path} is corrupt or truncated ({type(exc).__name__}: {exc})") from None
    offsets, sizes, out_labels = [], [], []
    for key in order:
        if key not in images:
            raise PrunelabError(f"shard {path}: sample {key!r} has a label but no image")
        if key not in labels:
            raise PrunelabError(f"shard {path}: sample {key!r} has no .cls label")
        offsets.append(images[key][0])
        sizes.append(images[key][1])
        out_labels.append(labels[key])
    return offsets, sizes, out_labels


def index_shards(root: Path, split: str, num_classes: int | None) -> tuple[ShardFiles, np.ndarray]:
    paths = sorted(p for p in root.glob(f"{split}-*.tar") if p.is_file())
    if not paths:
        raise PrunelabError(f"tar shards under {root}: no {split}-*.tar files; expected {root}/train-000000.tar ... "
                            f"and {root}/val-000000.tar ...")
    shard, offset, size, labels = [], [], [], []
    for n, p in enumerate(paths):
        o, s, lab = index_shard(p, num_classes)
        shard.append(np.full(len(o), n, dtype=np.int32))
        offset.append(np.asarray(o, dtype=np.int64))
        size.append(np.asarray(s, dtype=np.int64))
        labels.append(np.asarray(lab, dtype=np.int64))
    files = ShardFiles([str(p) for p in paths], np.concatenate(shard), np.concatenate(offset), np.concatenate(size))
    if len(files) == 0:
        raise PrunelabError(f"tar shards under {root}: the {split} shards hold no images")
    return files, np.concatenate(labels)


def load_tar_shards(root, *, val_fraction: float = 0.0, seed: int = 0, size: int = 224, resize: int = 256,
                    scale_min: float = 0.08, scale_max: float = 1.0, flip: bool = True, jitter: float = 0.0,
                    lighting: float = 0.0, workers: int = 2, prefetch: int = 2, val_per_class: int = 0,
                    corrupt: str = "stop") -> DataBundle:
    """WebDataset-style tar shards (train-*.tar, val-*.tar), streamed with the ImageNet crops.

    The options are those of ``imagefolder-stream``. Class names come from ``classes.txt`` when
    present, else the classes are ``0 .. max label``.
    """
    require("PIL.Image", "tar-shards", "images", "Pillow")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise PrunelabError(f"tar shards under {root}: folder not found")
    names_file = root / "classes.txt"
    names = None
    if names_file.is_file():
        if names_file.stat().st_size > 16 * 2**20:
            raise PrunelabError(f"{names_file} is over 16 MiB; it should hold one class name per line")
        names = [line.strip() for line in names_file.read_text(errors="replace").splitlines() if line.strip()]
    train = index_shards(root, "train", len(names) if names else None)
    classes = names or [str(i) for i in range(int(train[1].max()) + 1)]
    if len(classes) < 2:
        raise PrunelabError(f"tar shards under {root}: the training shards hold fewer than two classes")
    test = index_shards(root, "val", len(classes))
    return image_bundle("tar-shards", train, test, classes, val_fraction=val_fraction, seed=seed, size=size,
                        resize=resize, scale_min=scale_min, scale_max=scale_max, flip=flip, jitter=jitter,
                        lighting=lighting, workers=workers, prefetch=prefetch, val_per_class=val_per_class,
                        corrupt=corrupt, info={"source": str(root), "shards": len(train[0].shards)})


def write_shards(folder: str | os.PathLike, out: str | os.PathLike, samples_per_shard: int = 1000) -> dict[str, int]:
    """Write the ImageNet-style ``folder`` (train/ and val/ class folders) as tar shards under ``out``.

    Samples keep the folder's sorted order (so both give the same numbers); each shard is written to
    a temporary file and renamed. Returns the number of shards per split.
    """
    from prunelab.io import atomic_write_text

    folder, out = Path(folder).expanduser(), Path(out).expanduser()
    if samples_per_shard < 1:
        raise PrunelabError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    classes = class_folders(folder / "train")
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in ("train", "val"):
        files, labels = scan_folder(folder, split, classes)
        n_shards = 0
        for start in range(0, len(files), samples_per_shard):
            target = out / f"{split}-{n_shards:06d}.tar"
            tmp = target.with_name(f".{target.name}.tmp")
            with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
                for i in range(start, min(start + samples_per_shard, len(files))):
                    source = files.describe(i)
                    key = f"{i:08d}"
                    ext = os.path.splitext(source)[1].lower() or ".jpg"
                    data = Path(source).read_bytes()
                    info = tarfile.TarInfo(f"{key}{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                    label = str(int(labels[i])).encode()
                    info = tarfile.TarInfo(f"{key}.cls")
                    info.size = len(label)
                    tar.addfile(info, io.BytesIO(label))
            os.replace(tmp, target)
            n_shards += 1
        counts[split] = n_shards
    atomic_write_text(out / "classes.txt", "".join(f"{c}\n" for c in classes))
    return counts


register_dataset("tar-shards", load_tar_shards, needs_root=True,
                 doc="WebDataset-style tar shards of images, streamed with the ImageNet crops")
