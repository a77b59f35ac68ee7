"""A study's runs in an experiment tracker: ``prunelab results STUDY --to mlflow``, and ``tracker:``
in a spec (or ``study run --tracker``), which exports every finished run when the study run ends.

Everything comes from the results store (the runs' resolved configurations, curves and metrics), so
an old study exports as well as a new one, and exporting again replaces the runs it exported before.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from prunelab.study.run import RunConfig
from prunelab.study.store import ResultsStore


def default_tracking_dir(store_path: Path, tracker: str) -> Path:
    """``<study>/tracking/<tracker>``: beside the study's results, apart from its ``runs/`` artifacts."""
    return Path(store_path).parent / "tracking" / tracker


def export_study(study: str | os.PathLike, tracker: str, folder: str | os.PathLike | None = None) -> tuple[int, Path]:
    """Log every finished run of ``study`` to ``tracker`` under ``folder``; returns (runs, folder)."""
    from prunelab.track import check_tracker, log_run, open_tracker

    check_tracker(tracker)
    with ResultsStore.open(study) as store:
        name = str(store.meta.get("name") or "prunelab")
        rows = store.query("SELECT run_id, config, metrics FROM runs WHERE active = 1 AND status = 'done' "
                           "ORDER BY seq")
        curves: dict[str, list[dict[str, Any]]] = {}
        for run_id, data in store.query("SELECT c.run_id, c.data FROM curves c JOIN runs r ON r.run_id = c.run_id "
                                        "WHERE r.active = 1 AND r.status = 'done' ORDER BY r.seq, c.idx"):
            curves.setdefault(run_id, []).append(json.loads(data))
        path = store.path
    target = Path(folder) if folder is not None else default_tracking_dir(path, tracker)
    sink = open_tracker(tracker, target, experiment=name)
    try:
        for run_id, config, metrics in rows:
            cfg = json.loads(config)
            label = RunConfig.from_dict(cfg).label
            log_run(sink, f"{label}-{run_id[:8]}", cfg, curves.get(run_id, []), json.loads(metrics or "{}"),
                    tags={"prunelab.run_id": run_id, "prunelab.study": name, "prunelab.label": label})
    finally:
        sink.close()
    return len(rows), target
