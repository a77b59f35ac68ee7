"""CIFAR-10 / CIFAR-100 from the official "python version" files, read safely.

The batches are Python pickles of ``{"data": uint8 array (N, 3072), "labels" | "fine_labels": [...]}``.
They are read with an unpickler that resolves only the globals this format needs (NumPy array
reconstruction and a byte-string codec) and refuses everything else, so a tampered file cannot run
code. Archives are read member by member with :mod:`tarfile` without extracting anything to disk.

Splits: the official 50k train / 10k test. ``val_size=5000`` holds out the *last* 5,000 training
images (Wang et al. 2020, PFS ``learn_gates.py``: 45k/5k for gate selection); ``val_fraction`` instead
holds out a stratified random share. Normalisation constants, as each paper's code sets them:

* ``"pfs"`` (default): mean (0.4914, 0.4822, 0.4465), std (0.2023, 0.1994, 0.2010), used by PFS and
  Global MP for CIFAR-10; for CIFAR-100 the usual (0.5071, 0.4865, 0.4409) / (0.2673, 0.2564, 0.2762).
* ``"pytorch-prunes"``: mean (125.3, 123.0, 113.9)/255, std (63.0, 62.1, 66.7)/255 (Crowley et al. 2018,
  ``train.py``), for both datasets.
* ``"computed"``: per-channel statistics of the training split.

Training augmentation: pad 4 and random 32x32 crop, horizontal flip (``pad_mode`` ``reflect`` as
pytorch-prunes and the Global MP WRN code, or ``zeros`` as PFS / torchvision).
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np

from prunelab.data.base import Augment, DataBundle
from prunelab.data.registry import register_dataset
from prunelab.data.splits import channel_stats, check_fraction, normalize, stratified_split, to_split
from prunelab.errors import PrunelabError, check_choice

_MAX_MEMBER_BYTES = 512 * 2**20


class _Layout:
    def __init__(self, title: str, archive: str, folder: str, train: list[str], test: str, meta: str,
                 label_key: str, num_classes: int, names_key: str) -> None:
        self.title, self.archive, self.folder = title, archive, folder
        self.train, self.test, self.meta = train, test, meta
        self.label_key, self.num_classes, self.names_key = label_key, num_classes, names_key

    def missing_message(self, root: Path) -> str:
        return f"{self.title} not found under {root}: put {self.archive} or {self.folder}/ there"


_LAYOUTS = {
    "cifar10": _Layout("CIFAR-10", "cifar-10-python.tar.gz", "cifar-10-batches-py",
                       [f"data_batch_{i}" for i in range(1, 6)], "test_batch", "batches.meta",
                       "labels", 10, "label_names"),
    "cifar100": _Layout("CIFAR-100", "cifar-100-python.tar.gz", "cifar-100-python", ["train"], "test", "meta",
                        "fine_labels", 100, "fine_label_names"),
}

_NORMALIZATION = {
    ("cifar10", "pfs"): ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    ("cifar100", "pfs"): ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    ("cifar10", "pytorch-prunes"): (tuple(v / 255 for v in (125.3, 123.0, 113.9)),
                                    tuple(v / 255 for v in (63.0, 62.1, 66.7))),
    ("cifar100", "pytorch-prunes"): (tuple(v / 255 for v in (125.3, 123.0, 113.9)),
                                     tuple(v / 255 for v in (63.0, 62.1, 66.7))),
}


def _safe_globals() -> dict[tuple[str, str], object]:
    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # NumPy 1.x
        from numpy.core.multiarray import _reconstruct, scalar
    import _codecs

    allowed: dict[tuple[str, str], object] = {}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = _reconstruct
        allowed[(module, "scalar")] = scalar
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    allowed[("_codecs", "encode")] = _codecs.encode
    for module in ("builtins", "__builtin__"):
        for obj in (set, frozenset, bytearray, bytes, complex, slice, range):
            allowed[(module, obj.__name__)] = obj
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for data files: resolves only NumPy array reconstruction and harmless builtins."""

    _allowed = _safe_globals()

    def find_class(self, module: str, name: str):  # noqa: D401
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a data file") from None


