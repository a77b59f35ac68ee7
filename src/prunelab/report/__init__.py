"""Study reports: Markdown and HTML with PNG plots, built only from a study's results store.

``write_report(study)`` draws accuracy against parameters, MACs and sparsity, one curve per method /
protocol with seed standard deviations as error bars; when runs measured latency, latency against
parameters and accuracy against latency for every batch size timed (Crowley et al. 2018, sec. 5); a
per-layer sparsity plot to spot layer collapse; tables in the shape of the seed papers' tables; and
the environment the runs executed in. It follows the reporting checklist of Blalock et al. (2020,
ShrinkBench): compression ratio and theoretical speed-up side by side, trade-off curves, variation
across seeds.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from prunelab.io import atomic_write_text
from prunelab.report.aggregate import layer_sparsity, summarize
from prunelab.report.document import Code, Document, Heading, Image, Paragraph, Table
from prunelab.report.plots import (
    Figure,
    collapsed_layers,
    latency_figure,
    latency_measures,
    layer_figure,
    tradeoff_figure,
)
from prunelab.report.tables import results_table

__all__ = ["Report", "write_report"]


@dataclass
class Report:
    """The written files and the data behind them."""

    markdown: Path
    html: Path
    figures: dict[str, Figure] = field(default_factory=dict)
    summary: pd.DataFrame | None = None


def _environment_table(envs: list[dict]) -> Table:
    keys: list[str] = []
    for env in envs:
        keys += [k for k in env if k not in keys]
    rows = []
    for k in keys:
        values = list(dict.fromkeys(str(env[k]) for env in envs if k in env))
        rows.append([k, ", ".join(values)])
    return Table(["", "value(s) over the runs"], rows)


def _latency_section(doc: Document, figures: dict[str, Figure], summary: pd.DataFrame, spec: dict,
                     out_dir: Path) -> None:
    """Measured latency against parameters and accuracy against latency, one pair per batch size the
    runs were timed at: the comparison of Crowley et al. (2018, sec. 5), where reduced networks beat
    pruned networks of the same size on real hardware."""
    measures = latency_measures(summary)
    if not measures:
        return
    opts = spec.get("measure") or {}
    threads = opts.get("threads")
    doc.add(Heading("Measured latency"))
    doc.add(Paragraph(
        f"Median latency of one forward pass (eager PyTorch) on {opts.get('device', 'cpu')}"
        + (f" with {threads} thread(s)" if threads else "") + ", timed after each run trained its model; "
        "one pair of plots per batch size. Points are targets, error bars are the sample standard deviation over "
        "seeds. Timings compare models within one study on one machine; they are not portable across machines."))
    for measure in measures:
        for fig in (latency_figure(summary, measure, out_dir / f"{measure}_vs_params.png"),
                    tradeoff_figure(summary, measure, out_dir / f"acc_vs_{measure}.png")):
            if fig is not None:
                figures[fig.name] = fig
                doc.add(Image(fig.path.name, fig.title))


def write_report(study: str | os.PathLike, out: str | os.PathLike | None = None) -> Report:
    """Write ``report.md``, ``report.html`` and the PNG plots to ``out`` (default ``<study>/report``)."""
    from prunelab.study.results import load_layers, load_results
    from prunelab.study.store import ResultsStore

    with ResultsStore.open(study) as store:
        path = store.path
        meta = dict(store.meta)
        envs = [json.loads(e) for (e,) in store.query(
            "SELECT env FROM runs WHERE active = 1 AND status = 'done' AND env IS NOT NULL ORDER BY seq")]
        counts = store.counts()
        failed = store.query("SELECT model, method, target, protocol, seed, error FROM runs "
                             "WHERE active = 1 AND status = 'failed' ORDER BY seq")
    out_dir = Path(out) if out is not None else path.parent / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    results = load_results(path)
    summary = summarize(results)
    layers = layer_sparsity(load_layers(path))

    name = meta.get("name", "study")
    doc = Document(f"Study report: {name}")
    total = sum(counts.values())
    doc.add(Paragraph(f"{total} runs: {counts['done']} done, {counts['failed']} failed, "
                      f"{counts['running']} running, {counts['pending']} pending. Store: {path} (spec hash "
                      f"{str(meta.get('spec_hash', ''))[:12]}). Generated {time.strftime('%Y-%m-%d %H:%M:%S')}."))
    if counts["done"] < total:
        doc.add(Paragraph("The study is not complete: the numbers below cover the done runs only."))

    figures: dict[str, Figure] = {}
    if not summary.empty:
        doc.add(Heading("Trade-off curves"))
        doc.add(Paragraph("Top-1 accuracy against each cost measure; one curve per method / protocol, points are "
                          "targets, error bars are the sample standard deviation over seeds (none for one seed)."))
        for x in ("params", "macs", "sparsity"):
            fig = tradeoff_figure(summary, x, out_dir / f"acc_vs_{x}.png")
            if fig is not None:
                figures[fig.name] = fig
                doc.add(Image(fig.path.name, fig.title))
        _latency_section(doc, figures, summary, meta.get("spec") or {}, out_dir)
        doc.add(Heading("Results"))
        doc.add(Paragraph("Params: parameters that remain (non-zero weights for unstructured pruning). MACs: "
                          "multiply-accumulates at batch 1 (sparse-aware for unstructured pruning). Compression: "
                          "unpruned / remaining parameters. FLOPs pruned: 1 - MACs / unpruned MACs."))
        for model in dict.fromkeys(summary["model"]):
            doc.add(Heading(str(model), 3))
            doc.add(results_table(summary, model))
        lf = layer_figure(layers, summary, out_dir / "layer_sparsity.png")
        if lf is not None:
            figures[lf.name] = lf
            doc.add(Heading("Per-layer sparsity"))
            collapsed = collapsed_layers(lf)
            doc.add(Paragraph("Each method at its sparsest target. A layer at sparsity 1 is cut (all its weights "
                              "pruned, or absent from a smaller architecture): without a shortcut around it the "
                              "network has collapsed there; a residual block cut entirely still passes its "
                              "shortcut. " + (f"Layers cut: {len(collapsed)}." if collapsed else "No layer cut.")))
            doc.add(Image(lf.path.name, lf.title))
            if collapsed:
                doc.add(Table(["model", "method @ target", "layer", "sparsity"],
                              [[m, s, layer, f"{v:.4f}"] for m, s, layer, v in collapsed]))
    else:
        doc.add(Paragraph("No run is done yet: nothing to plot."))
    if failed:
        doc.add(Heading("Failed runs"))
        doc.add(Table(["model", "method", "target", "protocol", "seed", "error"],
                      [[str(v) if v is not None else "-" for v in row] for row in failed]))
    doc.add(Heading("Environment"))
    doc.add(_environment_table(envs) if envs else Paragraph("No environment recorded (no run done)."))
    if meta.get("spec"):
        doc.add(Heading("Study spec (normalised)"))
        doc.add(Code(yaml.safe_dump(meta["spec"], sort_keys=False), summary="spec"))

    md = atomic_write_text(out_dir / "report.md", doc.markdown())
    page = atomic_write_text(out_dir / "report.html", doc.html())
    return Report(md, page, figures, summary)
