"""Seed statistics: runs of one (model, method, protocol, target) summarised as mean and std.

The standard deviation is the sample standard deviation over seeds (``ddof=1``; undefined, shown
as ``-``, for a single seed), as in the "mean ± std over runs" tables of the seed papers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np
import pandas as pd

GROUP = ["model", "method", "protocol", "target", "target_key", "target_value"]
MEASURES = ["acc", "loss", "params", "macs", "sparsity", "density", "latency_ms", "base_params", "base_macs"]
BATCH_LATENCY = re.compile(r"^latency_ms_b(\d+)$")
#: text facts carried from the runs to their summary row (the distinct values, joined)
LABELS = ["sparsity_kind", "kind_role"]


def batch_latency_columns(columns: Iterable[str]) -> list[str]:
    """The per-batch-size latency measures among ``columns`` (``latency_ms_b<N>``, what a study stores
    for each of its ``measure.batch_sizes``), in increasing batch size."""
    found = [(int(m.group(1)), c) for c in columns if (m := BATCH_LATENCY.match(str(c)))]
    return [c for _, c in sorted(found)]


def batch_of(measure: str) -> int | None:
    """The batch size of a ``latency_ms_b<N>`` measure (None for any other measure)."""
    m = BATCH_LATENCY.match(measure)
    return int(m.group(1)) if m else None


def series_label(method: str, protocol: str | None) -> str:
    """How plots and tables name a curve: the method, and its protocol when it has one."""
    return method if protocol in (None, "") or pd.isna(protocol) else f"{method} / {protocol}"


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """Done runs grouped by :data:`GROUP`: ``n``, ``<m>_mean`` / ``<m>_std`` for each measure present,
    and the ratios the reporting standard asks for: ``compression`` (base params / params),
    ``macs_pruned`` (1 - MACs / base MACs) and ``speedup`` (base MACs / MACs), from the means, and
    ``density`` (1 - sparsity) beside ``sparsity``.
    Measured latencies per batch size (``latency_ms_b<N>``) are summarised like the other measures."""
    done = results[results["status"] == "done"].copy()
    if "sparsity" in done.columns:  # the fraction of conv/linear weights kept, for log-scale sparsity axes
        done["density"] = 1.0 - pd.to_numeric(done["sparsity"], errors="coerce")
    measures = [m for m in MEASURES if m in done.columns] + batch_latency_columns(done.columns)
    for m in measures:
        done[m] = pd.to_numeric(done[m], errors="coerce")
    rows = []
    for key, group in done.groupby(GROUP, dropna=False, sort=False):
        row = dict(zip(GROUP, key))
        row["n"] = len(group)
        row["seeds"] = sorted(int(s) for s in group["seed"])
        for m in measures:
            values = group[m].dropna().to_numpy(dtype=float)
            row[f"{m}_mean"] = float(values.mean()) if len(values) else np.nan
            row[f"{m}_std"] = float(values.std(ddof=1)) if len(values) > 1 else np.nan
        for c in LABELS:
            if c in group.columns:
                row[c] = ", ".join(dict.fromkeys(str(v) for v in group[c].dropna())) or None
        rows.append(row)
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    for col in GROUP:
        out[col] = out[col].astype(object).where(out[col].notna(), None)
    out["label"] = [series_label(m, p) for m, p in zip(out["method"], out["protocol"])]
    if {"base_params_mean", "params_mean"} <= set(out.columns):
        out["compression"] = out["base_params_mean"] / out["params_mean"]
    if {"base_macs_mean", "macs_mean"} <= set(out.columns):
        out["macs_pruned"] = 1.0 - out["macs_mean"] / out["base_macs_mean"]
        out["speedup"] = out["base_macs_mean"] / out["macs_mean"]
    return out


def layer_sparsity(layers: pd.DataFrame) -> pd.DataFrame:
    """Per-layer sparsity of every done run: the row's ``sparsity`` if given, else 1 - nonzero / weight_numel."""
    if layers.empty:
        return layers.assign(layer_sparsity=pd.Series(dtype=float))
    df = layers.copy()
    if "sparsity" in df.columns:
        computed = df["sparsity"]
    else:
        computed = pd.Series(np.nan, index=df.index)
    if {"nonzero", "weight_numel"} <= set(df.columns):
        ratio = 1.0 - pd.to_numeric(df["nonzero"], errors="coerce") / pd.to_numeric(df["weight_numel"],
                                                                                     errors="coerce")
        computed = pd.to_numeric(computed, errors="coerce").fillna(ratio)
    df["layer_sparsity"] = pd.to_numeric(computed, errors="coerce")
    return df


def sparsest_target_layers(layers: pd.DataFrame) -> pd.DataFrame:
    """Per-layer means of each model x method / protocol at its sparsest target (the target with the
    highest mean layer sparsity): columns ``model``, ``label``, ``target``, ``idx``, ``name``,
    ``mean`` / ``std`` / ``count`` of the layer sparsity, and the mean ``nonzero`` / ``weight_numel``."""
    cols = ["model", "label", "target", "idx", "name", "mean", "std", "count", "nonzero", "weight_numel"]
    if layers.empty or "layer_sparsity" not in layers.columns or layers["layer_sparsity"].isna().all():
        return pd.DataFrame(columns=cols)
    df = layers[layers["layer_sparsity"].notna()].copy()
    df["label"] = [series_label(m, p) for m, p in zip(df["method"], df["protocol"])]
    for c in ("nonzero", "weight_numel"):
        df[c] = pd.to_numeric(df[c], errors="coerce") if c in df.columns else np.nan
    out = []
    for model in dict.fromkeys(df["model"]):
        for label in dict.fromkeys(df[df["model"] == model]["label"]):
            part = df[(df["model"] == model) & (df["label"] == label)]
            by_target = part.groupby("target", dropna=False, sort=False)["layer_sparsity"].mean()
            target = by_target.idxmax()
            chosen = part[part["target"] == target] if target is not None and not pd.isna(target) else \
                part[part["target"].isna()]
            agg = chosen.groupby(["idx", "name"], sort=True).agg(
                mean=("layer_sparsity", "mean"), std=("layer_sparsity", "std"), count=("layer_sparsity", "count"),
                nonzero=("nonzero", "mean"), weight_numel=("weight_numel", "mean")).reset_index()
            agg.insert(0, "target", target)
            agg.insert(0, "label", label)
            agg.insert(0, "model", model)
            out.append(agg)
    return pd.concat(out, ignore_index=True)[cols] if out else pd.DataFrame(columns=cols)
