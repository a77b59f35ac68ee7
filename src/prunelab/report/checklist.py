"""The reporting checklist, after Blalock et al. (2020), "What is the State of Neural Network Pruning?".

Blalock et al. found pruning papers hard to compare because they leave out what a comparison needs:
the exact architectures, enough operating points, the simple baselines (random, magnitude), a shared
starting model and fine-tuning budget, variation over runs, and both compression and theoretical
speed-up. ShrinkBench, their framework, reports these by default. The items here are that list plus
the controls the seed papers add: Scratch and reduced-network rows (Liu et al. 2019; Crowley et al.
2018), latency measured at more than one batch size, and model selection kept off the test split.

Every item is decided from the store's done runs alone; :func:`check_study` returns them, and
``prunelab report STUDY --check`` exits non-zero naming the items a study misses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prunelab.report.aggregate import batch_latency_columns, series_label
from prunelab.report.document import Document, Heading, Paragraph, Table

if TYPE_CHECKING:
    import pandas as pd

MIN_POINTS = 5
MIN_SEEDS = 3
SCRATCH_PROTOCOLS = ("scratch-e", "scratch-b")


@dataclass(frozen=True)
class Item:
    """One checklist item: what it asks, whether the study meets it, and the evidence either way."""

    name: str
    met: bool
    evidence: str


def _done(results: pd.DataFrame) -> pd.DataFrame:
    return results[results["status"] == "done"] if not results.empty else results


def _column(df: pd.DataFrame, name: str) -> pd.Series:
    import pandas as pd  # lazily: an optional dependency of the report

    return df[name] if name in df.columns else pd.Series([None] * len(df), index=df.index, dtype=object)


def _role(df: pd.DataFrame, role: str) -> pd.DataFrame:
    return df[_column(df, "kind_role") == role]


def _pruned(df: pd.DataFrame) -> pd.DataFrame:
    """Runs of methods with an operating point (a target), the dense baseline excluded."""
    return df[(_column(df, "kind_role") != "dense") & df["target"].notna() & (df["target"] != "-")]


def _labels(df: pd.DataFrame) -> pd.Series:
    import pandas as pd  # lazily: an optional dependency of the report

    return pd.Series([f"{m}: {series_label(me, p)}" for m, me, p in zip(df["model"], df["method"], df["protocol"])],
                     index=df.index, dtype=object)


def _architectures(df: pd.DataFrame) -> Item:
    name = "exact architectures and counts"
    models = list(dict.fromkeys(df["model"]))
    dense = _role(df, "dense")
    described = set(dense.loc[_column(dense, "architecture").notna() & dense["params"].notna()
                              & dense["macs"].notna(), "model"])
    missing = [m for m in models if m not in described]
    if not models:
        return Item(name, False, "no done run")
    if missing:
        return Item(name, False, f"no done dense run records the architecture of {', '.join(map(str, missing))}")
    return Item(name, True, f"{len(models)} model(s), each with its constructor, parameters and MACs "
                            "(section Architectures)")


def _operating_points(df: pd.DataFrame) -> Item:
    name = f"at least {MIN_POINTS} operating points per method"
    pruned = _pruned(df)
    if pruned.empty:
        return Item(name, False, "no pruning run with a target")
    points = pruned.assign(series=_labels(pruned)).groupby("series", sort=False)["target"].nunique()
    short = points[points < MIN_POINTS]
    if len(short):
        return Item(name, False, "; ".join(f"{s}: {n}" for s, n in short.items()) + f" (fewer than {MIN_POINTS})")
    return Item(name, True, f"{len(points)} method / protocol series, {int(points.min())} to {int(points.max())} "
                            f"targets each")


def _baselines(df: pd.DataFrame) -> Item:
    name = "random and magnitude baselines in the same study"
    found = {role: sorted(set(_role(df, role)["method"])) for role in ("random", "magnitude")}
    missing = [role for role, methods in found.items() if not methods]
    if missing:
        return Item(name, False, f"no {' and no '.join(missing)} baseline among the done runs")
    return Item(name, True, f"random: {', '.join(found['random'])}; magnitude: {', '.join(found['magnitude'])}")


def _same_dense(df: pd.DataFrame) -> Item:
    name = "the same dense checkpoint per seed for every method"
    used = df[_column(df, "dense_model").notna()]
    starts = used[_column(used, "kind_role") != "dense"]
    if starts.empty:
        return Item(name, False, "no run records the dense checkpoint it started from")
    per_seed = used.groupby(["model", "seed"])["dense_model"].nunique()
    split = per_seed[per_seed > 1]
    if len(split):
        return Item(name, False, "; ".join(f"{m} seed {s}: {n} dense checkpoints" for (m, s), n in split.items()))
    return Item(name, True, f"{len(per_seed)} (model, seed) pairs: every run of a seed that starts from a trained "
                            f"model starts from that seed's one dense checkpoint ({len(starts)} runs)")


def _seeds(df: pd.DataFrame) -> Item:
    name = f"at least {MIN_SEEDS} seeds with mean ± std"
    counts = df.assign(series=_labels(df)).groupby(["series", "target"], sort=False, dropna=False)["seed"].nunique()
    short = counts[counts < MIN_SEEDS]
    if df.empty:
        return Item(name, False, "no done run")
    if len(short):
        shown = "; ".join(f"{s} @ {t}: {n}" for (s, t), n in list(short.items())[:5])
        return Item(name, False, f"{len(short)} result(s) with fewer than {MIN_SEEDS} seeds ({shown})")
    return Item(name, True, f"every result averages {int(counts.min())} to {int(counts.max())} seeds; tables give "
                            "mean ± sample std")


def _budgets(df: pd.DataFrame) -> Item:
    name = "fine-tuning budgets recorded and equal, or the difference stated"
    trained = df[_column(df, "kind_role") != "dense"]
    missing = trained[_column(trained, "train_steps").isna()]
    if trained.empty:
        return Item(name, False, "no pruning run")
    if len(missing):
        return Item(name, False, f"{len(missing)} run(s) record no training budget "
                                 f"({', '.join(sorted(set(_labels(missing))))[:200]})")
    return Item(name, True, "every run records its training steps and epochs; section Training budgets states "
                            "them per method and where they differ")


def _scratch_reduced(df: pd.DataFrame) -> Item:
    name = "scratch and reduced rows"
    scratch = sorted(set(_labels(df[df["protocol"].isin(SCRATCH_PROTOCOLS)])))
    reduced = sorted(set(_labels(_role(df, "reduced"))))
    missing = [what for what, rows in (("Scratch-E/B", scratch), ("reduced-network", reduced)) if not rows]
    if missing:
        return Item(name, False, f"no {' and no '.join(missing)} rows")
    return Item(name, True, f"scratch: {', '.join(scratch)}; reduced: {', '.join(reduced)}")


def _latency(df: pd.DataFrame) -> Item:
    name = "measured latency at 2 or more batch sizes"
    measured = [c for c in batch_latency_columns(df.columns) if df[c].notna().any()]
    if len(measured) < 2:
        return Item(name, False, f"latency measured at {len(measured)} batch size(s); the study's measure: "
                                 "{latency: true, batch_sizes: [1, 64]} gives two")
    incomplete = [c for c in measured if df[c].isna().any()]
    if incomplete:
        return Item(name, False, f"{', '.join(incomplete)} missing from some done runs")
    return Item(name, True, "batch sizes " + ", ".join(c.rsplit("b", 1)[-1] for c in measured) + " in every run")


def _selection(df: pd.DataFrame) -> Item:
    name = "model selection off the test split"
    selection = _column(df, "model_selection")
    if selection.isna().any():
        return Item(name, False, f"{int(selection.isna().sum())} run(s) do not record how their model was selected")
    on_test = sorted({s for s in selection if "test" in str(s)})
    if on_test:
        return Item(name, False, f"selected on the test split: {'; '.join(on_test)}")
    return Item(name, True, "; ".join(dict.fromkeys(str(s) for s in selection)))


def _ratios(df: pd.DataFrame) -> Item:
    name = "compression ratio and theoretical speed-up"
    cols = ("params", "macs", "base_params", "base_macs")
    missing = [c for c in cols if c not in df.columns or df[c].isna().any()]
    if missing:
        return Item(name, False, f"runs without {', '.join(missing)}")
    return Item(name, True, "Compression (dense / remaining parameters) and Speed-up (dense / remaining MACs) "
                            "columns in every results table")


CHECKS: tuple[Callable[[pd.DataFrame], Item], ...] = (
    _architectures, _operating_points, _baselines, _same_dense, _seeds, _budgets, _scratch_reduced, _latency,
    _selection, _ratios)


def check_study(results: pd.DataFrame) -> list[Item]:
    """Every checklist item, decided from the done runs of ``results`` (:func:`prunelab.study.load_results`)."""
    df = _done(results)
    return [check(df) for check in CHECKS]


def checklist_section(doc: Document, items: list[Item]) -> None:
    met = sum(i.met for i in items)
    doc.add(Heading("Reporting checklist"))
    doc.add(Paragraph(
        f"After Blalock et al. (2020), 'What is the State of Neural Network Pruning?' (ShrinkBench), with the "
        f"controls of the seed papers: {met} of {len(items)} items met. `prunelab report STUDY --check` exits "
        f"non-zero while any item is missing."))
    doc.add(Table(["Item", "Met", "Evidence"], [[i.name, "yes" if i.met else "MISSING", i.evidence] for i in items]))
