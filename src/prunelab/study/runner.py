"""Running a study: claim runs in the store, execute them, record each outcome as it arrives.

Re-running a study skips the runs already done, retries failed ones, and takes over runs left
``running`` by a runner that is gone (killed, even with SIGKILL) or silent for longer than the lease.
Several runners (processes, machines sharing the folder) may work on one study at once: each run is
claimed by exactly one of them (see :mod:`prunelab.study.store`). A runner that runs out of work waits
for runs other live runners still hold, and takes them over if those runners die.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunelab.errors import PrunelabError
from prunelab.io import atomic_write_text
from prunelab.study.executors import Job, make_executor
from prunelab.study.progress import ProgressDisplay
from prunelab.study.spec import StudySpec, load_spec
from prunelab.study.store import STORE_NAME, Claim, ResultsStore, default_out_dir, worker_id

log = logging.getLogger("prunelab.study")

DEFAULT_LEASE_S = 120.0
#: processes a runner may start per CPU of this machine (each trains a model; more only thrash)
MAX_PROCESSES_PER_CPU = 4


@dataclass
class StudyResult:
    """What :func:`run_study` did: where, how many runs by status, what failed."""

    name: str
    out_dir: Path
    store_path: Path
    counts: dict[str, int]
    executed: int
    failures: list[tuple[str, str]] = field(default_factory=list)
    tracked: int = 0  # finished runs logged to the tracker
    tracking_dir: Path | None = None

    @property
    def ok(self) -> bool:
        return self.counts.get("failed", 0) == 0 and self.counts.get("pending", 0) == 0 \
            and self.counts.get("running", 0) == 0


class _Heartbeat(threading.Thread):
    """Refreshes the heartbeats of this runner's claims from a thread (a long run keeps its lease)."""

    def __init__(self, path: Path, interval: float):
        super().__init__(name="prunelab-heartbeat", daemon=True)
        self.path = path
        self.interval = interval
        self.claims: dict[str, tuple[str, dict | None]] = {}
        self.lock = threading.Lock()
        self.stopped = threading.Event()

    def set(self, run_id: str, token: str, progress: dict | None = None) -> None:
        with self.lock:
            self.claims[run_id] = (token, progress)

    def drop(self, run_id: str) -> None:
        with self.lock:
            self.claims.pop(run_id, None)

    def run(self) -> None:
        store = None
        try:
            store = ResultsStore.open(self.path)
            while not self.stopped.wait(self.interval):
                with self.lock:
                    snapshot = dict(self.claims)
                with contextlib.suppress(PrunelabError):
                    store.heartbeat(snapshot)
        except PrunelabError as exc:
            log.warning("heartbeat stopped: %s", exc)
        finally:
            if store is not None:
                store.close()

    def stop(self) -> None:
        self.stopped.set()
        if self.is_alive():
            self.join(timeout=5.0)


class _Terminated(BaseException):
    """SIGTERM, turned into an exception so claims are given back on the way out."""


_terminating = threading.Event()


def _on_sigterm(signum, frame) -> None:
    # The flag outlives the exception: one raised while an extension module initialises (numpy.random's
    # Cython modules, imported lazily by the first run) can be swallowed there, so the runner checks the
    # flag again at the run's next progress report and after each poll.
    _terminating.set()
    raise _Terminated()


def _check_terminated() -> None:
    if _terminating.is_set():
        raise _Terminated()


def prepare_study(spec: StudySpec | str | os.PathLike, out: str | os.PathLike | None = None, *,
                  update: bool = False) -> tuple[StudySpec, Path, ResultsStore]:
    """Load and check the spec, open (or create) its store and register its runs; nothing runs yet."""
    if not isinstance(spec, StudySpec):
        spec = load_spec(spec)
    runs = spec.expand()
    out_dir = Path(out) if out is not None else default_out_dir(spec.name)
    if out_dir.exists() and not out_dir.is_dir():
        raise PrunelabError(f"--out {out_dir} is a file, not a folder")
    store = ResultsStore.create_or_open(out_dir / STORE_NAME, spec, update=update)
    try:
        store.sync_runs(runs)
        store.record_claims(spec.claims_dict())
        if spec.text is not None:
            atomic_write_text(out_dir / "study.yaml", spec.text)
    except BaseException:
        store.close()
        raise
    return spec, out_dir, store


