"""A study store written by the released prunelab (0.1.0, before the unified pipeline and config
schema) keeps its run ids: the current code expands the same spec to exactly the stored runs, and
resuming the store finds every run done (nothing re-runs, nothing is added).

``tests/fixtures/release-store`` holds that store's ``results.db`` and the spec it ran (12 runs over
the unstructured, structured and reduced kinds, on digits); its artifacts (checkpoints) were left out,
which a finished run does not need.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from prunelab.study import run_study
from prunelab.study.spec import load_spec

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "release-store"


def _stored() -> dict[str, str]:
    with sqlite3.connect(f"file:{FIXTURE / 'results.db'}?mode=ro&immutable=1", uri=True) as c:
        return dict(c.execute("SELECT run_id, status FROM runs").fetchall())


def test_fixture_is_a_finished_release_store():
    stored = _stored()
    assert len(stored) == 12
    assert set(stored.values()) == {"done"}


def test_current_code_expands_the_stored_run_ids():
    runs = load_spec(FIXTURE / "spec.yaml").expand()
    assert sorted(r.run_id for r in runs) == sorted(_stored())


def test_resuming_the_release_store_runs_nothing(tmp_path):
    study = tmp_path / "study"
    study.mkdir()
    shutil.copy(FIXTURE / "results.db", study / "results.db")
    result = run_study(FIXTURE / "spec.yaml", study, progress=False)
    assert result.executed == 0
    assert result.counts["done"] == 12 and result.counts["pending"] == 0
    with sqlite3.connect(study / "results.db") as c:
        ids = {r for (r,) in c.execute("SELECT run_id FROM runs")}
    assert ids == set(_stored())
