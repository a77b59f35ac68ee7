"""Files: atomic writes and safe loads.

Every file prunelab writes (checkpoints, JSON, CSV, reports, plots, ONNX and sparse exports) goes
through :func:`atomic_write`: the content is written to a temporary file in the destination folder,
flushed to disk and renamed over the destination, so a killed process or a full disk never leaves a
half-written file and never loses the old one. The destination must be a regular file or not exist
yet; a symlink to a regular file is written through (the link stays, the file it names gets the new
content). Anything else there (a device such as ``/dev/null``, a named pipe, a socket, a folder) is
refused before anything is touched. Temporary files a killed writer left behind are removed by the
next write to the same destination. Checkpoints hold only tensors and plain Python containers (no
pickled modules) and are loaded with ``weights_only=True``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import re
import socket
import stat
import tempfile
import threading
import time
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from prunelab.errors import PrunelabError

CHECKPOINT_FORMAT = "prunelab-checkpoint"
CHECKPOINT_VERSION = 1

#: Seconds after which a temporary file whose writer cannot be checked (it ran on another host, or the
#: file predates the PID-bearing names) counts as abandoned. A writer streams into its temporary file,
#: so a live write leaves it untouched for seconds at most, never for an hour.
STALE_TEMP_AGE_S = 3600.0

#: Marks our temporary files: ``.NAME.plab-PID-HOST-XXXXXXXX.tmp`` (HOST: a hash of the host name).
_TEMP_TAG = "plab"

# Temporary files this process is writing now: the only files of our own PID that are not orphans.
_ACTIVE: set[str] = set()
_ACTIVE_LOCK = threading.Lock()

_ERRNO_FULL = (errno.ENOSPC, errno.EDQUOT)


def _umask() -> int:
    """The process umask: from /proc on Linux (no side effect), else by setting and restoring it."""
    with contextlib.suppress(OSError, ValueError, StopIteration), open("/proc/self/status") as fh:
        return int(next(line for line in fh if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, ValueError):
        return False
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as fh:  # a zombie is dead
        return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    return True


# ---------------------------------------------------------------------------------------------
# the destination


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISREG, "a file"), (stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a special file"


def output_target(path: str | os.PathLike) -> Path:
    """The regular file that writing ``path`` replaces: ``path`` itself (existing or not), or the file
    a symlink at ``path`` points to, which is written through.

    Anything else at ``path`` (a folder, a device such as ``/dev/null`` or ``/dev/full``, a named pipe,
    a socket, a symlink to one of those, a dangling or looping symlink) raises :class:`PrunelabError`
    naming it: replacing it would destroy something that is not an output of ours.
    """
    path = Path(path)
    try:
        st = os.lstat(path)
    except OSError:  # missing, or a folder on the way is missing or a file: the write reports it
        return path
    if stat.S_ISREG(st.st_mode):
        return path
    if stat.S_ISDIR(st.st_mode):
        raise PrunelabError(f"cannot write {path}: it is a folder; give a file path")
    if not stat.S_ISLNK(st.st_mode):
        raise PrunelabError(f"cannot write {path}: it is {_kind(st.st_mode)}, not a regular file; "
                            "give a regular file path")
    real = Path(os.path.realpath(path))
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise PrunelabError(f"cannot write {path}: it is a symlink to {real}, which does not exist; "
                            "give a regular file path") from None
    except OSError as exc:
        raise PrunelabError(f"cannot write {path}: it is a symlink that cannot be followed "
                            f"({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        raise PrunelabError(f"cannot write {path}: it is a symlink to {real}, {_kind(st.st_mode)}, not a "
                            "regular file; give a regular file path")
    return real


# ---------------------------------------------------------------------------------------------
# temporary files


def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def _temp_pattern(dest: Path) -> re.Pattern[str]:
    """Our temporary names for ``dest``; group 1 is the writer's PID, group 2 its host tag."""
    return re.compile(re.escape(f".{dest.name}.{_TEMP_TAG}-") + r"(\d+)-([0-9a-f]{8})-[a-z0-9_]{8}\.tmp")


def _legacy_pattern(dest: Path) -> re.Pattern[str]:
    """The names of earlier prunelab versions (``mkstemp(prefix=".NAME.", suffix=".tmp")``): no PID."""
    return re.compile(re.escape(f".{dest.name}.") + r"[a-z0-9_]{8}\.tmp")


def _abandoned(name: str, dest: Path, age: float) -> bool:
    match = _temp_pattern(dest).fullmatch(name)
    if match is None:
        return _legacy_pattern(dest).fullmatch(name) is not None and age > STALE_TEMP_AGE_S
    pid, host = int(match[1]), match[2]
    if host == _host_tag():
        if pid == os.getpid():
            with _ACTIVE_LOCK:
                return os.path.abspath(dest.parent / name) not in _ACTIVE
        if not pid_alive(pid):
            return True
    return age > STALE_TEMP_AGE_S  # another host, or a PID reused by another process


def clean_stale_temps(dest: str | os.PathLike) -> list[Path]:
    """Remove the temporary files an interrupted write to ``dest`` left in its folder.

    Only files named as ours for this very destination, regular, owned by this user and abandoned
    (their writer's process is gone, or they are older than :data:`STALE_TEMP_AGE_S`) are removed;
    nothing else is touched. Returns the removed paths.
    """
    dest = Path(dest)
    removed = []
    prefix = f".{dest.name}."
    try:
        names = [n for n in os.listdir(dest.parent) if n.startswith(prefix) and n.endswith(".tmp")]
    except OSError:
        return removed
    now = time.time()
    for name in names:
        candidate = dest.parent / name
        try:
            st = os.lstat(candidate)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            continue
        if _abandoned(name, dest, now - st.st_mtime):
            with contextlib.suppress(OSError):
                os.unlink(candidate)
                removed.append(candidate)
    return removed


