"""Where runs execute: in this process, in a pool of worker processes, on a Ray cluster, or each run
data-parallel on several processes started by ``torchrun``.

The runner claims runs in the results store and hands them to an executor; executors only execute
(:func:`execute_run`) and hand outcomes back, and the runner records them. So the store is touched
only by the runner's process, and a Ray worker needs no access to it (it does need the study folder
for shared artifacts: a shared file system on a multi-machine cluster).

All executors share one interface: ``free()`` idle slots, ``in_flight()``, ``submit(run)``,
``poll(timeout, on_progress) -> [(run_id, outcome)]`` and ``shutdown()``.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue as queue_module
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunelab.errors import PrunelabError
from prunelab.study.run import RunConfig

OnProgress = Callable[[str, dict[str, Any]], None]
Outcome = dict[str, Any]
EXECUTORS = ("local", "process", "ray", "torchrun")


@dataclass
class Job:
    """What every worker needs to execute runs of one study (plain values: it crosses processes)."""

    study_dir: str
    cache_dir: str
    plugins: list[str] = field(default_factory=list)
    threads: int | None = None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if not isinstance(exc, PrunelabError):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text[:1000]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, so a run's numbers do not depend on the process that runs it."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rank() -> int:
    from prunelab.train.distributed import rank

    return rank()


def execute_run(run_dict: dict[str, Any], job: Job, sink: Callable[[dict[str, Any]], None] | None = None) -> Outcome:
    """Execute one run in this process and return its outcome (never raises for a failing task).

    ``{"ok": True, "output": RunOutput.to_dict(), "env", "duration"}`` or
    ``{"ok": False, "error": one line, "traceback", "env", "duration"}``.
    """
    from prunelab.study.context import RunContext
    from prunelab.study.env import environment
    from prunelab.study.tasks import RunOutput, get_kind, import_plugins

    start = time.time()
    env: dict[str, Any] = {}
    try:
        run = RunConfig.from_dict(run_dict)
        with contextlib.suppress(Exception):
            env = environment(run.train.get("device"))
        import_plugins(job.plugins)
        kind = get_kind(run.kind)
        study_dir = Path(job.study_dir)
        # Under torchrun only rank 0 keeps files: the other ranks work in a private scratch folder.
        main_rank = _rank() == 0
        scratch = study_dir / "runs" / run.run_id if main_rank else Path(tempfile.mkdtemp(prefix="prunelab-rank-"))
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        ctx = RunContext(run.run_id, study_dir, scratch, Path(job.cache_dir), sink)
        seed_everything(run.seed)
        try:
            result = RunOutput.coerce(kind.fn(run, ctx))
            for key, value in {**ctx.records, "kind_role": kind.role}.items():
                result.metrics.setdefault(key, value)
            output = result.to_dict()
        finally:
            if not main_rank:
                shutil.rmtree(scratch, ignore_errors=True)
        with contextlib.suppress(OSError):
            scratch.rmdir()  # only if the run left nothing in it
        return {"ok": True, "output": output, "env": env, "duration": time.time() - start}
    except Exception as exc:
        return {"ok": False, "error": _one_line(exc), "traceback": traceback.format_exc(), "env": env,
                "duration": time.time() - start}


class LocalExecutor:
    """Runs one run at a time in this process (progress goes straight to the display), with the job's
    torch thread count while a run executes."""

    def __init__(self, job: Job):
        self.job = job
        self._next: RunConfig | None = None

    def free(self) -> int:
        return 0 if self._next else 1

    def in_flight(self) -> int:
        return 1 if self._next else 0

    def submit(self, run: RunConfig) -> None:
        self._next = run

    def poll(self, timeout: float, on_progress: OnProgress) -> list[tuple[str, Outcome]]:
        if self._next is None:
            time.sleep(timeout)
            return []
        run, self._next = self._next, None
        import torch

        before = torch.get_num_threads()
        if self.job.threads:
            torch.set_num_threads(self.job.threads)
        try:
            outcome = execute_run(run.to_dict(), self.job, lambda info: on_progress(run.run_id, info))
        finally:
            torch.set_num_threads(before)
        return [(run.run_id, outcome)]

    def shutdown(self) -> None:
        self._next = None


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when the runner dies (PR_SET_PDEATHSIG); best effort elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


def _worker_main(index: int, tasks, results, job: Job, parent: int) -> None:
    """A pool worker: executes runs from its task queue until told to stop or its runner disappears."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the runner decides what happens on Ctrl-C
    if os.getppid() != parent:
        return
    if job.threads:
        import torch

        torch.set_num_threads(job.threads)
    while True:
        try:
            item = tasks.get(timeout=1.0)
        except queue_module.Empty:
            if os.getppid() != parent:
                return
            continue
        if item is None:
            return
        run_id = item["run_id"]
        outcome = execute_run(item["run"], job, lambda info, r=run_id: results.put(("progress", index, r, info)))
        results.put(("outcome", index, run_id, outcome))


