"""Plots of a study, drawn with matplotlib (Agg) from the store's numbers only.

Every plotting function returns a :class:`Figure` holding exactly the arrays it handed to matplotlib,
so tests (and users) can check a picture against the store.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from prunelab.errors import unknown_choice
from prunelab.io import atomic_write
from prunelab.report.aggregate import batch_latency_columns, batch_of, sparsest_target_layers

AXES = {
    "params": ("parameters", "params"),
    "macs": ("MACs (batch 1)", "macs"),
    "sparsity": ("sparsity (conv/linear weights zeroed, or absent from a smaller architecture)", "sparsity"),
    "density": ("sparsity (log scale of the density 1 - sparsity)", "density"),
    "latency_ms": ("measured latency (ms)", "latency_ms"),
}
#: densities (1 - sparsity) that get a tick on a density axis, labelled by their sparsity
DENSITY_TICKS = (2.0, 1.5, 1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001, 0.0005, 0.0002, 0.0001)


@dataclass
class Series:
    """One curve: points in plotting order, with seed standard deviations (NaN where one seed)."""

    model: str
    label: str
    x: list[float]
    y: list[float]
    x_std: list[float] = field(default_factory=list)
    y_std: list[float] = field(default_factory=list)
    n: list[int] = field(default_factory=list)
    points: list[str] = field(default_factory=list)  # what each point is: a target, or a layer name


@dataclass
class Figure:
    """A written PNG and the data drawn in it (one panel per model)."""

    name: str
    path: Path
    title: str
    xlabel: str
    ylabel: str
    series: list[Series]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> None:
    """Write ``fig`` as a PNG atomically: a killed or failed report never leaves a partial picture. The
    bounding box takes in everything drawn, legends placed outside the axes included."""
    try:
        atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=110, bbox_inches="tight"), binary=True)
    finally:
        plt.close(fig)


def _wrap(text: str, width: int) -> str:
    """A title broken into lines of at most ``width`` characters, so no title is cut at the figure's edge."""
    import textwrap

    return "\n".join(textwrap.wrap(text, width)) or text


def _legend_below(ax, n_items: int) -> None:
    """The legend under the axes (outside the plotting area, so it never covers data)."""
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.19), ncol=2 if n_items > 3 else 1,
              frameon=False)