# ---------------------------------------------------------------------------------------------
# writing


def atomic_write(path: str | os.PathLike, write: Callable[[Any], object], *, binary: bool) -> Path:
    """Write ``path`` atomically: ``write(fh)`` fills a temporary file in the destination's folder,
    which is flushed, synced and renamed over the destination. Returns ``path``.

    The one way prunelab writes an output. The rules of :func:`output_target` apply (special files
    refused, symlinks to regular files written through); abandoned temporary files of earlier writes to
    the same destination are removed first. A file-system failure, a full disk included (also when
    ``torch.save`` reports it as its own ``RuntimeError``), raises a one-line :class:`PrunelabError`
    and leaves the old file as it was.
    """
    path = Path(path)
    target = output_target(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temps(target)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{_TEMP_TAG}-{os.getpid()}-{_host_tag()}-",
                                   suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise _write_error(path, exc) from exc
    active = os.path.abspath(tmp)
    with _ACTIVE_LOCK:
        _ACTIVE.add(active)
    try:
        # mkstemp makes the file private (0600); give it the mode a plain open() would (0666 less the
        # umask), so a checkpoint or report written here is readable by whoever may read the folder.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb" if binary else "w") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        error = _failed_write(path, target, exc)
        if error is not None:
            raise error from exc
        raise
    finally:
        with _ACTIVE_LOCK:
            _ACTIVE.discard(active)
    return path


def _failed_write(path: Path, target: Path, exc: BaseException) -> PrunelabError | None:
    """The one-line error for a write the file system refused, or None for any other failure."""
    if isinstance(exc, OSError):
        return _write_error(path, exc)
    if isinstance(exc, RuntimeError) and ("inline_container" in str(exc) or "PytorchStreamWriter" in str(exc)):
        # torch.save reports a failed write as its own RuntimeError; the OSError, if any, is its context
        cause = exc.__context__
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__context__
        if cause is not None:
            return _write_error(path, cause)
        if no_space_left(target.parent):
            return _write_error(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
        return PrunelabError(f"cannot write {path}: the write failed ({str(exc).strip().splitlines()[0]})")
    return None


def no_space_left(folder: str | os.PathLike) -> bool:
    """Whether the file system holding ``folder`` is full (under 1 MiB free to this user): the cause
    to name when a library reports a failed write without its ``OSError`` (torch, SQLite)."""
    try:
        vfs = os.statvfs(folder)
    except OSError:
        return False
    return vfs.f_bavail * vfs.f_frsize < 1 << 20


def _write_error(path: Path, exc: OSError) -> PrunelabError:
    """A one-line error for an output path the file system refuses (missing or read-only folder, a file
    where a folder should be, a full disk)."""
    blocker = _nearest_existing(path.parent)
    if blocker is not None and not blocker.is_dir():
        return PrunelabError(f"cannot write {path}: {blocker} is a file, not a folder")
    if exc.errno in _ERRNO_FULL:
        kept = "the existing file is kept" if path.exists() else "nothing was written"
        return PrunelabError(f"cannot write {path}: {(exc.strerror or os.strerror(exc.errno)).lower()} "
                             f"(the file system is full or over quota; {kept})")
    return PrunelabError(f"cannot write {path}: {exc.strerror or exc}")


def _nearest_existing(path: Path) -> Path | None:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return None


def check_writable(path: str | os.PathLike, *, folder: bool = False) -> Path:
    """Check, before any work, that ``path`` (a file, or a folder with ``folder``) can be written.

    A file path must be writable by :func:`atomic_write`: missing, a regular file, or a symlink to
    one (see :func:`output_target`). The nearest existing folder on the way must accept a new file: a
    probe file is created there and removed at once (an unnamed ``O_TMPFILE`` where the file system
    has them), so nothing is left behind. Raises :class:`PrunelabError` naming the path and the reason.
    """
    if not folder and str(path).endswith(("/", os.sep)):
        raise PrunelabError(f"cannot write {path}: it names a folder; give a file path")
    path = Path(path)
    start = path
    if folder:
        if path.exists() and not path.is_dir():
            raise PrunelabError(f"cannot write into {path}: it is {_kind(os.stat(path).st_mode)}, not a folder")
    else:
        start = output_target(path).parent
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
    return atomic_write(path, lambda fh: fh.write(data), binary=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda fh: fh.write(text), binary=False)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return atomic_write_text(path, to_json(obj) + "\n")


def to_json(obj: Any, indent: int | None = 2) -> str:
    """Strict JSON (RFC 8259) of :func:`jsonable` ``(obj)``."""
    return json.dumps(jsonable(obj), indent=indent, allow_nan=False)


def jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON values, the one sanitiser of the package: containers recursed (keys as
    strings), tensors and NumPy arrays and scalars as Python numbers and lists, paths as strings, and
    NaN / inf (a diverged loss) as null, which every JSON parser accepts. Anything else is a TypeError."""
    if isinstance(obj, dict):
        return {k if isinstance(k, str) else str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if obj is None or isinstance(obj, str | bool | int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "tolist"):  # torch.Tensor, NumPy arrays and scalars
        return jsonable(obj.tolist())
    if hasattr(obj, "__fspath__"):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` atomically. ``obj`` must be tensors and plain containers only."""
    return atomic_write(path, lambda fh: torch.save(obj, fh), binary=True)


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
