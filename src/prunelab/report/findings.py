"""What a reader should not have to find alone: facts of the results the tables do not say.

* two methods that pruned *identical* weights (same mask fingerprint in every seed): equal numbers are
  then one result, not a tie; Minimum Threshold that never binds is the common case (Gupta et al. 2022);
* a cost that *grew* (a smaller-parameter architecture with more MACs than the dense model);
* size targets a run *missed* by more than 5%;
* the layers each method *cut* (every weight gone), listed for every method at its sparsest target,
  with its sparsest layer and whether the network is at chance;
* global L1 channel pruning emptying whole blocks: filter norms differ between layers, so one global
  ranking removes the layers with small norms first;
* the training budgets each method spent after the dense model (Blalock et al. 2020 ask for equal
  fine-tuning budgets, or the difference stated);
* the exact architectures and their counts.
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING

from prunelab.report.aggregate import series_label, sparsest_target_layers
from prunelab.report.document import Document, Heading, Paragraph, Table
from prunelab.report.tables import fmt_count, fmt_pct

if TYPE_CHECKING:
    import pandas as pd

TARGET_TOLERANCE = 0.05
CUT = 0.999
MT_KEYS = ("mt", "mt_percent")


def _done(results: pd.DataFrame) -> pd.DataFrame:
    return results[results["status"] == "done"] if not results.empty else results


def _label(row) -> str:
    return series_label(row["method"], row["protocol"])


def _only_mt_differs(a: dict, b: dict) -> bool:
    """True when two run configurations differ only in their Minimum Threshold (and one has none)."""
    if a.get("kind") != b.get("kind"):
        return False
    pa, pb = dict(a.get("params") or {}), dict(b.get("params") or {})
    ka = {k: v for k, v in pa.items() if k not in MT_KEYS}
    kb = {k: v for k, v in pb.items() if k not in MT_KEYS}
    has = [any(p.get(k) is not None for k in MT_KEYS) for p in (pa, pb)]
    return ka == kb and has[0] != has[1]


def identical_masks(results: pd.DataFrame) -> list[str]:
    """Sentences naming every pair of methods (of one model) whose runs pruned identical weights at a
    target in every seed both ran (same ``mask_hash``)."""
    df = _done(results)
    if "mask_hash" not in df.columns:
        return []
    df = df[df["mask_hash"].notna()]
    notes = []
    for model in dict.fromkeys(df["model"]):
        part = df[df["model"] == model]
        labels = list(dict.fromkeys(_label(r) for _, r in part.iterrows()))
        rows = {lab: part[[_label(r) == lab for _, r in part.iterrows()]] for lab in labels}
        for la, lb in itertools.combinations(labels, 2):
            a, b = rows[la], rows[lb]
            if a["method"].iloc[0] == b["method"].iloc[0]:
                continue  # protocols of one method share its prune by design
            same, differ = [], []
            for target in dict.fromkeys(a["target"]):
                ha = dict(zip(a.loc[a["target"] == target, "seed"], a.loc[a["target"] == target, "mask_hash"]))
                hb = dict(zip(b.loc[b["target"] == target, "seed"], b.loc[b["target"] == target, "mask_hash"]))
                seeds = set(ha) & set(hb)
                if not seeds:
                    continue
                (same if all(ha[s] == hb[s] for s in seeds) else differ).append(str(target))
            if not same:
                continue
            mt = _only_mt_differs(a["config"].iloc[0], b["config"].iloc[0])
            with_mt, without = (la, lb) if any(a["config"].iloc[0].get("params", {}).get(k) is not None
                                               for k in MT_KEYS) else (lb, la)
            lead = (f"MT inactive at {', '.join(same)}: {with_mt} is identical to {without}" if mt else
                    f"{la} and {lb} pruned identical weights at {', '.join(same)}")
            notes.append(f"{model}: {lead} (same mask in every seed, so the same model and the same numbers)"
                         + (f"; they differ at {', '.join(differ)}." if differ else "."))
    return notes


def grown_costs(summary: pd.DataFrame) -> list[str]:
    """Sentences naming the results whose MACs or parameters exceed the dense model's."""
    import pandas as pd  # lazily: an optional dependency of the report

    notes = []
    if summary.empty:
        return notes
    for _, r in summary.iterrows():
        macs = r.get("macs_pruned")
        comp = r.get("compression")
        grew = []
        if macs is not None and not pd.isna(macs) and macs < -1e-9:
            grew.append(f"MACs +{-100 * macs:.1f}%")
        if comp is not None and not pd.isna(comp) and comp < 1 - 1e-9:
            grew.append(f"parameters +{100 * (1 / comp - 1):.1f}%")
        if grew:
            notes.append(f"{r['model']}: {r['label']} at {r['target']} costs more than the dense model "
                         f"({', '.join(grew)})")
    return notes


