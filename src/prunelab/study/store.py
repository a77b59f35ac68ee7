"""The results store: one SQLite file per study (``<out>/results.db``).

Tables:

* ``study(key, value)``: format marker, schema version, study name, spec hash, the normalised spec, and
  the spec's checked claims (outside the hash: they change no run).
* ``runs``: one row per run: its resolved configuration (JSON) and hash, grouping columns (model,
  method, kind, protocol, target, seed), status ``pending | running | done | failed``, attempt count,
  the claiming worker and its heartbeat, timings, error, final metrics (JSON, with ``acc``, ``loss``,
  ``params``, ``macs``, ``sparsity``, ``latency_ms`` promoted to columns), artifacts and environment.
* ``curves(run_id, idx, epoch, data)``: per-epoch rows; ``layers(run_id, idx, name, data)``: per-layer rows.

Crash safety: the file is created complete (built under a temporary name, then hard-linked into place),
runs in WAL mode with ``synchronous=FULL``, and a run's results are written in one transaction together
with ``status='done'``, so a process killed at any moment leaves every finished run intact. Claims are
``BEGIN IMMEDIATE`` transactions that take a run only if it is pending, or running under a worker that
is gone (same host, process not alive) or silent for longer than the lease; results are only accepted
from the claim that currently holds the run, so no run is ever recorded twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunelab.errors import PrunelabError
from prunelab.io import no_space_left, pid_alive
from prunelab.study.run import RunConfig, canonical_json
from prunelab.study.targets import target_key, target_label, target_value
from prunelab.study.tasks import PROMOTED_METRICS

FORMAT = "prunelab-study-store"
SCHEMA_VERSION = 1
STORE_NAME = "results.db"
STATUSES = ("pending", "running", "done", "failed")

_SCHEMA = """
CREATE TABLE study (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (
    run_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    active INTEGER NOT NULL DEFAULT 1,
    config TEXT NOT NULL,
    config_hash TEXT NOT NULL,
    model TEXT, method TEXT, kind TEXT, protocol TEXT,
    target TEXT, target_key TEXT, target_value REAL, seed INTEGER,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'running', 'done', 'failed')),
    attempt INTEGER NOT NULL DEFAULT 0,
    worker TEXT, claim TEXT, heartbeat REAL, progress TEXT,
    started REAL, finished REAL, duration REAL,
    error TEXT, traceback TEXT,
    metrics TEXT,
    acc REAL, loss REAL, params REAL, macs REAL, sparsity REAL, latency_ms REAL,
    artifacts TEXT, env TEXT
);
CREATE INDEX runs_status ON runs (active, status, seq);
CREATE TABLE curves (run_id TEXT NOT NULL, idx INTEGER NOT NULL, epoch REAL, data TEXT NOT NULL,
                     PRIMARY KEY (run_id, idx));
CREATE TABLE layers (run_id TEXT NOT NULL, idx INTEGER NOT NULL, name TEXT, data TEXT NOT NULL,
                     PRIMARY KEY (run_id, idx));
