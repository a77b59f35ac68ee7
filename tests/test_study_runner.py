"""The runner: kill-and-resume with SIGKILL, two runners on one store, failures, SIGTERM, dense runs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prunelab.study import load_results, run_study, study_status
from prunelab.study.tasks import RunOutput, register

SPEC = """
name: resume
data: digits
models: [a, b]
methods:
  - {{name: s, kind: sleep, seconds: {seconds}, epochs: 2, log: true{extra}}}
targets: [{{sparsity: [0.5, 0.9{more}]}}]
seeds: 2
"""


def write_spec(tmp_path: Path, seconds: float, extra: str = "", more: str = "") -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC.format(seconds=seconds, extra=extra, more=more))
    return path


def launch(spec: Path, out: Path, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "prunelab", "study", "run", str(spec), "--out", str(out), "--quiet",
                             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)


def rows(db: Path, sql: str) -> list[tuple]:
    if not db.exists():
        return []
    conn = sqlite3.connect(db, timeout=30)
    try:
        return conn.execute(sql).fetchall()
    except sqlite3.OperationalError:  # tables not there yet
        return []
    finally:
        conn.close()


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    """Poll ``predicate`` until true; fail with the runner's stderr if it exits first or time runs out."""
    deadline = time.time() + timeout
    while not predicate():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise AssertionError(f"runner exited ({proc.returncode}) or timed out: {proc.communicate()[1]}")
        time.sleep(0.05)


def done_rows(db: Path) -> dict[str, tuple]:
    return {r[0]: r[1:] for r in rows(db, "SELECT run_id, finished, attempt, metrics FROM runs WHERE status = 'done'")}


def test_sigkill_at_any_moment_then_resume_matches_an_uninterrupted_run(tmp_path):
    spec = write_spec(tmp_path, 0.3, more=", 0.7")  # 12 runs
    out = tmp_path / "killed"
    db = out / "results.db"

    early = launch(spec, out)  # killed while starting up (importing, maybe creating the store)
    time.sleep(1.0)
    early.send_signal(signal.SIGKILL)
    early.wait()

    seen: dict[str, tuple] = {}
    for args, kill_after in ((["--workers", "2"], 2), ([], 2)):
        proc = launch(spec, out, *args)
        start = len(seen)
        try:
            wait_for(lambda s=start, k=kill_after: len(done_rows(db)) >= s + k, proc)
        finally:
            proc.send_signal(signal.SIGKILL)  # the runner only: its pool workers must not outlive it
            proc.wait()
        now = done_rows(db)
        assert all(now[r] == v for r, v in seen.items())  # a done run is never touched again
        assert len(now) < 12  # killed mid-study
        seen = now

    result = run_study(spec, out, progress=False)
    assert result.counts == {"pending": 0, "running": 0, "done": 12, "failed": 0}
    final = done_rows(db)
    assert all(final[r] == v for r, v in seen.items())
    assert rows(db, "PRAGMA integrity_check") == [("ok",)]
    assert rows(db, "SELECT COUNT(*), COUNT(DISTINCT run_id) FROM curves") == [(24, 12)]

    reference = run_study(spec, tmp_path / "uninterrupted", progress=False)
    assert reference.executed == 12
    ref = load_results(tmp_path / "uninterrupted").set_index("run_id")
    got = load_results(out).set_index("run_id")
    assert sorted(ref.index) == sorted(got.index)
    for col in ("acc", "loss", "params", "macs", "sparsity"):
        assert got.loc[ref.index, col].tolist() == ref[col].tolist()


