"""Reading a study's results back as pandas DataFrames."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

from prunelab.errors import require
from prunelab.study.store import ResultsStore

if TYPE_CHECKING:
    import pandas as pd


def _pandas():
    return require("pandas", "study results as tables", "report")

RUN_COLUMNS = ["run_id", "model", "method", "kind", "protocol", "target", "target_key", "target_value", "seed",
               "status", "acc", "loss", "params", "macs", "sparsity", "latency_ms", "duration", "attempt",
               "started", "finished", "worker", "error"]


def load_results(study: str | os.PathLike, *, all_runs: bool = False, status: str | None = None,
                 metrics: bool = True) -> pd.DataFrame:
    """One row per run of the study (a folder, its ``results.db``, or the spec YAML).

    Columns: :data:`RUN_COLUMNS`, then every other metric a run reported (``metrics=True``), then
    ``config`` (the resolved run configuration as a dict). ``all_runs`` includes runs that are no longer
    in the spec (after ``--update``); ``status`` keeps one status (e.g. ``"done"``).
    """
    with ResultsStore.open(study) as store:
        where, params = ["1 = 1"], []
        if not all_runs:
            where.append("active = 1")
        if status is not None:
            where.append("status = ?")
            params.append(status)
        rows = store.query(f"SELECT {', '.join(RUN_COLUMNS)}, metrics, config FROM runs "
                           f"WHERE {' AND '.join(where)} ORDER BY seq", params)
    records = []
    extra: list[str] = []
    for row in rows:
        rec = dict(zip(RUN_COLUMNS, row[:len(RUN_COLUMNS)]))
        if metrics and row[-2]:
            for key, value in json.loads(row[-2]).items():
                if key not in rec and isinstance(value, int | float | str | bool | type(None)):
                    rec[key] = value
                    if key not in extra:
                        extra.append(key)
        rec["config"] = json.loads(row[-1])
        records.append(rec)
    return _pandas().DataFrame.from_records(records, columns=RUN_COLUMNS + extra + ["config"])


def load_curves(study: str | os.PathLike) -> pd.DataFrame:
    """Per-epoch rows of every done run: ``run_id``, ``model``, ``method``, ``protocol``, ``target``,
    ``seed``, then the curve's own columns."""
    return _long(study, "curves")


def load_layers(study: str | os.PathLike) -> pd.DataFrame:
    """Per-layer rows of every done run, with the run's grouping columns."""
    return _long(study, "layers")


def _long(study: str | os.PathLike, table: str) -> pd.DataFrame:
    keys = ["run_id", "model", "method", "protocol", "target", "target_key", "target_value", "seed"]
    with ResultsStore.open(study) as store:
        rows = store.query(f"SELECT {', '.join('r.' + k for k in keys)}, t.idx, t.data FROM {table} t "
                           f"JOIN runs r ON r.run_id = t.run_id WHERE r.active = 1 AND r.status = 'done' "
                           f"ORDER BY r.seq, t.idx")
    records = []
    for row in rows:
        rec = dict(zip(keys, row[:len(keys)]))
        rec["idx"] = row[len(keys)]
        for k, v in json.loads(row[-1]).items():
            rec.setdefault(k, v)
        records.append(rec)
    pd = _pandas()
    return pd.DataFrame.from_records(records) if records else pd.DataFrame(columns=keys + ["idx"])