def safe_unpickle(data: bytes) -> object:
    """Unpickle ``data`` (Python 2 or 3 pickles; Python 2 strings decoded as latin-1, as NumPy advises)."""
    return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()


class _Source:
    """Reads named batch files from an extracted folder or straight out of the tar.gz archive."""

    def __init__(self, layout: _Layout, path: Path, is_archive: bool) -> None:
        self.layout, self.path, self.is_archive = layout, path, is_archive
        self._tar: tarfile.TarFile | None = None

    def describe(self) -> str:
        kind = "archive" if self.is_archive else "folder"
        return f"{self.layout.title} {kind} {self.path}"

    def read(self, name: str) -> bytes:
        if not self.is_archive:
            file = self.path / name
            if not file.is_file():
                raise PrunelabError(f"{self.describe()} is incomplete: {name} is missing "
                                    f"(expected the files of {self.layout.archive})")
            return file.read_bytes()
        member_name = f"{self.layout.folder}/{name}"
        try:
            if self._tar is None:
                self._tar = tarfile.open(self.path, "r:*")  # noqa: SIM115 (closed by close())
            try:
                member = self._tar.getmember(member_name)
            except KeyError:
                raise PrunelabError(f"{self.describe()} is incomplete: {member_name} is missing") from None
            if not member.isfile() or member.size > _MAX_MEMBER_BYTES:
                raise PrunelabError(f"{self.describe()} is corrupt: {member_name} is not a regular batch file")
            fh = self._tar.extractfile(member)
            if fh is None:
                raise PrunelabError(f"{self.describe()} is corrupt: cannot read {member_name}")
            return fh.read()
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            raise PrunelabError(f"{self.describe()} is corrupt or truncated ({type(exc).__name__}: {exc})") from exc

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None


def _locate(layout: _Layout, root: str | os.PathLike) -> _Source:
    root = Path(root).expanduser()
    if root.is_file():
        return _Source(layout, root, is_archive=True)
    if root.is_dir():
        if (root / layout.folder).is_dir():
            return _Source(layout, root / layout.folder, is_archive=False)
        if (root / layout.test).is_file() and (root / layout.train[0]).is_file():
            return _Source(layout, root, is_archive=False)
        if (root / layout.archive).is_file():
            return _Source(layout, root / layout.archive, is_archive=True)
    raise PrunelabError(layout.missing_message(root))


