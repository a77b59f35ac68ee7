"""Study reports: Markdown and HTML with PNG plots, built only from a study's results store.

``write_report(study)`` opens with the study's claims, each with its paired difference over seeds, a
95% t interval and a verdict (:mod:`prunelab.report.claims`, :mod:`prunelab.study.claims`), and the
noise floor they are read against (evaluation split and size, one sample's step, the dense model's
spread over seeds, how models were selected). Then it draws accuracy against parameters, MACs and
sparsity (a log axis of the density), one curve per method / protocol with seed standard deviations
as error bars; when runs measured latency, latency against parameters and accuracy against latency
for every batch size timed (Crowley et al. 2018, sec. 5); the architectures; tables in the shape of
the seed papers' tables; notes on what the tables do not say (:mod:`prunelab.report.findings`); a
per-layer sparsity plot and the layers every method cut; the training budgets; and the environment
the runs executed in. It ends with the reporting checklist of Blalock et al. (2020, ShrinkBench)
(:mod:`prunelab.report.checklist`).
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
from prunelab.report.checklist import Item, check_study, checklist_section
from prunelab.report.claims import claims_section, noise_floor_section
from prunelab.report.document import Code, Document, Heading, Image, Paragraph, Table
from prunelab.report.findings import architectures, budgets, cut_layers, findings_section
from prunelab.report.plots import (
    Figure,
    collapsed_layers,
    latency_figure,
    latency_measures,
    layer_figure,
    tradeoff_figure,
)
from prunelab.report.tables import results_table
from prunelab.study.claims import ClaimResult

__all__ = ["Report", "write_report"]


@dataclass
class Report:
    """The written files and the data behind them: figures, the summary, the evaluated claims and the
    reporting checklist."""

    markdown: Path
    html: Path
    figures: dict[str, Figure] = field(default_factory=dict)
    summary: pd.DataFrame | None = None
    claims: list[ClaimResult] = field(default_factory=list)
    checklist: list[Item] = field(default_factory=list)

    @property
    def missing(self) -> list[Item]:
        """The checklist items the study does not meet."""
        return [i for i in self.checklist if not i.met]


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
        "seeds. Timings compare models within one study on one machine; they are not portable across machines, "
        "and a machine busy with other work (other runs training beside the one timed, with more workers than "
        "free cores) makes them noisy: time latency claims on an otherwise idle machine."))
    for measure in measures:
        for fig in (latency_figure(summary, measure, out_dir / f"{measure}_vs_params.png"),
                    tradeoff_figure(summary, measure, out_dir / f"acc_vs_{measure}.png")):
            if fig is not None:
                figures[fig.name] = fig
                doc.add(Image(fig.path.name, fig.title))


def write_report(study: str | os.PathLike, out: str | os.PathLike | None = None) -> Report:
    """Write ``report.md``, ``report.html`` and the PNG plots to ``out`` (default ``<study>/report``)."""
    from prunelab.study.claims import evaluate_claims
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
        claims = evaluate_claims(store, meta.get("claims") or [])
    out_dir = Path(out) if out is not None else path.parent / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    results = load_results(path)
    summary = summarize(results)
    layers = layer_sparsity(load_layers(path))
    spec = meta.get("spec") or {}

    name = meta.get("name", "study")
    doc = Document(f"Study report: {name}")
    total = sum(counts.values())
    doc.add(Paragraph(f"{total} runs: {counts['done']} done, {counts['failed']} failed, "
                      f"{counts['running']} running, {counts['pending']} pending. Store: {path} (spec hash "
                      f"{str(meta.get('spec_hash', ''))[:12]}). Generated {time.strftime('%Y-%m-%d %H:%M:%S')}."))
    if counts["done"] < total:
        doc.add(Paragraph("The study is not complete: the numbers below cover the done runs only."))
    claims_section(doc, claims)
    noise_floor_section(doc, results, _data_name(spec))

    figures: dict[str, Figure] = {}
    if not summary.empty:
        doc.add(Heading("Trade-off curves"))
        doc.add(Paragraph("Top-1 accuracy against each cost measure; one curve per method / protocol, points are "
                          "targets, error bars are the sample standard deviation over seeds (none for one seed). "
                          "The sparsity axis is logarithmic in the density 1 - sparsity, so 90%, 95%, 98% and 99% "
                          "are evenly spaced; for structured and reduced networks it is the fraction of conv/linear "
                          "weights the smaller architecture no longer has."))
        for x in ("params", "macs", "density"):
            fig = tradeoff_figure(summary, x, out_dir / f"acc_vs_{x}.png")
            if fig is not None:
                figures[fig.name] = fig
                doc.add(Image(fig.path.name, fig.title))
        _latency_section(doc, figures, summary, spec, out_dir)
        arch_rows = architectures(results)
        if arch_rows:
            doc.add(Heading("Architectures"))
            doc.add(Paragraph("Each model as built for the data (the zoo constructor and the keywords fitted to "
                              "the data's classes, channels and dimensions), with its dense counts."))
            doc.add(Table(["model", "zoo name", "constructor", "input", "params", "MACs"], arch_rows))
        doc.add(Heading("Results"))
        doc.add(Paragraph("Params: parameters that remain (non-zero weights for unstructured pruning). Sparsity: "
                          "fraction of conv/linear weights zeroed by masks (unstructured pruning only). Params "
                          "removed: 1 - parameters / dense parameters, the size reduction of structured and reduced "
                          "networks (whose weights are removed, not zeroed). MACs: multiply-accumulates at batch 1 "
                          "(sparse-aware for unstructured pruning). Compression: dense / remaining parameters. "
                          "FLOPs pruned: 1 - MACs / dense MACs, marked (grew) when negative. Speed-up: dense / "
                          "remaining MACs, the theoretical speed-up."))
        for model in dict.fromkeys(summary["model"]):
            doc.add(Heading(str(model), 3))
            doc.add(results_table(summary, model))
        findings_section(doc, results, summary, layers)
        lf = layer_figure(layers, summary, out_dir / "layer_sparsity.png")
        if lf is not None:
            figures[lf.name] = lf
            doc.add(Heading("Per-layer sparsity"))
            collapsed = collapsed_layers(lf)
            doc.add(Paragraph("Each method at its sparsest target. A layer at sparsity 1 is cut (all its weights "
                              "pruned, or absent from a smaller architecture): without a shortcut around it the "
                              "network has collapsed there; a residual block cut entirely still passes its "
                              "shortcut. " + (f"Layers cut: {len(collapsed)}." if collapsed else "No layer cut.")
                              + " The table lists every method: the layers it cut, or none, and its sparsest "
                                "layer, since a layer with a handful of weights left can stop a network as "
                                "surely as a cut one."))
            doc.add(Image(lf.path.name, lf.title))
            doc.add(Table(["model", "method @ target", "layers cut", "sparsest layer", "top-1 (%)"],
                          cut_layers(layers, summary, results)))
        budget_rows, budget_notes = budgets(results)
        if budget_rows:
            doc.add(Heading("Training budgets"))
            doc.add(Paragraph("Optimiser steps each method spent after the dense model (mean over targets and "
                              "seeds): fine-tuning, including the steps taken while channels were removed, or the "
                              "whole training of a network trained from scratch, which follows the dense recipe's "
                              "epochs (Scratch-E, reduced, copied and gradual) or its compute (Scratch-B, more "
                              "epochs for a smaller network). " + " ".join(budget_notes)))
            doc.add(Table(["model", "method", "start", "epochs", "training steps", "pruning steps", "total steps"],
                          budget_rows))
    else:
        doc.add(Paragraph("No run is done yet: nothing to plot."))
    if failed:
        doc.add(Heading("Failed runs"))
        doc.add(Table(["model", "method", "target", "protocol", "seed", "error"],
                      [[str(v) if v is not None else "-" for v in row] for row in failed]))
    doc.add(Heading("Environment"))
    doc.add(_environment_table(envs) if envs else Paragraph("No environment recorded (no run done)."))
    if spec:
        doc.add(Heading("Study spec (normalised)"))
        doc.add(Code(yaml.safe_dump(spec, sort_keys=False), summary="spec"))
    items = check_study(results)
    checklist_section(doc, items)

    md = atomic_write_text(out_dir / "report.md", doc.markdown())
    page = atomic_write_text(out_dir / "report.html", doc.html())
    return Report(md, page, figures, summary, claims, items)


def _data_name(spec: dict) -> str:
    data = spec.get("data") or {}
    options = data.get("options") or {}
    name = str(data.get("name") or "the dataset")
    return name + (f" ({', '.join(f'{k}={v}' for k, v in options.items())})" if options else "")