def run_study(spec: StudySpec | str | os.PathLike, out: str | os.PathLike | None = None, *,
              executor: str = "local", workers: int = 1, update: bool = False, retry_failed: bool = True,
              progress: bool | None = None, lease: float = DEFAULT_LEASE_S, heartbeat: float | None = None,
              threads: int | None = None, ray_address: str | None = None,
              nproc_per_node: int = 2, tracker: str | None = None, tracker_dir: str | os.PathLike | None = None
              ) -> StudyResult:
    """Run every unfinished run of a study and record the outcomes in ``<out>/results.db``.

    ``executor``: ``local`` (sequential, or a process pool when ``workers > 1``), ``process``, ``ray``,
    or ``torchrun`` (each run data-parallel on ``nproc_per_node`` processes, ``workers`` runs at once).
    ``progress``: show the live display (default: when stderr is a terminal). ``threads``: torch
    threads per run (default 1, so a run's numbers do not depend on ``workers``: CPU kernels split
    their sums by thread count, which can move the last digits). The report is not written here
    (:func:`prunelab.report.write_report` reads the store afterwards; ``study run --report`` calls it).
    ``tracker`` / ``tracker_dir`` (default: the spec's ``tracker``): log every finished run to TensorBoard or
    MLflow afterwards (:func:`prunelab.study.tracking.export_study`).
    """
    if threads is not None:  # checked before the store is opened; Ray workers may have more CPUs than this machine
        if executor != "ray":
            from prunelab.measure.timing import check_threads

            check_threads(threads)
        elif isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise PrunelabError(f"thread count {threads!r} must be a positive integer")
    if executor == "torchrun" and (isinstance(nproc_per_node, bool) or not isinstance(nproc_per_node, int)
                                   or nproc_per_node < 1):
        raise PrunelabError(f"--nproc-per-node must be a positive integer, got {nproc_per_node!r}")
    if executor != "ray":  # a Ray cluster has its own CPUs
        _check_processes(workers * (nproc_per_node if executor == "torchrun" else 1), workers)
    if not isinstance(spec, StudySpec):
        spec = load_spec(spec)
    if tracker is None and spec.tracker:
        tracker, tracker_dir = spec.tracker["name"], tracker_dir or spec.tracker.get("dir")
    if tracker is not None:
        from prunelab.track import check_tracker

        check_tracker(tracker)  # a missing extra is one line before any run
    if executor != "ray":  # a Ray cluster's data and cache may live only on its workers
        unusable = spec.unusable_cache() or spec.oversized_model()
        if unusable:
            raise PrunelabError(f"{spec.source or spec.name}: {unusable}")
        _check_data(spec)
    from prunelab.io import check_folder

    check_folder(Path(out) if out is not None else default_out_dir(spec.name), "study folder")
    spec, out_dir, store = prepare_study(spec, out, update=update)
    out_dir = out_dir.resolve()
    try:
        if retry_failed:
            store.reset_failed()
        threads = threads or 1
        if store.counts()["pending"]:
            _warn_if_threads_differ(store, threads)
        cache = Path(spec.cache).expanduser().resolve() if spec.cache else out_dir / "artifacts"
        job = Job(str(out_dir), str(cache), list(spec.plugins), threads)
        runs_on = make_executor(executor, job, workers, ray_address, nproc_per_node)
        executed, failures = _drive(spec, store, runs_on, progress, lease, heartbeat or min(10.0, lease / 6))
        result = StudyResult(spec.name, out_dir, store.path, store.counts(), executed, failures)
    finally:
        store.close()
    if tracker is not None:
        from prunelab.study.tracking import export_study

        result.tracked, result.tracking_dir = export_study(result.store_path, tracker, tracker_dir)
    return result


def _check_processes(processes: int, workers: int) -> None:
    """Refuse more worker processes than this machine can run (:data:`MAX_PROCESSES_PER_CPU`)."""
    cpus = os.cpu_count() or 1
    if workers > 1 and processes > MAX_PROCESSES_PER_CPU * cpus:
        raise PrunelabError(f"--workers {workers} would start {processes:,} processes; this machine has {cpus} "
                            f"CPU(s): at most {MAX_PROCESSES_PER_CPU * cpus} ({MAX_PROCESSES_PER_CPU} per CPU)")


def _check_data(spec: StudySpec) -> None:
    """Load the study's dataset once before anything is written: missing or broken data is one line
    (exit 2) instead of a study folder full of failed runs. The copy stays cached for local runs."""
    from prunelab.study.common import load_data
    from prunelab.study.tasks import get_kind

    real = next((r for r in spec.expand() if get_kind(r.kind).uses_model), None)  # synthetic kinds read no data
    if real is not None:
        load_data(real)