@dataclass
class _Slot:
    process: Any
    tasks: Any
    run_id: str | None = None


class ProcessExecutor:
    """``workers`` spawned processes, one run each at a time. A worker that dies fails its run and is replaced."""

    def __init__(self, job: Job, workers: int):
        import multiprocessing

        if workers < 1:
            raise PrunelabError(f"--workers must be >= 1, got {workers}")
        self.job = job
        self._mp = multiprocessing.get_context("spawn")
        self._results = self._mp.Queue()
        self._slots = [self._start(i) for i in range(workers)]

    def _start(self, index: int) -> _Slot:
        tasks = self._mp.Queue()
        proc = self._mp.Process(target=_worker_main, args=(index, tasks, self._results, self.job, os.getpid()),
                                name=f"prunelab-worker-{index}", daemon=True)
        proc.start()
        return _Slot(proc, tasks)

    def free(self) -> int:
        return sum(1 for s in self._slots if s.run_id is None)

    def in_flight(self) -> int:
        return sum(1 for s in self._slots if s.run_id is not None)

    def submit(self, run: RunConfig) -> None:
        slot = next(s for s in self._slots if s.run_id is None)
        slot.run_id = run.run_id
        slot.tasks.put({"run_id": run.run_id, "run": run.to_dict()})

    def poll(self, timeout: float, on_progress: OnProgress) -> list[tuple[str, Outcome]]:
        done: list[tuple[str, Outcome]] = []
        messages = []
        with contextlib.suppress(queue_module.Empty):
            messages.append(self._results.get(timeout=timeout))
            while True:
                messages.append(self._results.get_nowait())
        for what, index, run_id, payload in messages:
            if what == "progress":
                on_progress(run_id, payload)
            elif self._slots[index].run_id == run_id:
                self._slots[index].run_id = None
                done.append((run_id, payload))
        for i, slot in enumerate(self._slots):
            if not slot.process.is_alive():
                if slot.run_id is not None:
                    done.append((slot.run_id, {"ok": False, "error": f"worker process died (exit code "
                                                                     f"{slot.process.exitcode})", "duration": None}))
                self._slots[i] = self._start(i)
        return done

    def shutdown(self) -> None:
        for slot in self._slots:
            with contextlib.suppress(Exception):
                slot.tasks.put(None)
        deadline = time.time() + 5.0
        for slot in self._slots:
            if slot.run_id is not None:
                slot.process.terminate()
            slot.process.join(timeout=max(0.1, deadline - time.time()))
            if slot.process.is_alive():
                slot.process.kill()
                slot.process.join(timeout=1.0)
        self._results.close()


def _ray_execute(run_dict: dict[str, Any], job: Job, progress) -> Outcome:
    run_id = RunConfig.from_dict(run_dict).run_id

    def sink(info: dict[str, Any]) -> None:
        if progress is not None:
            with contextlib.suppress(Exception):
                progress.put_nowait((run_id, info))

    if job.threads:
        import torch

        torch.set_num_threads(job.threads)
    return execute_run(run_dict, job, sink)