"""


def worker_id() -> str:
    """``host:pid`` of this process: who holds a claim."""
    return f"{socket.gethostname()}:{os.getpid()}"


def worker_gone(worker: str | None) -> bool:
    """True when ``worker`` ran on this host and its process no longer exists."""
    if not worker:
        return True
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    return not pid_alive(int(pid))


@dataclass
class Claim:
    """A run this worker holds: the store accepts its results only while ``token`` still matches."""

    run: RunConfig
    token: str
    attempt: int


def _corrupt(path: Path, exc: Exception | str) -> PrunelabError:
    """The error for a store SQLite cannot use: a full disk is said as such (SQLite words it "database
    or disk is full", and the store is then intact), anything else as a corrupted or foreign file."""
    if isinstance(exc, sqlite3.Error) and _disk_full(exc, path):
        return _store_full(path, "the store is intact and finished runs are kept")
    return PrunelabError(f"results store {path} is corrupted or not a prunelab store ({exc})")


def _store_full(path: Path, state: str) -> PrunelabError:
    return PrunelabError(f"results store {path}: no space left on device; {state}: free space "
                         "and run again")


#: SQLite's primary result codes for a full disk and for an I/O error (extended codes keep them in the low byte)
SQLITE_FULL, SQLITE_IOERR = 13, 10


def _disk_full(exc: sqlite3.Error, path: Path) -> bool:
    """SQLite says SQLITE_FULL when a write finds the disk full, but SQLITE_IOERR when it cannot even
    create the WAL index of a store it opens: that is a full disk too when no space is left."""
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if code is None:
        return "database or disk is full" in str(exc) or ("disk I/O error" in str(exc) and no_space_left(path.parent))
    return code & 0xFF == SQLITE_FULL or (code & 0xFF == SQLITE_IOERR and no_space_left(path.parent))


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=60.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 60000")
    conn.execute("PRAGMA synchronous = FULL")
    return conn


def resolve_store_path(study: str | os.PathLike) -> Path:
    """A study folder, a ``.db`` file or a spec YAML (its default folder ``studies/<name>``) -> store path."""
    path = Path(study)
    if path.is_dir():
        return path / STORE_NAME
    if path.suffix in (".yaml", ".yml"):
        from prunelab.study.spec import load_spec

        return default_out_dir(load_spec(path, import_user_code=False).name) / STORE_NAME
    if path.suffix in (".db", ".sqlite", ".sqlite3") or path.is_file():
        return path
    raise PrunelabError(f"no study at {path}: give a study folder, its results.db, or the spec YAML")


def default_out_dir(name: str) -> Path:
    return Path("studies") / name


class ResultsStore:
    """A study's SQLite store. Open with :meth:`create_or_open` (runner) or :meth:`open` (readers)."""

    def __init__(self, path: Path, conn: sqlite3.Connection, meta: dict[str, Any]):
        self.path = path
        self.conn = conn
        self.meta = meta

    # ------------------------------------------------------------ opening

    @classmethod
    def open(cls, study: str | os.PathLike) -> ResultsStore:
        """Open an existing store for reading (and status updates); never creates or modifies it."""
        path = resolve_store_path(study)
        if not path.is_file():
            raise PrunelabError(f"no results store at {path}; run `prunelab study run` first")
        return cls._open_existing(path)

    @classmethod
    def _open_existing(cls, path: Path) -> ResultsStore:
        # The file is never opened outside SQLite: closing any descriptor of it would drop the POSIX
        # locks this process's connections hold, and another process could then delete the live WAL.
        if path.stat().st_size == 0:
            raise _corrupt(path, "empty file")
        try:
            conn = _connect(path)
        except sqlite3.DatabaseError as exc:
            raise _corrupt(path, exc) from None
        try:
            rows = conn.execute("SELECT key, value FROM study").fetchall()
            meta = {k: json.loads(v) for k, v in rows}
            if meta.get("format") != FORMAT:
                raise _corrupt(path, "no prunelab study table")
            if meta.get("schema") != SCHEMA_VERSION:
                raise PrunelabError(f"results store {path} has schema {meta.get('schema')}, this prunelab reads "
                                    f"{SCHEMA_VERSION}")
            conn.execute("SELECT run_id, status, metrics FROM runs LIMIT 1").fetchall()
        except (sqlite3.DatabaseError, json.JSONDecodeError) as exc:
            conn.close()
            raise _corrupt(path, exc) from None
        except PrunelabError:
            conn.close()
            raise
        return cls(path, conn, meta)

    @classmethod
    def create_or_open(cls, path: str | os.PathLike, spec, *, update: bool = False) -> ResultsStore:
        """The store for ``spec`` at ``path``: created if missing, else checked to belong to the same study.

        A store of another study, or of an edited spec (different spec hash) unless ``update``, is
        refused with a one-line error and left untouched.
        """
        path = Path(path)
        if not path.exists():
            cls._create(path, spec)
        store = cls._open_existing(path)
        try:
            if store.meta.get("name") != spec.name:
                raise PrunelabError(f"results store {path} belongs to study {store.meta.get('name')!r}, not "
                                    f"{spec.name!r}; use another --out folder")
            if store.meta.get("spec_hash") != spec.spec_hash:
                if not update:
                    raise PrunelabError(f"results store {path} was made from a different version of study "
                                        f"{spec.name!r} (spec hash {store.meta.get('spec_hash', '')[:12]} != "
                                        f"{spec.spec_hash[:12]}); pass --update to extend it, or use another --out")
                store._set_meta({"spec_hash": spec.spec_hash, "spec": spec.to_dict(), "updated": time.time()})
        except BaseException:
            store.close()
            raise
        return store

    @staticmethod
    def _create(path: Path, spec) -> None:
        from prunelab import __version__

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            conn = sqlite3.connect(str(tmp), isolation_level=None)
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.executescript(_SCHEMA)
                meta = {"format": FORMAT, "schema": SCHEMA_VERSION, "name": spec.name, "spec_hash": spec.spec_hash,
                        "spec": spec.to_dict(), "created": time.time(), "prunelab_version": __version__}
                conn.executemany("INSERT INTO study (key, value) VALUES (?, ?)",
                                 [(k, json.dumps(v)) for k, v in meta.items()])
            finally:
                conn.close()
            with contextlib.suppress(FileExistsError):  # another runner created it first: use theirs
                os.link(tmp, path)
        except sqlite3.Error as exc:
            if _disk_full(exc, path):
                raise _store_full(path, "no store was created") from None
            raise PrunelabError(f"cannot create results store {path}: {exc}") from None
        finally:
            for suffix in ("", "-wal", "-shm", "-journal"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{tmp}{suffix}")

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction: committed on success, rolled back on any exception."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.DatabaseError as exc:
            raise self._error(exc) from None
        try:
            yield self.conn
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.DatabaseError):  # a full disk mid-transaction, most likely
                raise self._error(exc) from None
            raise
        try:
            self.conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")
            raise self._error(exc) from None

    def _error(self, exc: sqlite3.DatabaseError) -> PrunelabError:
        if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
            return PrunelabError(f"results store {self.path} stayed locked by another process: {exc}")
        return _corrupt(self.path, exc)

    def _set_meta(self, values: dict[str, Any]) -> None:
        with self._write() as c:
            c.executemany("INSERT OR REPLACE INTO study (key, value) VALUES (?, ?)",
                          [(k, json.dumps(v)) for k, v in values.items()])
        self.meta.update(values)

    def record_claims(self, claims: list[dict[str, Any]]) -> None:
        """Record the spec's checked claims (:mod:`prunelab.study.claims`) for the report. Claims change
        no run, so they live outside the spec hash and an edited claim replaces the recorded one."""
        if self.meta.get("claims", []) != claims:
            self._set_meta({"claims": claims})

    def query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple]:
        """Run a read-only query (reports and tests aggregate the store directly with SQL)."""
        try:
            return self.conn.execute(sql, tuple(params)).fetchall()
        except sqlite3.DatabaseError as exc:
            raise self._error(exc) from None

    # ------------------------------------------------------------ runs

    def sync_runs(self, runs: list[RunConfig]) -> None:
        """Add the spec's runs as pending (existing rows keep their status) and mark which are active."""
        with self._write() as c:
            start = c.execute("SELECT COALESCE(MAX(seq), -1) + 1 FROM runs").fetchone()[0]
            c.execute("UPDATE runs SET active = 0")
            for i, run in enumerate(runs):
                c.execute(
                    "INSERT INTO runs (run_id, seq, config, config_hash, model, method, kind, protocol, target, "
                    "target_key, target_value, seed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (run_id) DO UPDATE SET active = 1, seq = excluded.seq",
                    (run.run_id, start + i, canonical_json(run.to_dict()), run.config_hash, run.model_label,
                     run.method, run.kind, run.protocol, target_label(run.target), target_key(run.target),
                     target_value(run.target), run.seed))

    def reset_failed(self) -> int:
        """Make failed runs pending again (a re-run retries them). Returns how many."""
        with self._write() as c:
            return c.execute("UPDATE runs SET status = 'pending' WHERE status = 'failed' AND active = 1").rowcount

    def counts(self) -> dict[str, int]:
        rows = self.query("SELECT status, COUNT(*) FROM runs WHERE active = 1 GROUP BY status")
        out = dict.fromkeys(STATUSES, 0)
        out.update({s: n for s, n in rows})
        return out

    def _stale(self, worker: str | None, heartbeat: float | None, lease: float, now: float) -> bool:
        return worker_gone(worker) or heartbeat is None or now - heartbeat > lease

    def claim_next(self, worker: str, lease: float) -> Claim | None:
        """Take the next pending run (or one whose worker is gone or silent past ``lease`` seconds)."""
        now = time.time()
        with self._write() as c:
            rows = c.execute("SELECT run_id, status, worker, heartbeat, claim, config FROM runs "
                             "WHERE active = 1 AND status IN ('pending', 'running') ORDER BY seq").fetchall()
            for run_id, status, owner, heartbeat, old, config in rows:
                if status == "running" and not self._stale(owner, heartbeat, lease, now):
                    continue
                token = uuid.uuid4().hex
                cur = c.execute(
                    "UPDATE runs SET status = 'running', attempt = attempt + 1, worker = ?, claim = ?, "
                    "heartbeat = ?, started = ?, progress = NULL, error = NULL, traceback = NULL "
                    "WHERE run_id = ? AND status = ? AND claim IS ?", (worker, token, now, now, run_id, status, old))
                if cur.rowcount == 1:
                    attempt = c.execute("SELECT attempt FROM runs WHERE run_id = ?", (run_id,)).fetchone()[0]
                    return Claim(RunConfig.from_dict(json.loads(config)), token, attempt)
        return None

    def others_running(self, lease: float, mine: Iterable[str] = ()) -> int:
        """Runs held by live workers other than the claims in ``mine``."""
        now, mine = time.time(), set(mine)
        rows = self.query("SELECT claim, worker, heartbeat FROM runs WHERE active = 1 AND status = 'running'")
        return sum(1 for token, w, hb in rows if token not in mine and not self._stale(w, hb, lease, now))

    def heartbeat(self, claims: dict[str, tuple[str, dict | None]]) -> None:
        """Refresh the heartbeat (and live progress) of ``{run_id: (token, progress)}``."""
        if not claims:
            return
        now = time.time()
        with self._write() as c:
            for run_id, (token, progress) in claims.items():
                c.execute("UPDATE runs SET heartbeat = ?, progress = ? WHERE run_id = ? AND claim = ? "
                          "AND status = 'running'",
                          (now, None if progress is None else json.dumps(progress, default=str), run_id, token))

    def release(self, claims: dict[str, str]) -> None:
        """Give back unfinished claims ``{run_id: token}`` (interrupted runner) so they run again."""
        if not claims:
            return
        with self._write() as c:
            for run_id, token in claims.items():
                c.execute("UPDATE runs SET status = 'pending', worker = NULL, claim = NULL, heartbeat = NULL, "
                          "progress = NULL WHERE run_id = ? AND claim = ? AND status = 'running'", (run_id, token))

    def finish(self, claim: Claim, outcome: dict[str, Any]) -> bool:
        """Record a run's outcome in one transaction. False if the claim was lost (nothing written)."""
        now = time.time()
        run_id = claim.run.run_id
        duration = outcome.get("duration")
        with self._write() as c:
            if outcome.get("ok"):
                out = outcome["output"]
                metrics = out.get("metrics") or {}
                promoted = [_number(metrics.get(k)) for k in PROMOTED_METRICS]
                cur = c.execute(
                    "UPDATE runs SET status = 'done', finished = ?, duration = ?, heartbeat = ?, progress = NULL, "
                    "metrics = ?, acc = ?, loss = ?, params = ?, macs = ?, sparsity = ?, latency_ms = ?, "
                    "artifacts = ?, env = ?, error = NULL, traceback = NULL "
                    "WHERE run_id = ? AND claim = ? AND status = 'running'",
                    (now, duration, now, json.dumps(metrics), *promoted, json.dumps(out.get("artifacts") or {}),
                     json.dumps(outcome.get("env") or {}), run_id, claim.token))
                if cur.rowcount != 1:
                    return False  # claim lost: nothing was written, the empty transaction commits
                c.execute("DELETE FROM curves WHERE run_id = ?", (run_id,))
                c.execute("DELETE FROM layers WHERE run_id = ?", (run_id,))
                c.executemany("INSERT INTO curves (run_id, idx, epoch, data) VALUES (?, ?, ?, ?)",
                              [(run_id, i, _number(row.get("epoch")), json.dumps(row))
                               for i, row in enumerate(out.get("curves") or [])])
                c.executemany("INSERT INTO layers (run_id, idx, name, data) VALUES (?, ?, ?, ?)",
                              [(run_id, i, str(row.get("name", i)), json.dumps(row))
                               for i, row in enumerate(out.get("layers") or [])])
            else:
                cur = c.execute(
                    "UPDATE runs SET status = 'failed', finished = ?, duration = ?, progress = NULL, error = ?, "
                    "traceback = ?, env = ? WHERE run_id = ? AND claim = ? AND status = 'running'",
                    (now, duration, str(outcome.get("error") or "failed"), outcome.get("traceback"),
                     json.dumps(outcome.get("env") or {}), run_id, claim.token))
                if cur.rowcount != 1:
                    return False
        return True


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
