"""Files: atomic writes and safe loads.

Results and checkpoints are written to a temporary file in the destination folder and renamed, so
a killed process never leaves a half-written file. Checkpoints hold only tensors and plain Python
containers (no pickled modules) and are loaded with ``weights_only=True``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from prunelab.errors import PrunelabError

CHECKPOINT_FORMAT = "prunelab-checkpoint"
CHECKPOINT_VERSION = 1


def _umask() -> int:
    """The process umask: from /proc on Linux (no side effect), else by setting and restoring it."""
    with contextlib.suppress(OSError, ValueError, StopIteration), open("/proc/self/status") as fh:
        return int(next(line for line in fh if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic(path: str | os.PathLike, write: Callable[[Any], None], binary: bool) -> Path:
    path = Path(path)
    if path.is_dir():
        raise PrunelabError(f"cannot write {path}: it is a folder; give a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _write_error(path, exc) from exc
    try:
        # mkstemp makes the file private (0600); give it the mode a plain open() would (0666 less the
        # umask), so a checkpoint or report written here is readable by whoever may read the folder.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb" if binary else "w") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise _write_error(path, exc) from exc
        raise
    return path


def _write_error(path: Path, exc: OSError) -> PrunelabError:
    """A one-line error for an output path the file system refuses (missing or read-only folder, a file
    where a folder should be, a full disk)."""
    blocker = _nearest_existing(path.parent)
    if blocker is not None and not blocker.is_dir():
        return PrunelabError(f"cannot write {path}: {blocker} is a file, not a folder")
    return PrunelabError(f"cannot write {path}: {exc.strerror or exc}")


def _nearest_existing(path: Path) -> Path | None:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return None


def check_writable(path: str | os.PathLike, *, folder: bool = False) -> Path:
    """Check, before any work, that ``path`` (a file, or a folder with ``folder``) can be written.

    The nearest existing folder on the way must accept a new file: a probe file is created there and
    removed at once (an unnamed ``O_TMPFILE`` where the file system has them), so nothing is left
    behind. Raises :class:`PrunelabError` naming the path and the reason.
    """
    if not folder and str(path).endswith(("/", os.sep)):
        raise PrunelabError(f"cannot write {path}: it names a folder; give a file path")
    path = Path(path)
    if path.exists():
        if folder and not path.is_dir():
            raise PrunelabError(f"cannot write into {path}: it is a file, not a folder")
        if not folder and path.is_dir():
            raise PrunelabError(f"cannot write {path}: it is a folder; give a file path")
    start = path if folder else path.parent
    existing = _nearest_existing(start.absolute())
    if existing is None or not existing.is_dir():
        raise PrunelabError(f"cannot write {path}: {existing} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise PrunelabError(f"cannot write {path}: cannot create files in {existing} ({exc.strerror or exc})") \
            from exc
    return path


#: file systems that hold no user files: views of the kernel and of devices (writes there fail, or
#: reach a device); a folder for results or a cache on one of them is refused
SPECIAL_FILESYSTEMS = frozenset({
    "proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "debugfs", "tracefs", "securityfs", "configfs",
    "pstore", "bpf", "mqueue", "hugetlbfs", "fusectl", "binfmt_misc", "efivarfs", "selinuxfs",
    "rpc_pipefs", "nsfs"})


def special_filesystem(path: str | os.PathLike) -> str | None:
    """The type of the special file system (:data:`SPECIAL_FILESYSTEMS`) that ``path``, or the nearest
    folder of it that exists, lives on, read from ``/proc/self/mounts``; None for ordinary file systems
    and where the mount table cannot be read."""
    existing = _nearest_existing(Path(path).expanduser().absolute())
    if existing is None:
        return None
    real = os.path.realpath(existing)
    best, fstype = "", None
    with contextlib.suppress(OSError), open("/proc/self/mounts") as fh:
        for line in fh:
            fields = line.split()
            if len(fields) < 3:
                continue
            mount = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1])
            inside = real == mount or real.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) >= len(best):
                best, fstype = mount, fields[2]
    return fstype if fstype in SPECIAL_FILESYSTEMS else None


def check_folder(path: str | os.PathLike, what: str) -> Path:
    """A folder prunelab will write into (``what``: e.g. "cache"): not on a special file system, a
    folder if it exists, and creatable or writable (:func:`check_writable`). One line otherwise."""
    fs = special_filesystem(path)
    if fs is not None:
        raise PrunelabError(f"{what} {path} is on the {fs} file system (kernel or device files); give an "
                            f"ordinary folder")
    try:
        return check_writable(path, folder=True)
    except PrunelabError as exc:
        raise PrunelabError(f"{what}: {exc}") from None


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return _atomic(path, lambda fh: fh.write(data), binary=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return _atomic(path, lambda fh: fh.write(text), binary=False)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return atomic_write_text(path, to_json(obj) + "\n")


def to_json(obj: Any, indent: int | None = 2) -> str:
    """Strict JSON (RFC 8259): tensors and NumPy scalars as numbers, paths as strings, and NaN / inf
    (a diverged loss) as null, which every JSON parser accepts."""
    return json.dumps(_finite(obj), indent=indent, default=_json_default, allow_nan=False)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if isinstance(obj, torch.Tensor | Path) or hasattr(obj, "item"):
        return _finite(_json_default(obj))
    return obj


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` atomically. ``obj`` must be tensors and plain containers only."""
    return _atomic(path, lambda fh: torch.save(obj, fh), binary=True)


