"""The results store: refusing foreign or corrupted files untouched, claims, lost claims, artifacts."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from prunelab.cli import main
from prunelab.errors import PrunelabError
from prunelab.study import ResultsStore, load_results, parse_spec, prepare_study, run_study
from prunelab.study.context import build_artifact
from prunelab.study.store import worker_id

SPEC = """
name: {name}
data: digits
models: [a, b]
methods:
  - {{name: s, kind: noop}}
targets: [{{sparsity: [0.5, 0.9]}}]
seeds: {seeds}
"""


def write_spec(tmp_path: Path, name: str = "t", seeds: int = 2) -> Path:
    path = tmp_path / f"{name}-{seeds}.yaml"
    path.write_text(SPEC.format(name=name, seeds=seeds))
    return path


def digest(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def test_run_records_every_run_once_with_its_config(tmp_path):
    out = tmp_path / "study"
    result = run_study(write_spec(tmp_path), out, progress=False)
    assert result.counts == {"pending": 0, "running": 0, "done": 8, "failed": 0} and result.executed == 8
    df = load_results(out)
    assert len(df) == 8 and set(df["status"]) == {"done"} and df["run_id"].is_unique
    assert list(df["attempt"]) == [1] * 8
    conn = sqlite3.connect(out / "results.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    for config, metrics, acc, params in conn.execute("SELECT config, metrics, acc, params FROM runs"):
        cfg, m = json.loads(config), json.loads(metrics)
        assert cfg["params"]["seconds"] == 0.0 and cfg["train"]["seed"] == cfg["seed"]  # resolved config stored
        assert acc == m["acc"] and params == m["params"]
    assert conn.execute("SELECT COUNT(*) FROM curves").fetchone()[0] == 8 * 2
    assert conn.execute("SELECT COUNT(*) FROM layers").fetchone()[0] == 8 * 4
    again = run_study(write_spec(tmp_path), out, progress=False)
    assert again.executed == 0 and again.counts["done"] == 8


def test_store_of_another_study_is_refused_untouched(tmp_path):
    out = tmp_path / "study"
    run_study(write_spec(tmp_path, "first"), out, progress=False)
    before = digest(out / "results.db")
    with pytest.raises(PrunelabError, match="belongs to study 'first', not 'second'"):
        run_study(write_spec(tmp_path, "second"), out, progress=False)
    with pytest.raises(PrunelabError, match="different version of study 'first'.*--update"):
        run_study(write_spec(tmp_path, "first", seeds=3), out, progress=False)
    assert digest(out / "results.db") == before
    result = run_study(write_spec(tmp_path, "first", seeds=3), out, progress=False, update=True)
    assert result.executed == 4 and result.counts["done"] == 12


@pytest.mark.parametrize("damage", ["garbage", "empty", "truncated", "foreign-sqlite"])
def test_corrupted_store_is_a_one_line_error_and_stays_untouched(tmp_path, capsys, damage):
    out = tmp_path / "study"
    db = out / "results.db"
    if damage == "garbage":
        out.mkdir()
        db.write_bytes(b"not a database at all" * 100)
    elif damage == "empty":
        out.mkdir()
        db.write_bytes(b"")
    elif damage == "truncated":
        run_study(write_spec(tmp_path), out, progress=False)
        data = db.read_bytes()
        db.write_bytes(data[: len(data) // 3])
    else:
        out.mkdir()
        conn = sqlite3.connect(db)
        conn.execute("CREATE TABLE other (x)")
        conn.commit()
        conn.close()
    before = digest(db)
    for argv in (["study", "run", str(write_spec(tmp_path)), "--out", str(out)], ["results", str(out)],
                 ["report", str(out)], ["study", "status", str(out)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "is corrupted or not a prunelab store" in err, err
    assert digest(db) == before
    assert not (out / "report").exists()


def test_claims_are_exclusive_and_stale_claims_are_taken_over(tmp_path):
    spec = parse_spec(SPEC.format(name="t", seeds=1))
    _, out, store = prepare_study(spec, tmp_path / "s")
    other = ResultsStore.open(out)
    try:
        alive = worker_id()
        a = store.claim_next(alive, lease=60)
        b = other.claim_next(alive, lease=60)
        assert a.run.run_id != b.run.run_id  # a live claim is never handed out twice
        # a claim by a process that no longer exists is taken over at once
        store.conn.execute("UPDATE runs SET worker = ? WHERE run_id = ?", (f"{worker_id().split(':')[0]}:999999999",
                                                                            a.run.run_id))
        c = other.claim_next("elsewhere:1", lease=60)
        assert c.run.run_id == a.run.run_id and c.attempt == 2
        # the first holder lost the claim: its result is discarded, nothing is written
        outcome = {"ok": True, "output": {"metrics": {"acc": 0.5}, "curves": [{"epoch": 1}], "layers": []}}
        assert store.finish(a, outcome) is False
        assert store.query("SELECT status, metrics FROM runs WHERE run_id = ?", (a.run.run_id,)) == [("running", None)]
        assert store.query("SELECT COUNT(*) FROM curves") == [(0,)]
        assert other.finish(c, outcome) is True
        assert store.query("SELECT status, acc FROM runs WHERE run_id = ?", (a.run.run_id,)) == [("done", 0.5)]
        # a worker on another host that stopped heart-beating is taken over only after the lease
        store.conn.execute("UPDATE runs SET worker = 'far-away:1', heartbeat = ? WHERE run_id = ?",
                           (time.time() - 30, b.run.run_id))
        taken = []
        while (claim := other.claim_next("elsewhere:2", lease=60)) is not None:
            taken.append(claim.run.run_id)
        assert len(taken) == 2 and b.run.run_id not in taken
        late = other.claim_next("elsewhere:2", lease=10)
        assert late.run.run_id == b.run.run_id and late.attempt == 2
    finally:
        store.close()
        other.close()


def test_artifact_is_built_once_under_concurrency_and_not_kept_on_failure(tmp_path):
    calls = []

    def produce(folder: Path) -> None:
        calls.append(threading.get_ident())
        time.sleep(0.2)
        (folder / "value.txt").write_text("42")

    results = []
    threads = [threading.Thread(target=lambda: results.append(build_artifact(tmp_path, {"k": 1}, produce)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(set(results)) == 1
    assert (results[0] / "value.txt").read_text() == "42"
    assert json.loads((results[0] / "key.json").read_text()) == {"k": 1}

    def broken(folder: Path) -> None:
        (folder / "half.txt").write_text("x")
        raise RuntimeError("producer failed")

    with pytest.raises(RuntimeError):
        build_artifact(tmp_path, {"k": 2}, broken)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [results[0].name]
    again = build_artifact(tmp_path, {"k": 2}, produce)
    assert (again / "value.txt").read_text() == "42" and len(calls) == 2