def missed_targets(results: pd.DataFrame, tolerance: float = TARGET_TOLERANCE) -> list[list[str]]:
    """Rows (model, series, target, asked, reached, error) for size targets missed by more than ``tolerance``."""
    df = _done(results)
    if not {"target_metric", "target_count"} <= set(df.columns):
        return []
    df = df[df["target_metric"].isin(["params", "macs"]) & df["target_count"].notna()].copy()
    rows = []
    if df.empty:
        return rows
    df["series"] = [_label(r) for _, r in df.iterrows()]
    for (model, series, target, metric), g in df.groupby(["model", "series", "target", "target_metric"],
                                                         sort=False):
        asked = float(g["target_count"].astype(float).mean())
        reached = float(g[metric].astype(float).mean())
        err = reached / asked - 1.0
        if abs(err) > tolerance:
            rows.append([str(model), series, str(target), f"{fmt_count(asked)} {metric}", fmt_count(reached),
                         f"{100 * err:+.1f}%"])
    return rows


def cut_layers(layers: pd.DataFrame, summary: pd.DataFrame, results: pd.DataFrame) -> list[list[str]]:
    """One row per method / protocol (the dense baseline aside) at its sparsest target: the layers it cut
    (or none), its sparsest layer with the weights it kept, its top-1 and whether that is near chance."""
    import pandas as pd  # lazily: an optional dependency of the report

    table = sparsest_target_layers(layers)
    if table.empty:
        return []
    done = _done(results)
    dense = {_label(r) for _, r in done.iterrows() if r.get("kind_role") == "dense"} if len(done) else set()
    table = table[~table["label"].isin(dense)]  # the unpruned baseline cuts nothing
    classes = pd.to_numeric(results.get("num_classes", pd.Series(dtype=float)), errors="coerce").dropna()
    chance = 1.0 / float(classes.iloc[0]) if len(classes) else None
    rows = []
    for (model, label, target), part in table.groupby(["model", "label", "target"], sort=False, dropna=False):
        cut = part[part["mean"] >= CUT]
        top = part.sort_values("mean", ascending=False, kind="stable").iloc[0]
        kept = "-" if pd.isna(top["nonzero"]) else f"{top['nonzero']:.0f} of {top['weight_numel']:.0f}"
        acc = summary[(summary["model"] == model) & (summary["label"] == label) & (summary["target"] == target)]
        acc_mean = float(acc["acc_mean"].iloc[0]) if len(acc) and "acc_mean" in acc else math.nan
        near = chance is not None and not math.isnan(acc_mean) and acc_mean < chance + 0.05
        rows.append([str(model), f"{label} @ {target}", ", ".join(map(str, cut["name"])) if len(cut) else "none",
                     f"{top['name']} ({fmt_pct(top['mean'], 2)}; {kept} weights kept)",
                     "-" if math.isnan(acc_mean) else f"{100 * acc_mean:.2f}" + (" (near chance)" if near else "")])
    return rows


def l1_collapse(results: pd.DataFrame, layers: pd.DataFrame) -> str | None:
    """The explanation when global L1 channel pruning cut whole layers (blocks pruned to their shortcut)."""
    df = _done(results)
    l1 = df[df["kind"] == "l1"] if "kind" in df.columns else df.iloc[0:0]
    if l1.empty or layers.empty or "layer_sparsity" not in layers.columns:
        return None
    hit = layers[layers["run_id"].isin(set(l1["run_id"])) & (layers["layer_sparsity"] >= CUT)]
    if hit.empty:
        return None
    runs = hit.groupby("run_id")["name"].nunique()
    where = sorted(set(hit["target"].astype(str)))
    return (f"L1 channel pruning cut whole layers in {len(runs)} run(s) (up to {int(runs.max())} layers, at "
            f"{', '.join(where)}): every internal channel of those blocks was removed, leaving their shortcut. "
            "The criterion ranks filters by their L1 norm across all layers at once, and norms are not comparable "
            "between layers: layers whose filters have few or small weights (small fan-in, or initialised and "
            "trained to a smaller scale) have small norms throughout, so one unnormalised global ranking empties "
            "them first, the channel-level form of the layer collapse of Gupta et al. (2022). Li et al. (2017) "
            "rank filters within each layer; the per-layer-normalised variant, criterion l1-normalized, ranks each "
            "filter against the filters of its own layer, so no layer is emptied for having small norms.")


