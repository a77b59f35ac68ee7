"""The report's opening: the claims a study tests, with verdicts, and the noise floor they are read against.

The numbers come from :func:`prunelab.study.claims.evaluate_claims` (SQL on the store); this module
only words and formats them.
"""

from __future__ import annotations

import math

from prunelab.report.document import Document, Heading, Paragraph, Table
from prunelab.study.claims import ClaimResult, Interval


def fmt_signed(v: float | None, digits: int = 2) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:+.{digits}f}"


def fmt_interval(interval: Interval, digits: int = 2) -> str:
    if interval.lo is None or interval.hi is None:
        return "-"
    return f"[{fmt_signed(interval.lo, digits)}, {fmt_signed(interval.hi, digits)}]"


def _test_words(result: ClaimResult) -> str:
    c = result.claim
    unit = f" {result.unit}" if result.unit else ""
    if c.test == "noninferiority":
        return f"A at least as good as B (margin {c.margin:g}{unit})"
    if c.test == "equivalence":
        return f"A within ±{c.margin:g}{unit} of B"
    return f"A better than B by more than {c.margin:g}{unit}"


DECISION_RULE = (
    "How to read this section. Each claim pairs two arms of the study, A and B, run by the same model at the "
    "same targets and seeds; a seed's runs start from the same dense checkpoint, so the seed is the unit of "
    "replication. For each seed, d is how much better A is than B (accuracy: A - B in points; a cost such "
    "as latency: the saving (B - A) / B in percent of B), averaged over the claim's targets. The interval is "
    "a two-sided 95% Student t interval over the seeds, mean ± t(0.975, n - 1) · sd / sqrt(n); with 3 seeds "
    "t = 4.30. A bootstrap interval is not used: over 3 seeds it can take only 10 distinct means and never "
    "reaches past the smallest and largest difference, so it would claim far more certainty than 3 seeds "
    "hold. Verdicts, for a margin m: 'at least as good' (non-inferiority) is held when the whole interval "
    "lies above -m and contradicted when it lies below -m; 'within m' (equivalence) is held when the whole "
    "interval lies inside (-m, m) and contradicted when it lies wholly outside; 'better by more than m' "
    "(superiority) is held above m and contradicted below m. Any interval that reaches past the margin is "
    "inconclusive, never held, however the means compare (an equivalence interval wider than its band 2m "
    "can never be held), and so is a claim with fewer than two paired seeds.")


def claims_section(doc: Document, results: list[ClaimResult]) -> None:
    """The Claims section: a table of verdicts, one paragraph per claim, the per-target breakdown."""
    doc.add(Heading("Claims"))
    if not results:
        doc.add(Paragraph("The study states no claims (a spec's 'claims:' list names the hypotheses it tests)."))
        return
    counts = {v: sum(r.verdict == v for r in results) for v in ("held", "contradicted", "inconclusive")}
    doc.add(Paragraph(f"{len(results)} claims: {counts['held']} held, {counts['contradicted']} contradicted, "
                      f"{counts['inconclusive']} inconclusive. {DECISION_RULE}"))
    rows = []
    for r in results:
        c = r.claim
        rows.append([c.name, c.paper or "-", f"{c.a.label} vs {c.b.label}", c.model, ", ".join(c.targets),
                     c.metric, _test_words(r), str(r.interval.n), fmt_signed(r.interval.mean), fmt_interval(r.interval),
                     r.unit or "-", r.verdict])
    doc.add(Table(["Claim", "Paper", "A vs B", "Model", "Targets", "Metric", "Test", "Seeds", "Mean d", "95% CI",
                   "Unit", "Verdict"], rows, caption="d: how much better A is than B, per seed, mean over the "
                                                     "claim's targets"))
    for r in results:
        c = r.claim
        unit = f" {r.unit}" if r.unit else ""
        seeds = ", ".join(f"{s}: {fmt_signed(d)}" for s, d in zip(r.seeds, r.differences))
        text = (f"{c.name} ({c.paper or 'no paper given'}): {c.statement or _test_words(r)}. "
                f"A = {c.a.label}, B = {c.b.label} on {c.model} at {', '.join(c.targets)}, metric {c.metric}. "
                f"Per seed d = {seeds or 'none'}; mean {fmt_signed(r.interval.mean)}{unit}, 95% t interval "
                f"{fmt_interval(r.interval)}{unit} over {r.interval.n} seed(s). Verdict: {r.verdict} ({r.reason}).")
        if r.identical:
            text += " The two methods pruned identical weights in every paired run (same mask fingerprint)"
            text += (": the same model, so a difference of exactly zero is no tie by chance." if c.a.protocol ==
                     c.b.protocol else ": their difference comes only from the protocols that followed.")
        doc.add(Paragraph(text))
    per_target = [[r.claim.name, t, str(iv.n), fmt_signed(iv.mean), fmt_interval(iv), r.unit or "-"]
                  for r in results if len(r.claim.targets) > 1 for t, iv in r.per_target]
    if per_target:
        doc.add(Table(["Claim", "Target", "Seeds", "Mean d", "95% CI", "Unit"], per_target,
                      caption="claims over several targets, target by target (the verdict uses the mean over "
                              "targets)"))


