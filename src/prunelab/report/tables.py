"""Result tables shaped like the seed papers' tables (method, params, sparsity, FLOPs pruned, top-1 mean ± std).

Sparsity is the fraction of conv/linear weights zeroed by masks (unstructured pruning); a structured or
reduced architecture has no zeroed weights, so its size reduction is given as the parameters removed
(1 - parameters / dense parameters). A reduction below zero (a cost that grew) is marked "(grew)".
Compression is dense / remaining parameters and Speed-up dense / remaining MACs, the two ratios
Blalock et al. (2020) ask every pruning result to give."""

from __future__ import annotations

import math

import pandas as pd

from prunelab.report.aggregate import batch_latency_columns, batch_of
from prunelab.report.document import Table


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def fmt_count(v) -> str:
    """2.33M, 46.0k, 812."""
    if _missing(v):
        return "-"
    v = float(v)
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.3g}{suffix}" if v / div < 100 else f"{v / div:.0f}{suffix}"
    return f"{v:.0f}"


def fmt_pct(v, digits: int = 1) -> str:
    return "-" if _missing(v) else f"{100 * float(v):.{digits}f}%"


def fmt_mean_std(mean, std, scale: float = 1.0, digits: int = 2) -> str:
    if _missing(mean):
        return "-"
    text = f"{scale * float(mean):.{digits}f}"
    return text if _missing(std) else f"{text} ± {scale * float(std):.{digits}f}"


def fmt_ratio(v) -> str:
    return "-" if _missing(v) else f"{float(v):.2f}x"


def fmt_grown(v) -> str:
    """A reduction as a percentage, flagged when it is negative: the cost grew instead."""
    if _missing(v):
        return "-"
    return fmt_pct(v) + (" (grew)" if float(v) < -1e-9 else "")


def results_table(summary: pd.DataFrame, model: str) -> Table:
    """One model's rows: dense / no-target rows first, then by target value, methods in study order.

    Measured latency gets one column per batch size when the runs stored them (``latency_ms_b<N>``),
    else the single ``latency_ms`` column."""
    rows = summary[summary["model"] == model].copy()
    rows["_order"] = range(len(rows))
    rows["_tv"] = pd.to_numeric(rows["target_value"], errors="coerce")
    rows = rows.sort_values(["target_key", "_tv", "_order"], na_position="first", kind="stable")
    latencies = batch_latency_columns(c[:-len("_mean")] for c in summary.columns if c.endswith("_mean")) \
        or ["latency_ms"]
    latency_cols = [f"Latency b{batch_of(m)} (ms)" if batch_of(m) is not None else "Latency (ms)" for m in latencies]
    cols = ["Method", "Protocol", "Target", "Top-1 (%)", "Params", "Sparsity", "Params removed", "Compression",
            "MACs", "FLOPs pruned", "Speed-up", *latency_cols, "Seeds"]
    out = []
    for _, r in rows.iterrows():
        kind = r.get("sparsity_kind")
        architecture = kind == "architecture"
        removed = None if _missing(r.get("params_mean")) or _missing(r.get("base_params_mean")) or \
            r.get("kind_role") == "dense" else 1.0 - r["params_mean"] / r["base_params_mean"]
        out.append([
            str(r["method"]), r["protocol"] or "-", str(r["target"]),
            fmt_mean_std(r.get("acc_mean"), r.get("acc_std"), 100.0),
            fmt_count(r.get("params_mean")), "-" if architecture else fmt_pct(r.get("sparsity_mean"), 2),
            fmt_grown(removed), fmt_ratio(r.get("compression")), fmt_count(r.get("macs_mean")),
            fmt_grown(r.get("macs_pruned")), fmt_ratio(r.get("speedup")),
            *[fmt_mean_std(r.get(f"{m}_mean"), r.get(f"{m}_std"), 1.0, 3) for m in latencies], str(int(r["n"])),
        ])
    keep = [i for i, _ in enumerate(cols) if i < 4 or any(row[i] != "-" for row in out)]
    return Table([cols[i] for i in keep], [[row[i] for i in keep] for row in out],
                 caption=f"{model}: top-1 mean ± std over seeds")