class RayExecutor:
    """Dispatches runs as Ray tasks (``num_cpus`` / ``num_gpus`` each), at most ``workers`` in flight.

    Connects to ``address`` (or ``RAY_ADDRESS``) when given, else starts a local Ray instance, unless
    Ray is already initialised in this process. Tasks are never retried by Ray (a retry would execute a
    run twice); a crashed task fails its run and the next ``study run`` retries it.
    """

    def __init__(self, job: Job, workers: int | None = None, address: str | None = None,
                 cpus_per_run: float = 1.0, gpus_per_run: float = 0.0):
        try:
            import ray
            from ray.util.queue import Queue
        except ImportError:
            raise PrunelabError("the ray executor needs Ray: pip install 'prunelab[ray]'") from None
        self._ray = ray
        self._owns = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address is None and not os.environ.get("RAY_ADDRESS") and workers:
                kwargs["num_cpus"] = max(1, int(workers * cpus_per_run))
            try:
                ray.init(address=address, **kwargs)
            except (ConnectionError, ValueError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                where = address or os.environ.get("RAY_ADDRESS") or "local"
                raise PrunelabError(f"cannot start or reach Ray (address {where}): {first}") from exc
            self._owns = True
        self.job = job
        self.capacity = int(workers or max(1, ray.cluster_resources().get("CPU", 1) // max(cpus_per_run, 1e-9)))
        self._progress = Queue(actor_options={"num_cpus": 0})
        self._remote = ray.remote(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=0)(_ray_execute)
        self._refs: dict[Any, str] = {}

    def free(self) -> int:
        return self.capacity - len(self._refs)

    def in_flight(self) -> int:
        return len(self._refs)

    def submit(self, run: RunConfig) -> None:
        ref = self._remote.remote(run.to_dict(), self.job, self._progress)
        self._refs[ref] = run.run_id

    def _drain(self, on_progress: OnProgress) -> None:
        with contextlib.suppress(Exception):
            for run_id, info in self._progress.get_nowait_batch(self._progress.qsize()):
                on_progress(run_id, info)

    def poll(self, timeout: float, on_progress: OnProgress) -> list[tuple[str, Outcome]]:
        done: list[tuple[str, Outcome]] = []
        if not self._refs:
            time.sleep(timeout)
            return done
        ready, _ = self._ray.wait(list(self._refs), num_returns=len(self._refs), timeout=timeout)
        self._drain(on_progress)
        for ref in ready:
            run_id = self._refs.pop(ref)
            try:
                outcome = self._ray.get(ref)
            except Exception as exc:  # a crashed or cancelled Ray task
                outcome = {"ok": False, "error": f"ray task failed: {_one_line(exc)}", "duration": None}
            done.append((run_id, outcome))
        return done

    def shutdown(self) -> None:
        for ref in list(self._refs):
            with contextlib.suppress(Exception):
                self._ray.cancel(ref, force=True)
        self._refs.clear()
        with contextlib.suppress(Exception):
            self._ray.kill(self._progress.actor)
        if self._owns:
            self._ray.shutdown()


@dataclass
class _Launch:
    run_id: str
    process: subprocess.Popen
    folder: Path
    log: Any
    progress_offset: int = 0


class TorchrunExecutor:
    """Each run on ``nproc_per_node`` processes started by ``torchrun`` (data-parallel training: one
    process per GPU, or gloo processes on CPU), at most ``workers`` runs at once.

    A run's processes execute :mod:`prunelab.study.launch`; rank 0 writes progress lines and the
    outcome to files in ``<study>/runs/.launch/<run_id>/``, which this executor reads. A launch that
    exits without an outcome fails its run with the tail of its log. ``torchrun --standalone`` picks
    a free rendezvous port, so several launches share a machine. With CUDA, set
    ``CUDA_VISIBLE_DEVICES`` per runner so concurrent launches do not share GPUs.
    """

    def __init__(self, job: Job, workers: int = 1, nproc_per_node: int = 2):
        if workers < 1:
            raise PrunelabError(f"--workers must be >= 1, got {workers}")
        if isinstance(nproc_per_node, bool) or not isinstance(nproc_per_node, int) or nproc_per_node < 1:
            raise PrunelabError(f"--nproc-per-node must be a positive integer, got {nproc_per_node!r}")
        self.job = job
        self.workers = workers
        self.nproc = nproc_per_node
        self._launches: list[_Launch] = []

    def free(self) -> int:
        return self.workers - len(self._launches)

    def in_flight(self) -> int:
        return len(self._launches)

    def submit(self, run: RunConfig) -> None:
        from prunelab.io import atomic_write_json

        folder = Path(self.job.study_dir) / "runs" / ".launch" / run.run_id
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        task = {"run": run.to_dict(), "job": dict(self.job.__dict__), "outcome": str(folder / "outcome.json"),
                "progress": str(folder / "progress.jsonl")}
        atomic_write_json(folder / "task.json", task)
        env = dict(os.environ)
        env["OMP_NUM_THREADS"] = str(self.job.threads or 1)  # torchrun would force 1 and warn
        env.pop("RANK", None)  # a runner started under torchrun itself must not leak its rank
        log = open(folder / "launch.log", "wb")  # noqa: SIM115 (closed when the launch is collected)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={self.nproc}",
               "-m", "prunelab.study.launch", str(folder / "task.json")]
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self._launches.append(_Launch(run.run_id, process, folder, log))

    def _read_progress(self, launch: _Launch, on_progress: OnProgress) -> None:
        path = launch.folder / "progress.jsonl"
        with contextlib.suppress(OSError), open(path, "rb") as fh:
            fh.seek(launch.progress_offset)
            data = fh.read()
            complete = data[:data.rfind(b"\n") + 1]
            launch.progress_offset += len(complete)
            for line in complete.splitlines():
                with contextlib.suppress(ValueError):
                    on_progress(launch.run_id, json.loads(line))

    def poll(self, timeout: float, on_progress: OnProgress) -> list[tuple[str, Outcome]]:
        done: list[tuple[str, Outcome]] = []
        deadline = time.time() + timeout
        while True:
            for launch in list(self._launches):
                self._read_progress(launch, on_progress)
                code = launch.process.poll()
                if code is None:
                    continue
                self._launches.remove(launch)
                launch.log.close()
                done.append((launch.run_id, self._outcome(launch, code)))
            if done or time.time() >= deadline or not self._launches:
                break
            time.sleep(min(0.2, max(0.0, deadline - time.time())))
        if not self._launches and not done:
            time.sleep(max(0.0, deadline - time.time()))
        return done

    @staticmethod
    def _outcome(launch: _Launch, code: int) -> Outcome:
        path = launch.folder / "outcome.json"
        if path.is_file():
            with contextlib.suppress(OSError, ValueError), open(path) as fh:
                outcome = json.load(fh)
                shutil.rmtree(launch.folder, ignore_errors=True)
                return outcome
        try:
            tail = (launch.folder / "launch.log").read_text(errors="replace").strip().splitlines()[-3:]
        except OSError:
            tail = []
        error = " | ".join(tail) or "no output"
        return {"ok": False, "error": f"torchrun exited with status {code} and no outcome: {error}"[:1000],
                "duration": None}

    def shutdown(self) -> None:
        for launch in self._launches:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(launch.process.pid, signal.SIGTERM)
        deadline = time.time() + 10.0
        for launch in self._launches:
            try:
                launch.process.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(launch.process.pid, signal.SIGKILL)
                launch.process.wait(timeout=5.0)
            launch.log.close()
        self._launches.clear()
        with contextlib.suppress(OSError):
            (Path(self.job.study_dir) / "runs" / ".launch").rmdir()  # only when no launch left anything


def make_executor(kind: str, job: Job, workers: int = 1, ray_address: str | None = None, nproc_per_node: int = 2):
    """``local`` (sequential), ``process`` (``workers`` processes), ``ray``, or ``torchrun``
    (``workers`` runs at once, each on ``nproc_per_node`` processes)."""
    if kind == "local":
        return LocalExecutor(job) if workers <= 1 else ProcessExecutor(job, workers)
    if kind == "process":
        return ProcessExecutor(job, workers)
    if kind == "ray":
        return RayExecutor(job, workers=workers if workers > 1 else None, address=ray_address)
    if kind == "torchrun":
        return TorchrunExecutor(job, workers, nproc_per_node)
    raise PrunelabError(f"unknown executor {kind!r}; valid choices: {', '.join(EXECUTORS)}")
