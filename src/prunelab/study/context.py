"""What a running task sees: its folders, a progress channel and a shared artifact cache.

Upstream products that several runs share (the dense model trained for one (model, data, seed,
training config), a pruned plan reused by Scratch-E / Scratch-B and copied-profile runs) are built
once through :meth:`RunContext.artifact`: a content-addressed folder per key, produced under an
exclusive ``fcntl`` lock into a temporary folder and renamed into place, so concurrent runners (worker
processes, Ray workers on one machine, two ``prunelab study run`` commands) compute each at most once,
and a killed producer leaves nothing that looks finished. The lock needs a local file system (or one
with working POSIX locks) when runners share the cache across machines.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunelab.io import atomic_write_json
from prunelab.study.run import canonical_json, config_hash

log = logging.getLogger("prunelab.study")

ProgressSink = Callable[[dict[str, Any]], None]


def artifact_path(cache_dir: str | os.PathLike, key: dict[str, Any]) -> Path:
    """The folder :meth:`RunContext.artifact` uses for ``key`` (it may not exist yet)."""
    return Path(cache_dir) / config_hash(key)[:24]


@contextlib.contextmanager
def _exclusive(final: Path, on_wait: Callable[[], None] | None) -> Iterator[None]:
    """Hold the lock file next to ``final`` (``on_wait`` is called if another producer holds it)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / f".{final.name}.lock", "a") as lock:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def build_artifact(cache_dir: str | os.PathLike, key: dict[str, Any], producer: Callable[[Path], None],
                   on_wait: Callable[[], None] | None = None) -> Path:
    """Return the folder for ``key``, running ``producer(folder)`` first if no runner has made it yet.

    ``producer`` fills the empty folder it is given. It runs at most once per key across processes
    sharing ``cache_dir``; if it raises, nothing is kept and the exception propagates.
    """
    canonical_json(key)  # fail early on keys that are not plain JSON
    from prunelab.train import distributed as ddp

    if ddp.is_distributed():
        return _build_artifact_together(cache_dir, key, producer, on_wait)
    final = artifact_path(cache_dir, key)
    if final.is_dir():
        return final
    with _exclusive(final, on_wait):
        if final.is_dir():
            return final
        # Leftovers of producers that were killed while holding the lock.
        for stale in final.parent.glob(f".{final.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
        tmp.mkdir()
        try:
            producer(tmp)
            atomic_write_json(tmp / "key.json", key)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def _build_artifact_together(cache_dir: str | os.PathLike, key: dict[str, Any], producer: Callable[[Path], None],
                             on_wait: Callable[[], None] | None) -> Path:
    """:func:`build_artifact` for a run whose ranks train together (under torchrun).

    A producer that trains data-parallel needs every rank, so the ranks decide together: rank 0
    takes the file lock (against other runners) and says whether the artifact exists; if not, all
    ranks run the producer in step, each into its own folder, and only rank 0's folder is kept."""
    from prunelab.train import distributed as ddp

    final = artifact_path(cache_dir, key)
    main_rank = ddp.is_main_process()
    with _exclusive(final, on_wait) if main_rank else contextlib.nullcontext():
        exists = ddp.all_gather_object(final.is_dir() if main_rank else None)[0]
        if exists:
            return final
        if main_rank:
            for stale in final.parent.glob(f".{final.name}.tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
            tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
            tmp.mkdir()
        else:
            tmp = Path(tempfile.mkdtemp(prefix="prunelab-artifact-"))
        try:
            producer(tmp)
            if main_rank:
                atomic_write_json(tmp / "key.json", key)
                os.rename(tmp, final)
        finally:
            if not main_rank or tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        ddp.barrier()  # the other ranks read the artifact only once rank 0 has renamed it into place
        return final


@dataclass
class RunContext:
    """Per-run services handed to a task function.

    ``study_dir``: the study's output folder. ``scratch_dir``: a folder of this run's own, emptied when
    an attempt starts (checkpoints a run keeps go here; report them in ``RunOutput.artifacts``).
    ``cache_dir``: where shared artifacts live. ``progress(**info)`` reports live progress (``epoch``,
    ``epochs``, ``phase``...) to the runner's display. ``record(**values)`` adds facts to the run's metrics.
    """

    run_id: str
    study_dir: Path
    scratch_dir: Path
    cache_dir: Path
    sink: ProgressSink | None = None
    info: dict[str, Any] = field(default_factory=dict)
    records: dict[str, Any] = field(default_factory=dict)

    def record(self, **values: Any) -> None:
        """Facts about this run that the shared helpers know and the task need not pass on (e.g. which
        dense checkpoint it started from): added to the run's metrics unless the task set them itself."""
        self.records.update(values)

    def progress(self, **info: Any) -> None:
        """Report live progress, e.g. ``ctx.progress(phase="finetune", epoch=3, epochs=10)``."""
        self.info.update(info)
        if self.sink is not None:
            self.sink(dict(self.info))

    def log(self, message: str) -> None:
        log.info("%s: %s", self.run_id, message)
        self.progress(message=message)

    def artifact(self, key: dict[str, Any], producer: Callable[[Path], None]) -> Path:
        """A shared product identified by ``key`` (plain JSON): built once by ``producer(folder)``.

        Returns the finished folder. Concurrent runs asking for the same key wait for the first one.
        """
        return build_artifact(self.cache_dir, key, producer,
                              on_wait=lambda: self.progress(phase="waiting for a shared artifact"))

    def relative(self, path: str | os.PathLike) -> str:
        """``path`` relative to the study folder when inside it (how artifacts are recorded)."""
        path = Path(path).resolve()
        with contextlib.suppress(ValueError):
            return str(path.relative_to(self.study_dir.resolve()))
        return str(path)

    def callback(self, phase: str = "train"):
        """A trainer :class:`~prunelab.train.callbacks.Callback` that reports each finished epoch."""
        from prunelab.train.callbacks import Callback

        ctx = self

        class _EpochProgress(Callback):
            def on_epoch_end(self, trainer, metrics):
                info = {k: metrics[k] for k in ("loss", "acc", "val_acc", "test_acc") if k in metrics}
                ctx.progress(phase=phase, epoch=trainer.epoch + 1, epochs=trainer.config.epochs,
                             **{k: float(v) for k, v in info.items() if isinstance(v, int | float)})

        return _EpochProgress()