def _distinct(results, column: str) -> list:
    if column not in results.columns:
        return []
    values = results.loc[results["status"] == "done", column].dropna()
    return list(dict.fromkeys(values.tolist()))


def noise_floor_section(doc: Document, results, data_name: str) -> None:
    """What accuracy is measured on and how fine it can resolve: split and size, one sample's step, the
    binomial sampling error, the dense model's spread over seeds, and how models were selected."""
    doc.add(Heading("Noise floor"))
    done = results[results["status"] == "done"] if "status" in results.columns else results
    tests = [int(v) for v in _distinct(results, "test_samples")]
    vals = [int(v) for v in _distinct(results, "val_samples")]
    trains = [int(v) for v in _distinct(results, "train_samples")]
    if not tests:
        doc.add(Paragraph("No done run recorded the size of its evaluation split."))
        return
    n = min(tests)
    sizes = ", ".join(f"{v:,}" for v in tests)
    text = (f"Top-1 accuracy is measured on the test split of {data_name} ({sizes} samples"
            + (f"; training {', '.join(f'{v:,}' for v in trains)}, validation {', '.join(f'{v:,}' for v in vals)}"
               if trains else "") + f"). One test sample is {100.0 / n:.3f} points of accuracy.")
    dense = done[done["kind"] == "dense"] if "kind" in done.columns else done.iloc[0:0]
    rows = []
    for model in dict.fromkeys(dense["model"]):
        acc = dense.loc[dense["model"] == model, "acc"].astype(float)
        p = float(acc.mean())
        sd = float(acc.std(ddof=1)) if len(acc) > 1 else math.nan
        se = math.sqrt(max(p * (1 - p), 0.0) / n)
        rows.append([str(model), str(len(acc)), f"{100 * p:.2f}", "-" if math.isnan(sd) else f"{100 * sd:.2f}",
                     f"{100 * float(acc.min()):.2f} to {100 * float(acc.max()):.2f}", f"{100 * se:.2f}"])
    if rows:
        text += (" The dense model's seed-to-seed spread (sample standard deviation over seeds) is the scale "
                 "below which a difference between methods is not a finding; the binomial standard error is "
                 "the sampling error of one accuracy on this split.")
    doc.add(Paragraph(text))
    if rows:
        doc.add(Table(["Model", "Dense seeds", "Top-1 mean (%)", "Seed std (points)", "Range (%)",
                       "Binomial SE (points)"], rows))
    selections = _distinct(results, "model_selection")
    text = "Model selection: " + ("; ".join(f"'{s}'" for s in selections) if selections else "not recorded") \
        + ". No run chooses an epoch: the model reported is the last epoch's."
    if any("gates" in str(s) for s in selections):
        text += (" The one choice made on data is Pruning from Scratch's gate selection (the epoch whose gates "
                 "score best), on data held out from the training split.")
    doc.add(Paragraph(text + " The test split chooses nothing."))