def _warn_if_threads_differ(store: ResultsStore, threads: int) -> None:
    """Finished runs that used another thread count may differ from new ones in the last digits: say so."""
    used: dict[int, int] = {}
    for (env,) in store.query("SELECT env FROM runs WHERE active = 1 AND status = 'done' AND env IS NOT NULL"):
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            n = int(json.loads(env).get("torch_threads"))
            used[n] = used.get(n, 0) + 1
    other = {n: c for n, c in used.items() if n != threads}
    if other:
        listed = ", ".join(f"{c} with {n}" for n, c in sorted(other.items()))
        sys.stderr.write(f"prunelab study: warning: finished runs used other thread counts ({listed}); this runner "
                         f"uses {threads} (CPU results can differ in the last digits; --threads sets it)\n")


def _drive(spec: StudySpec, store: ResultsStore, executor, progress: bool | None, lease: float,
           interval: float) -> tuple[int, list[tuple[str, str]]]:
    me = worker_id()
    counts = store.counts()
    display = ProgressDisplay(spec.name, sum(counts.values()), counts["done"], enabled=progress)
    beat = _Heartbeat(store.path, interval)
    beat.start()
    claims: dict[str, Claim] = {}
    live: dict[str, tuple[str, dict[str, Any]]] = {}
    executed, failures = 0, []
    previous = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    if previous is not None:
        _terminating.clear()
        signal.signal(signal.SIGTERM, _on_sigterm)

    def on_progress(run_id: str, info: dict[str, Any]) -> None:
        _check_terminated()
        if run_id in claims:
            live[run_id] = (live[run_id][0], info)
            beat.set(run_id, claims[run_id].token, info)
            display.update(counts, live)

    try:
        while True:
            while executor.free() > 0:
                claim = store.claim_next(me, lease)
                if claim is None:
                    break
                run_id = claim.run.run_id
                claims[run_id] = claim
                live[run_id] = (claim.run.label, {})
                beat.set(run_id, claim.token)
                executor.submit(claim.run)
                counts = store.counts()
                display.update(counts, live, force=True)
            if executor.in_flight() == 0:
                if store.others_running(lease) == 0:
                    break
                time.sleep(min(1.0, interval))  # other runners hold the rest: wait, take over if they die
                counts = store.counts()
                display.update(counts, live)
                continue
            for run_id, outcome in executor.poll(0.2, on_progress):
                claim = claims.pop(run_id)
                live.pop(run_id, None)
                beat.drop(run_id)
                executed += 1
                if not store.finish(claim, outcome):
                    log.warning("run %s was taken over by another runner; its result here is discarded", run_id)
                elif not outcome.get("ok"):
                    failures.append((claim.run.label, str(outcome.get("error"))))
                    display.write(f"failed: {claim.run.label}: {outcome.get('error')}")
                counts = store.counts()
                display.update(counts, live, force=True)
            _check_terminated()  # finished outcomes are recorded first
    except BaseException as exc:
        with contextlib.suppress(Exception):
            store.release({r: c.token for r, c in claims.items()})
        if isinstance(exc, _Terminated):
            raise SystemExit(128 + signal.SIGTERM) from None
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        executor.shutdown()
        beat.stop()
        with contextlib.suppress(Exception):
            display.update(store.counts(), {}, force=True)
        display.close()
    return executed, failures


def study_status(study: str | os.PathLike) -> dict[str, Any]:
    """Counts by status, the runs in progress (worker, heartbeat age, epoch) and the failures."""
    import json

    with ResultsStore.open(study) as store:
        now = time.time()
        running = [{"run_id": r, "model": m, "method": me, "target": t, "protocol": p, "seed": s, "worker": w,
                    "heartbeat_age_s": None if hb is None else round(now - hb, 1),
                    "progress": json.loads(pr) if pr else None}
                   for r, m, me, t, p, s, w, hb, pr in store.query(
                       "SELECT run_id, model, method, target, protocol, seed, worker, heartbeat, progress FROM runs "
                       "WHERE active = 1 AND status = 'running' ORDER BY seq")]
        failed = [{"run_id": r, "model": m, "method": me, "target": t, "protocol": p, "seed": s, "error": e}
                  for r, m, me, t, p, s, e in store.query(
                      "SELECT run_id, model, method, target, protocol, seed, error FROM runs "
                      "WHERE active = 1 AND status = 'failed' ORDER BY seq")]
        return {"name": store.meta.get("name"), "store": str(store.path), "counts": store.counts(),
                "running": running, "failed": failed}
