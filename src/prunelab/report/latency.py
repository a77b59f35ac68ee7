"""The latency plot of Crowley et al. (2018, sec. 5): latency vs parameters, accuracy vs latency.

Rows come from :func:`prunelab.measure.latency.compare_latency` or from a study's results table.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from prunelab.errors import PrunelabError


def plot_latency(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, *, batch_size: int | None = None,
                 title: str | None = None) -> str:
    """Write latency vs parameters and accuracy vs latency (two panels) for latency rows.

    One series per ``group`` (e.g. "reduced" and "pruned"), points sorted by parameter count; the
    accuracy panel is left out when no row has an accuracy. Rows of a study's results table work
    too: ``latency_ms`` stands in for ``median_ms`` and a missing ``batch_size`` means batch 1.
    Returns the path written (atomically).
    """
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from prunelab.io import atomic_write_bytes

    def latency(r: Mapping[str, Any]) -> float | None:
        value = r.get("median_ms", r.get("latency_ms"))
        return None if value is None or value != value else float(value)

    rows = [{**r, "median_ms": latency(r), "batch_size": int(r.get("batch_size") or 1)} for r in rows]
    rows = [r for r in rows if r["median_ms"] is not None and r.get("params") is not None]
    if batch_size is None and rows:
        batch_size = min(r["batch_size"] for r in rows)
    chosen = [r for r in rows if r["batch_size"] == batch_size]
    if not chosen:
        raise PrunelabError(f"no latency rows at batch size {batch_size} to plot")
    with_acc = [r for r in chosen if r.get("acc") is not None and r["acc"] == r["acc"]]
    panels = 2 if with_acc else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4), squeeze=False)
    groups = sorted({str(r.get("group") or "models") for r in chosen})
    for group in groups:
        series = sorted((r for r in chosen if str(r.get("group") or "models") == group), key=lambda r: r["params"])
        axes[0][0].plot([r["params"] for r in series], [r["median_ms"] for r in series], "o-", label=group)
        if with_acc:
            pts = sorted((r for r in series if r.get("acc") is not None and r["acc"] == r["acc"]),
                         key=lambda r: r["median_ms"])
            axes[0][1].plot([r["median_ms"] for r in pts], [r["acc"] for r in pts], "o-", label=group)
    device = chosen[0].get("device") or "this device"
    threads = chosen[0].get("threads")
    axes[0][0].set_xlabel("parameters")
    axes[0][0].set_ylabel(f"median latency (ms), batch {batch_size}")
    axes[0][0].set_title(f"latency vs parameters ({device}" + (f", {threads} threads)" if threads else ")"))
    axes[0][0].legend()
    if with_acc:
        axes[0][1].set_xlabel(f"median latency (ms), batch {batch_size}")
        axes[0][1].set_ylabel("accuracy")
        axes[0][1].set_title("accuracy vs latency")
        axes[0][1].legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    suffix = os.fspath(path).rsplit(".", 1)[-1].lower()
    fig.savefig(buf, format=suffix if suffix in ("png", "pdf", "svg") else "png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return os.fspath(path)