def _read_batch(source: _Source, name: str, layout: _Layout) -> tuple[np.ndarray, np.ndarray]:
    where = f"{source.describe()}: batch {name}"
    try:
        obj = safe_unpickle(source.read(name))
    except PrunelabError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            UnicodeError, MemoryError) as exc:
        raise PrunelabError(f"{where} is corrupt or not a CIFAR batch ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise PrunelabError(f"{where} is not a CIFAR batch (expected a dict, got {type(obj).__name__})")
    batch = {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}
    data, labels = batch.get("data"), batch.get(layout.label_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise PrunelabError(f"{where} is corrupt: 'data' must be a uint8 array of shape (N, 3072), got {shape}")
    try:
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise PrunelabError(f"{where} is corrupt: {layout.label_key!r} is not a list of integers") from None
    if labels.shape[0] != data.shape[0]:
        raise PrunelabError(f"{where} is corrupt: {data.shape[0]} images but {labels.shape[0]} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= layout.num_classes):
        raise PrunelabError(f"{where} is corrupt: labels outside 0..{layout.num_classes - 1}")
    return data.reshape(-1, 3, 32, 32), labels


def _class_names(source: _Source, layout: _Layout) -> list[str]:
    try:
        meta = safe_unpickle(source.read(layout.meta))
        names = meta.get(layout.names_key) if isinstance(meta, dict) else None
        names = [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names or []]
    except (PrunelabError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError):
        names = []
    return names if len(names) == layout.num_classes else [str(i) for i in range(layout.num_classes)]


def _load_cifar(name: str, root, *, val_fraction: float, val_size: int, seed: int, normalization: str,
                pad: int, flip: bool, pad_mode: str) -> DataBundle:
    layout = _LAYOUTS[name]
    check_choice("normalization", normalization, ["pfs", "pytorch-prunes", "computed"])
    check_choice("pad_mode", pad_mode, ["reflect", "zeros"])
    val_fraction = check_fraction("val_fraction", val_fraction)
    if val_fraction and val_size:
        raise PrunelabError("give either val_size (last N training images, PFS) or val_fraction, not both")
    source = _locate(layout, root)
    try:
        parts = [_read_batch(source, b, layout) for b in layout.train]
        x_test_u8, y_test = _read_batch(source, layout.test, layout)
        class_names = _class_names(source, layout)
    finally:
        source.close()
    x_u8 = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    n = y.shape[0]
    if val_size:
        if not 0 < int(val_size) < n:
            raise PrunelabError(f"val_size must be between 1 and {n - 1} (training images), got {val_size}")
        keep, held = np.arange(n - int(val_size)), np.arange(n - int(val_size), n)
    else:
        keep, held = stratified_split(y, val_fraction, seed)
    x = x_u8.astype(np.float32) / 255.0
    x_test = x_test_u8.astype(np.float32) / 255.0
    if normalization == "computed":
        mean, std = (tuple(v) for v in channel_stats(x[keep], channel_axis=1))
    else:
        mean, std = _NORMALIZATION[(name, normalization)]
    x = normalize(x, mean, std, channel_axis=1)
    x_test = normalize(x_test, mean, std, channel_axis=1)
    fill = tuple(float(-m / s) for m, s in zip(mean, std))
    return DataBundle(
        name=name,
        train=to_split(x[keep], y[keep]),
        val=to_split(x[held], y[held]),
        test=to_split(x_test, y_test),
        num_classes=layout.num_classes,
        input_shape=(3, 32, 32),
        task="image",
        augment=Augment(pad=int(pad), flip=bool(flip), pad_mode=pad_mode, fill=fill),
        info={"source": str(source.path), "normalization": normalization, "mean": list(mean), "std": list(std),
              "class_names": class_names, "val": f"last {val_size}" if val_size else f"fraction {val_fraction}"},
    )


def load_cifar10(root, *, val_fraction: float = 0.0, val_size: int = 0, seed: int = 0, normalization: str = "pfs",
                 pad: int = 4, flip: bool = True, pad_mode: str = "reflect") -> DataBundle:
    """CIFAR-10 from cifar-10-python.tar.gz or cifar-10-batches-py/ under ``root``."""
    return _load_cifar("cifar10", root, val_fraction=val_fraction, val_size=val_size, seed=seed,
                       normalization=normalization, pad=pad, flip=flip, pad_mode=pad_mode)


def load_cifar100(root, *, val_fraction: float = 0.0, val_size: int = 0, seed: int = 0, normalization: str = "pfs",
                  pad: int = 4, flip: bool = True, pad_mode: str = "reflect") -> DataBundle:
    """CIFAR-100 (fine labels) from cifar-100-python.tar.gz or cifar-100-python/ under ``root``."""
    return _load_cifar("cifar100", root, val_fraction=val_fraction, val_size=val_size, seed=seed,
                       normalization=normalization, pad=pad, flip=flip, pad_mode=pad_mode)


register_dataset("cifar10", load_cifar10, needs_root=True,
                 doc="CIFAR-10 python version (archive or extracted folder), 3x32x32, 10 classes")
register_dataset("cifar100", load_cifar100, needs_root=True,
                 doc="CIFAR-100 python version (archive or extracted folder), 3x32x32, 100 fine classes")