def budgets(results: pd.DataFrame) -> tuple[list[list[str]], list[str]]:
    """Rows (model, series, start, epochs, steps, pruning steps, total) of the training each method spent
    after the dense model: fine-tuning (protocol ``finetune``, with the steps taken while channels were
    removed) or the whole training of a network trained from scratch; and one sentence per model on
    whether the fine-tuning budgets are equal."""
    import pandas as pd  # lazily: an optional dependency of the report

    df = _done(results)
    if "train_steps" not in df.columns:
        return [], []
    df = df[df.get("kind_role", pd.Series(index=df.index, dtype=object)) != "dense"].copy()
    if df.empty:
        return [], []
    df["series"] = [_label(r) for _, r in df.iterrows()]
    df["prune_steps"] = pd.to_numeric(df["prune_steps"], errors="coerce") if "prune_steps" in df.columns else 0.0
    df["prune_steps"] = df["prune_steps"].fillna(0.0)
    df["total"] = pd.to_numeric(df["train_steps"], errors="coerce") + df["prune_steps"]
    rows, notes = [], []
    for model in dict.fromkeys(df["model"]):
        part = df[df["model"] == model]
        starts = set(part.loc[part["protocol"] == "finetune", "series"])  # the others train from scratch
        finetuned = {}
        for series, g in part.groupby("series", sort=False):
            epochs = pd.to_numeric(g["train_epochs"], errors="coerce").mean() if "train_epochs" in g else math.nan
            total = float(g["total"].mean())
            rows.append([str(model), series, "fine-tuned from the dense model" if series in starts else
                         "trained from scratch", f"{epochs:.3g}", f"{g['train_steps'].astype(float).mean():.0f}",
                         f"{g['prune_steps'].mean():.0f}", f"{total:.0f}"])
            if series in starts:
                finetuned[series] = total
        if len(finetuned) > 1:
            low, high = min(finetuned.values()), max(finetuned.values())
            if math.isclose(low, high, rel_tol=0.01):
                notes.append(f"{model}: the methods fine-tuned from the dense model spend equal budgets "
                             f"({low:.0f} steps, mean over targets).")
            else:
                spread = ", ".join(f"{s} {v:.0f}" for s, v in sorted(finetuned.items(), key=lambda kv: kv[1]))
                notes.append(f"{model}: fine-tuning budgets differ ({spread} steps, mean over targets; pruning "
                             f"steps interleaved with fine-tuning count): compare them knowing that.")
    return rows, notes


def architectures(results: pd.DataFrame) -> list[list[str]]:
    """Rows (model, zoo name, constructor as fitted to the data, input, parameters, MACs) of every model's
    dense network."""
    df = _done(results)
    if "architecture" not in df.columns:
        return []
    dense = df[df["architecture"].notna()]
    rows = []
    for model, g in dense.groupby("model", sort=False):
        r = g.iloc[0]
        rows.append([str(model), str(r["config"].get("model")), str(r["architecture"]),
                     str(r.get("input_shape") or "-"), f"{int(r['params']):,}", f"{int(r['macs']):,}"])
    return rows


def findings_section(doc: Document, results: pd.DataFrame, summary: pd.DataFrame, layers: pd.DataFrame) -> None:
    """The Notes section: identical masks, grown costs, missed targets, the L1 explanation."""
    notes = identical_masks(results) + grown_costs(summary)
    missed = missed_targets(results)
    l1 = l1_collapse(results, layers)
    if not (notes or missed or l1):
        return
    doc.add(Heading("Notes on the results"))
    for note in notes:
        doc.add(Paragraph(note))
    if l1:
        doc.add(Paragraph(l1))
    if missed:
        doc.add(Paragraph(f"Size targets missed by more than {TARGET_TOLERANCE:.0%} (channels are removed in steps "
                          "of whole channels, and a block emptied at once takes many parameters with it):"))
        doc.add(Table(["model", "method", "target", "asked", "reached", "error"], missed))
