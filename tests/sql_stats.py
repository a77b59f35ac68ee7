"""Per-series means and sample standard deviations straight from a study's SQLite store: the
reference that report tests compare plotted and tabulated values against (nothing from
prunelab.report is used)."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path


def _std(total_sq: float, mean: float, n: int) -> float:
    return math.sqrt(max(0.0, (total_sq - n * mean * mean) / (n - 1))) if n > 1 else math.nan


def sql_stats(db: Path, x: str, y: str = "acc", *, by_model: bool = True) -> dict[tuple, tuple]:
    """``(model, series label, target)`` (without ``model`` unless ``by_model``) -> ``(mean x, std x,
    mean y, std y, n)`` over the done runs; ``x`` and ``y`` are SQL expressions over a run row, and a
    series label is ``method`` or ``method / protocol``."""
    keys = "model, method, protocol, target" if by_model else "method, protocol, target"
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(f"SELECT {keys}, COUNT(*), AVG({x}), SUM(({x}) * ({x})), AVG({y}), SUM(({y}) * ({y})) "
                            f"FROM runs WHERE status = 'done' GROUP BY {keys}").fetchall()
    finally:
        conn.close()
    out = {}
    for *key, n, mx, sx, my, sy in rows:
        *model, method, protocol, target = key
        label = method if protocol is None else f"{method} / {protocol}"
        out[(*model, label, target)] = (mx, _std(sx, mx, n), my, _std(sy, my, n), n)
    return out


def sql_paired(db: Path, model: str, a: tuple[str, str | None], b: tuple[str, str | None], targets: list[str],
               expr: str = "100.0 * (a.acc - b.acc)") -> dict[int, float]:
    """``seed -> mean over targets of expr`` for the runs of arms ``a`` and ``b`` (method, protocol) of
    ``model`` paired by target and seed; only seeds with every target done for both arms (a claim's
    per-seed differences, computed in SQL alone)."""
    marks = ", ".join("?" for _ in targets)
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            f"SELECT a.seed, AVG({expr}), COUNT(*) FROM runs a JOIN runs b ON a.model = b.model AND "
            f"a.target = b.target AND a.seed = b.seed WHERE a.status = 'done' AND b.status = 'done' AND "
            f"a.model = ? AND a.method = ? AND a.protocol IS ? AND b.method = ? AND b.protocol IS ? AND "
            f"a.target IN ({marks}) GROUP BY a.seed HAVING COUNT(*) = ? ORDER BY a.seed",
            (model, *a, *b, *targets, len(targets))).fetchall()
    finally:
        conn.close()
    return {int(seed): float(mean) for seed, mean, _ in rows}