def test_two_runners_on_one_store_never_run_a_run_twice(tmp_path):
    spec = write_spec(tmp_path, 0.15, extra=", artifact: true", more=", 0.7")
    out = tmp_path / "shared"
    procs = [launch(spec, out), launch(spec, out)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    db = out / "results.db"
    assert rows(db, "SELECT status, COUNT(*), MAX(attempt) FROM runs GROUP BY status") == [("done", 12, 1)]
    executions = (out / "executions.log").read_text().split("\n")[:-1]
    run_ids = [line.split()[0] for line in executions]
    assert len(run_ids) == 12 and len(set(run_ids)) == 12  # each run executed exactly once
    producers = (out / "artifacts.log").read_text().split("\n")[:-1]
    assert sorted(p.rsplit(" ", 1)[0] for p in producers) == ["a 0", "a 1", "b 0", "b 1"]  # shared product built once
    assert rows(db, "PRAGMA integrity_check") == [("ok",)]
    workers = {w for (w,) in rows(db, "SELECT DISTINCT worker FROM runs")}
    assert workers <= {f"{os.uname().nodename}:{p.pid}" for p in procs}


def test_failed_runs_are_recorded_and_retried_on_the_next_run(tmp_path):
    spec = write_spec(tmp_path, 0.0, extra=", fail: [1]")
    out = tmp_path / "failing"
    first = run_study(spec, out, progress=False)
    assert first.counts["done"] == 4 and first.counts["failed"] == 4 and not first.ok
    assert all("synthetic failure requested for seed 1" in err for _, err in first.failures)
    status = study_status(out)
    assert len(status["failed"]) == 4 and status["failed"][0]["error"].startswith("RuntimeError: synthetic failure")
    second = run_study(spec, out, progress=False)
    assert second.executed == 4
    assert {a for (a,) in rows(out / "results.db", "SELECT attempt FROM runs WHERE status = 'failed'")} == {2}
    assert run_study(spec, out, progress=False, retry_failed=False).executed == 0


def test_sigterm_gives_claims_back(tmp_path):
    spec = write_spec(tmp_path, 4.0)
    out = tmp_path / "term"
    db = out / "results.db"
    proc = launch(spec, out)
    try:
        wait_for(lambda: rows(db, "SELECT COUNT(*) FROM runs WHERE status = 'running'") == [(1,)], proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert rows(db, "SELECT status, COUNT(*) FROM runs GROUP BY status") == [("pending", 8)]


@register("test-reuses-dense", protocols=("finetune",), targets=("sparsity",))
def _reuses_dense(run, ctx):
    """Stands in for a pruning adapter: starts from the shared dense model."""
    from prunelab.study.common import dense_model

    trained = dense_model(ctx, run)
    return RunOutput(metrics={"acc": trained.final["test_acc"], "dense_checkpoint": str(trained.checkpoint)})


def test_dense_runs_train_a_zoo_model_once_and_share_it(tmp_path):
    import torch

    from prunelab.models import create

    torch.set_num_threads(1)
    spec = tmp_path / "dense.yaml"
    spec.write_text("""
name: dense
data: digits
train: {epochs: 2, max_steps: 6, batch_size: 32, device: cpu}
models: [mlp]
methods: [dense, {name: reuse, kind: test-reuses-dense}]
targets: [{sparsity: 0.5}]
seeds: [3]
""")
    out = tmp_path / "out"
    result = run_study(spec, out, progress=False)
    assert result.counts["done"] == 2, result.failures
    df = load_results(out).set_index("method")
    expected_params = sum(p.numel() for p in create("mlp").parameters())
    assert df.loc["dense", "params"] == expected_params == df.loc["dense", "base_params"]
    assert df.loc["dense", "sparsity"] == pytest.approx(0.0, abs=1e-6)
    assert 0.0 <= df.loc["dense", "acc"] <= 1.0 and df.loc["dense", "acc"] == df.loc["reuse", "acc"]
    artifacts = [p for p in (out / "artifacts").iterdir() if not p.name.startswith(".")]
    assert len(artifacts) == 1  # trained once, used by both runs
    assert df.loc["reuse", "dense_checkpoint"] == str(artifacts[0] / "model.pt")
    curves = rows(out / "results.db", "SELECT data FROM curves c JOIN runs r USING (run_id) WHERE r.method = 'dense'")
    history = json.loads((artifacts[0] / "history.json").read_text())["history"]
    assert [json.loads(d) for (d,) in curves] == history
    layers = rows(out / "results.db", "SELECT name FROM layers ORDER BY idx")
    assert [n for (n,) in layers] == [n for n, m in create("mlp").named_modules() if isinstance(m, torch.nn.Linear)]


REPEAT_SPEC = """
name: repeat
data: digits
train: {epochs: 1, max_steps: 8, batch_size: 32, lr: 0.05, device: cpu}
models: [cnn]
methods: [dense, {name: gmp, kind: global-magnitude, targets: [{sparsity: 0.8}]}]
seeds: [0, 1]
"""


def test_numbers_do_not_depend_on_the_number_of_workers(tmp_path, capsys):
    """Each run uses one torch thread unless told otherwise, so one worker and two give the same numbers."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(REPEAT_SPEC)
    one = run_study(spec, tmp_path / "one", progress=False)
    two = run_study(spec, tmp_path / "two", workers=2, progress=False)
    assert one.counts["done"] == two.counts["done"] == 4
    cols = ["model", "method", "seed", "acc", "loss", "params", "sparsity"]
    a = load_results(tmp_path / "one").sort_values(["method", "seed"])[cols].reset_index(drop=True)
    b = load_results(tmp_path / "two").sort_values(["method", "seed"])[cols].reset_index(drop=True)
    assert a.equals(b), (a, b)
    envs = rows(tmp_path / "two" / "results.db", "SELECT env FROM runs")
    assert {json.loads(e)["torch_threads"] for (e,) in envs} == {1}
    # resuming with another thread count says that finished runs used another one
    spec.write_text(REPEAT_SPEC.replace("seeds: [0, 1]", "seeds: [0, 1, 2]"))
    capsys.readouterr()
    run_study(spec, tmp_path / "one", update=True, threads=2, progress=False)
    assert "finished runs used other thread counts (4 with 1); this runner uses 2" in capsys.readouterr().err


def test_a_sigterm_swallowed_by_an_import_still_stops_the_runner():
    """numpy.random's Cython modules, imported lazily by the first run, can swallow the exception
    the SIGTERM handler raises; the flag it sets stops the runner at the next check."""
    from prunelab.study import runner

    runner._terminating.clear()
    with contextlib.suppress(BaseException):
        runner._on_sigterm(signal.SIGTERM, None)  # the exception is lost, as inside an extension's init
    with pytest.raises(runner._Terminated):
        runner._check_terminated()
    runner._terminating.clear()