def _density_axis(ax, xs: list[float]) -> None:
    """A log axis of the density 1 - sparsity, reversed so sparsity grows to the right, ticks labelled by
    their sparsity: 90%, 95%, 98% and 99% are evenly spread instead of piled against the edge."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ax.set_xscale("log")
    lo, hi = min(xs), max(xs)
    ax.set_xlim(hi * 1.3, lo / 1.3)
    ticks = [d for d in DENSITY_TICKS if lo / 1.3 <= d <= hi * 1.3] or [lo, hi]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda d, _: f"{100 * (1 - d):.4g}%"))


def _nan_to_zero(values: list[float]) -> list[float]:
    return [0.0 if (v is None or math.isnan(v)) else v for v in values]


def axis_label(measure: str) -> str:
    """The axis label of a plotted measure: one of :data:`AXES` or a per-batch latency ``latency_ms_b<N>``."""
    if measure in AXES:
        return AXES[measure][0]
    batch = batch_of(measure)
    if batch is None:
        raise unknown_choice("plot axis", measure, [*AXES, "latency_ms_b<N>"])
    return f"measured latency at batch {batch} (ms)"


def latency_measures(summary: pd.DataFrame) -> list[str]:
    """The latencies a study measured, to plot: one ``latency_ms_b<N>`` per stored batch size, or the
    single ``latency_ms`` when runs stored no per-batch figure; empty when nothing was timed."""
    def present(measure: str) -> bool:
        return f"{measure}_mean" in summary.columns and bool(summary[f"{measure}_mean"].notna().any())

    per_batch = [m for m in batch_latency_columns(c[:-len("_mean")] for c in summary.columns if c.endswith("_mean"))
                 if present(m)]
    if per_batch:
        return per_batch
    return ["latency_ms"] if present("latency_ms") else []


def _series(summary: pd.DataFrame, x: str, y: str, y_scale: float = 1.0) -> list[Series]:
    """One :class:`Series` per model x method / protocol: the groups reporting both ``x`` and ``y``,
    means and seed standard deviations, sorted by ``x``."""
    xm, xs, ym, ys = f"{x}_mean", f"{x}_std", f"{y}_mean", f"{y}_std"
    if summary.empty or xm not in summary.columns or ym not in summary.columns:
        return []
    data = summary[summary[xm].notna() & summary[ym].notna()]
    series: list[Series] = []
    for model in dict.fromkeys(data["model"]):
        rows = data[data["model"] == model]
        for label in dict.fromkeys(rows["label"]):
            pts = rows[rows["label"] == label].sort_values(xm, kind="stable")
            series.append(Series(
                model=model, label=label, x=[float(v) for v in pts[xm]], y=[y_scale * float(v) for v in pts[ym]],
                x_std=[float(v) for v in pts[xs]] if xs in pts else [math.nan] * len(pts),
                y_std=[y_scale * float(v) for v in pts[ys]] if ys in pts else [math.nan] * len(pts),
                n=[int(v) for v in pts["n"]], points=[str(t) for t in pts["target"]]))
    return series


def _draw(series: list[Series], path: Path, xlabel: str, ylabel: str, title: str, log_x: bool,
          density: bool = False) -> None:
    """One panel per model, one curve per series with x and y error bars, the legend under each panel;
    written as a PNG. ``density``: x holds densities, drawn on a reversed log axis labelled by sparsity."""
    plt = _pyplot()
    models = list(dict.fromkeys(s.model for s in series))
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models):
        panel = [s for s in series if s.model == model]
        for s in panel:
            ax.errorbar(s.x, s.y, yerr=_nan_to_zero(s.y_std), xerr=_nan_to_zero(s.x_std), marker="o", markersize=4,
                        capsize=3, linewidth=1.2, linestyle="-" if len(s.x) > 1 else "none", label=s.label)
        xs = [v for s in panel for v in s.x if v > 0]
        if density and xs:
            _density_axis(ax, xs)
        elif log_x and xs and max(xs) / min(xs) > 20:
            ax.set_xscale("log")
        if not density and xs and max(xs) >= 1e4:  # counts: 20k, 1.5M rather than long digit strings
            from matplotlib.ticker import EngFormatter

            ax.xaxis.set_major_formatter(EngFormatter(sep=""))
        ax.set_title(_wrap(model, 45), fontsize=10)
        ax.set_xlabel(_wrap(xlabel, 55), fontsize=9)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        _legend_below(ax, len(panel))
    fig.suptitle(_wrap(f"{title} (mean ± std over seeds)", 50 * len(models)))
    fig.tight_layout()
    _save(plt, fig, path)


def tradeoff_figure(summary: pd.DataFrame, x: str, path: Path) -> Figure | None:
    """Top-1 accuracy (%) against ``x`` (params, macs, sparsity, density, latency_ms or a per-batch
    latency ``latency_ms_b<N>``), one curve per method / protocol, error bars = standard deviation over
    seeds. ``density`` (1 - sparsity) is drawn on a reversed log axis labelled by sparsity, where the
    high sparsities (90, 95, 98, 99%) are spread out. None when no run reports ``x``."""
    xlabel = axis_label(x)
    series = _series(summary, x, "acc", 100.0)
    if not series:
        return None
    title = f"accuracy vs {xlabel.split(' (')[0]}"
    _draw(series, path, xlabel, "top-1 accuracy (%)", title, log_x=x in ("params", "macs"), density=x == "density")
    return Figure(f"acc_vs_{x}", path, title, xlabel, "top-1 accuracy (%)", series)


def latency_figure(summary: pd.DataFrame, latency: str, path: Path) -> Figure | None:
    """Measured latency (``latency_ms`` or ``latency_ms_b<N>``, ms) against parameters, one curve per
    method / protocol, error bars = standard deviation over seeds: Crowley et al. (2018, sec. 5) compare
    reduced and pruned networks this way, at matched parameter counts. None when nothing was timed."""
    ylabel = axis_label(latency)
    series = _series(summary, "params", latency)
    if not series:
        return None
    title = f"{ylabel.split(' (')[0]} vs parameters"
    _draw(series, path, AXES["params"][0], ylabel, title, log_x=True)
    return Figure(f"{latency}_vs_params", path, title, AXES["params"][0], ylabel, series)


def layer_figure(layers: pd.DataFrame, summary: pd.DataFrame, path: Path) -> Figure | None:
    """Per-layer sparsity of each method / protocol at its sparsest target (mean over seeds): a layer at
    sparsity 1 has collapsed (no path through it is left; Tanaka et al. 2020, Gupta et al. 2022 sec. 3)."""
    table = sparsest_target_layers(layers)
    series: list[Series] = []
    for (model, label, target), part in table.groupby(["model", "label", "target"], sort=False, dropna=False):
        series.append(Series(model=model, label=f"{label} @ {target}", x=[float(i) for i in part["idx"]],
                             y=[float(v) for v in part["mean"]], y_std=[float(v) for v in part["std"]],
                             n=[int(v) for v in part["count"]], points=[str(name) for name in part["name"]]))
    if not series:
        return None
    plt = _pyplot()
    models = list(dict.fromkeys(s.model for s in series))
    fig, axes = plt.subplots(len(models), 1, figsize=(max(6.0, 0.28 * max(len(s.x) for s in series) + 3), 3.6
                                                      * len(models)), squeeze=False)
    for ax, model in zip(axes[:, 0], models):
        panel = [s for s in series if s.model == model]
        for s in panel:
            ax.errorbar(s.x, s.y, yerr=_nan_to_zero(s.y_std), marker="o", markersize=3, capsize=2, linewidth=1,
                        label=s.label)
        names = panel[0].points
        ax.set_xticks(panel[0].x)
        ax.set_xticklabels(names, rotation=90, fontsize=6)
        ax.axhline(1.0, color="red", linewidth=0.8, linestyle="--")
        ax.set_ylim(-0.02, 1.05)
        ax.set_ylabel("layer sparsity")
        ax.set_title(_wrap(f"{model}: per-layer sparsity at the sparsest target (red line: layer collapse)", 80),
                     fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    _save(plt, fig, path)
    return Figure("layer_sparsity", path, "per-layer sparsity", "layer", "sparsity", series)


def collapsed_layers(figure: Figure | None, threshold: float = 0.999) -> list[tuple[str, str, str, float]]:
    """(model, series, layer, sparsity) for every layer whose mean sparsity reaches ``threshold``."""
    if figure is None:
        return []
    return [(s.model, s.label, name, y) for s in figure.series for name, y in zip(s.points, s.y)
            if not np.isnan(y) and y >= threshold]