def torch_load(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """Load a file written by :func:`atomic_torch_save` with ``weights_only=True``.

    A missing, truncated or foreign file raises :class:`PrunelabError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise PrunelabError(f"{what} not found: {path}")
    try:
        with warnings.catch_warnings():  # torch's note on a pickle protocol it was not written with
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError) as exc:
        raise PrunelabError(f"{what} {path} is corrupt or not a prunelab file ({type(exc).__name__})") from exc
    except Exception as exc:  # pickle.UnpicklingError for files that are not weights-only
        raise PrunelabError(f"{what} {path} cannot be loaded safely: it is corrupt or "
                            f"not a weights-only file ({_unpickling_detail(exc)})") from exc


#: sentences of torch's weights-only refusal that give advice (retry unsafely, allow-list globals, read
#: the docs, file an issue) rather than say what was refused; the refusal keeps none of them
_ADVICE = re.compile(r"weights_only|safe_globals|trust|documentation|file an issue|Weights only load failed|"
                     r"two options|PyTorch 2\.6", re.IGNORECASE)


def _unpickling_detail(exc: BaseException) -> str:
    """What torch's weights-only unpickler refused (e.g. ``unsupported GLOBAL posix.system whose module
    posix is blocked``), without its advice, which includes retrying with ``weights_only=False``: that
    would run whatever the file holds, so it is never repeated here."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).replace("WeightsUnpickler error:", "\n")
    for line in text.splitlines():
        sentence = re.split(r"\.\s+(?=[A-Z(])", line.strip())[0].strip().rstrip(".")
        if sentence and not _ADVICE.search(sentence):
            sentence = re.sub(r"^Trying to load ", "", sentence)
            sentence = re.sub(r"^Unsupported global: (GLOBAL \S+) was not an allowed global by default",
                              r"unsupported \1, not an allowed global", sentence)
            return (sentence[:1].lower() if sentence[1:2].islower() else sentence[:1]) + sentence[1:200]
    return type(exc).__name__


def save_checkpoint(path: str | os.PathLike, *, arch: dict, state_dict: dict, plan: dict | None = None,
                    meta: dict | None = None) -> Path:
    """Save a prunelab checkpoint: architecture spec, optional structured plan, state_dict, metadata.

    ``arch`` is ``{"name": <registry name or family>, "kwargs": {...}}`` (see
    :class:`prunelab.models.ArchSpec`); together with ``plan`` it rebuilds the module without pickle.
    Unstructured masks travel inside ``state_dict`` as ``<param>_mask`` buffers.
    """
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "arch": arch,
        "plan": plan,
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "meta": meta or {},
    }
    return atomic_torch_save(payload, path)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load and validate a checkpoint written by :func:`save_checkpoint`."""
    payload = torch_load(path)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise PrunelabError(f"checkpoint {path} is not a prunelab checkpoint (no 'format' field)")
    for key in ("arch", "state_dict"):
        if key not in payload:
            raise PrunelabError(f"checkpoint {path} is incomplete: missing {key!r}")
    return payload
