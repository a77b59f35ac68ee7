"""Reports: every plotted and tabulated number equals a direct SQL aggregation of the store."""

from __future__ import annotations

import math
import sqlite3

import pytest

from prunelab.cli import main
from prunelab.report import write_report
from prunelab.study import run_study
from sql_stats import sql_paired, sql_stats

SPEC = """
name: rep
data: digits
models: [a, b]
methods:
  - {name: m1, kind: noop}
  - {name: m2, kind: noop, base_params: 50000, fail: [2], protocols: [finetune, scratch-e]}
targets: [{sparsity: [0.5, 0.8, 0.9]}]
seeds: 3
measure: {latency: true}
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    (tmp / "spec.yaml").write_text(SPEC)
    run_study(tmp / "spec.yaml", tmp / "study", progress=False)
    report = write_report(tmp / "study")
    return tmp / "study", report


# the sparsity plot draws the density 1 - sparsity (on a log axis)
SQL_AXIS = {"params": "params", "macs": "macs", "density": "1.0 - sparsity", "latency_ms": "latency_ms"}


@pytest.mark.parametrize("axis", list(SQL_AXIS))
def test_plotted_values_equal_the_store(study, axis):
    out, report = study
    figure = report.figures[f"acc_vs_{axis}"]
    assert figure.path.is_file() and figure.path.stat().st_size > 1000
    expected = sql_stats(out / "results.db", SQL_AXIS[axis])
    plotted = {}
    for s in figure.series:
        for x, xs, y, ys, n, target in zip(s.x, s.x_std, s.y, s.y_std, s.n, s.points):
            plotted[(s.model, s.label, target)] = (x, xs, y / 100, ys / 100, n)
        assert s.x == sorted(s.x)
    assert plotted.keys() == expected.keys()
    assert len({(m, label) for m, label, _ in plotted}) == 2 * 3  # one curve per model x method / protocol
    for key, (mx, sx, ma, sa, n) in expected.items():
        px, psx, pa, psa, pn = plotted[key]
        assert pn == n
        assert px == pytest.approx(mx, rel=1e-9) and pa == pytest.approx(ma, rel=1e-9)
        assert psx == pytest.approx(sx, rel=1e-6, abs=1e-9) and psa == pytest.approx(sa, rel=1e-6, abs=1e-12)


def test_failed_runs_are_left_out_of_the_numbers_and_listed(study):
    out, report = study
    counts = {(s.label, tuple(s.n)) for s in report.figures["acc_vs_params"].series}
    assert counts == {("m1", (3, 3, 3)), ("m2 / finetune", (2, 2, 2)), ("m2 / scratch-e", (2, 2, 2))}
    text = report.markdown.read_text()
    assert "## Failed runs" in text and text.count("synthetic failure requested for seed 2") == 12


def test_layer_plot_equals_the_store(study):
    out, report = study
    figure = report.figures["layer_sparsity"]
    conn = sqlite3.connect(out / "results.db")
    rows = conn.execute(
        "SELECT r.model, r.method, r.protocol, l.idx, AVG(1.0 - json_extract(l.data, '$.nonzero') * 1.0 / "
        "json_extract(l.data, '$.weight_numel')) FROM layers l JOIN runs r USING (run_id) "
        "WHERE r.status = 'done' AND r.target = 'sparsity=0.9' GROUP BY r.model, r.method, r.protocol, l.idx"
    ).fetchall()
    expected = {(m, (me if p is None else f"{me} / {p}") + " @ sparsity=0.9", i): v for m, me, p, i, v in rows}
    plotted = {(s.model, s.label, int(x)): y for s in figure.series for x, y in zip(s.x, s.y)}
    assert plotted.keys() == expected.keys()
    for key, value in expected.items():
        assert plotted[key] == pytest.approx(value, rel=1e-9)


def test_tables_and_documents(study):
    out, report = study
    conn = sqlite3.connect(out / "results.db")
    (n, mean, sq), = conn.execute("SELECT COUNT(*), AVG(acc), SUM(acc * acc) FROM runs WHERE status = 'done' AND "
                                  "model = 'a' AND method = 'm1' AND target = 'sparsity=0.9'").fetchall()
    std = math.sqrt((sq - n * mean * mean) / (n - 1))
    text = report.markdown.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| m1 | - | sparsity=0.9 |") and
               f"{100 * mean:.2f} ± {100 * std:.2f}" in line)
    assert "10k" in row and "90.00%" in row and "10.00x" in row  # params, sparsity, compression
    html = report.html.read_text()
    assert html.startswith("<!DOCTYPE html>") and f"{100 * mean:.2f} ± {100 * std:.2f}" in html
    for name in ("acc_vs_params", "acc_vs_macs", "acc_vs_density", "acc_vs_latency_ms", "layer_sparsity"):
        assert f"({name}.png)" in text and f'src="{name}.png"' in html
    assert "## Environment" in text and "| torch |" in text and "| cpu_count |" in text and "| device | cpu |" in text


def test_report_without_latency_or_done_runs(tmp_path):
    text = SPEC.replace("measure: {latency: true}\n", "").replace("fail: [2]", "fail: true")
    (tmp_path / "spec.yaml").write_text(text.replace("{name: m1, kind: noop}", "{name: m1, kind: noop, fail: true}"))
    run_study(tmp_path / "spec.yaml", tmp_path / "study", progress=False)
    report = write_report(tmp_path / "study", tmp_path / "elsewhere")
    assert report.markdown.parent == tmp_path / "elsewhere" and not report.figures
    assert "No run is done yet" in report.markdown.read_text()


# ------------------------------------------------------------------------------ claims and the checklist

T_975_2 = 4.302652729911275  # t(0.975, 2 degrees of freedom), to 16 digits
DONE = {"model_selection": "last epoch", "latency_ms_b1": 1.0, "latency_ms_b8": 2.0}

CLAIMS_SPEC = """
name: claims
data: digits
models: [m]
methods:
  - {name: dense, kind: noop, targets: [none], protocols: [none],
     metrics: {kind_role: dense, architecture: "cnn(widths=[4])", dense_model: d, train_steps: 50, train_epochs: 5,
               **DONE}}
  - {name: gmp, kind: noop, protocols: [finetune, scratch-e],
     metrics: {kind_role: magnitude, dense_model: d, train_steps: 10, mask_hash: h1, **DONE}}
  - {name: twin, kind: noop, metrics: {dense_model: d, train_steps: 10, mask_hash: h1, **DONE}}
  - {name: rnd, kind: noop, acc_shift: -0.2, metrics: {kind_role: random, dense_model: d, train_steps: 20, **DONE}}
  - {name: red, kind: noop, protocols: [none], acc_shift: 0.05, metrics: {kind_role: reduced, train_steps: 50,
     macs: 3000000, **DONE}}
targets: [{sparsity: [0.5, 0.8, 0.9, 0.95, 0.98]}]
protocols: [finetune]
seeds: 3
claims:
  - {name: gmp-beats-random, paper: Gupta et al. 2022, statement: GMP beats random,
     a: {method: gmp, protocol: finetune}, b: rnd, targets: [{sparsity: [0.9, 0.95]}], test: noninferiority,
     margin: 0.5}
  - {name: reduced-equals-gmp, a: red, b: {method: gmp, protocol: finetune}, test: equivalence, margin: 0.5}
  - {name: scratch-better, a: {method: gmp, protocol: scratch-e}, b: {method: gmp, protocol: finetune},
     targets: [{sparsity: 0.98}], test: superiority, margin: 1}
""".replace("**DONE", ", ".join(f"{k}: {v!r}" if isinstance(v, str) else f"{k}: {v}" for k, v in DONE.items()))


@pytest.fixture(scope="module")
def claims_study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("claims")
    (tmp / "spec.yaml").write_text(CLAIMS_SPEC)
    run_study(tmp / "spec.yaml", tmp / "study", progress=False)
    return tmp / "study", write_report(tmp / "study")


def _t_interval(values):
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, mean - T_975_2 * sd / math.sqrt(n), mean + T_975_2 * sd / math.sqrt(n)


def test_claims_equal_a_sql_query_on_the_store(claims_study):
    out, report = claims_study
    db = out / "results.db"
    text = report.markdown.read_text()
    assert text.index("## Claims") < text.index("## Noise floor") < text.index("## Trade-off curves")
    expected = {
        "gmp-beats-random": sql_paired(db, "m", ("gmp", "finetune"), ("rnd", "finetune"),
                                       ["sparsity=0.9", "sparsity=0.95"]),
        "reduced-equals-gmp": sql_paired(db, "m", ("red", None), ("gmp", "finetune"),
                                         [f"sparsity={s}" for s in (0.5, 0.8, 0.9, 0.95, 0.98)]),
        "scratch-better": sql_paired(db, "m", ("gmp", "scratch-e"), ("gmp", "finetune"), ["sparsity=0.98"]),
    }
    assert [r.claim.name for r in report.claims] == list(expected)
    for result in report.claims:
        per_seed = expected[result.claim.name]
        assert result.seeds == sorted(per_seed) == [0, 1, 2]
        assert result.differences == pytest.approx([per_seed[s] for s in result.seeds], rel=1e-12)
        mean, lo, hi = _t_interval(list(per_seed.values()))
        assert (result.interval.mean, result.interval.lo, result.interval.hi) == \
            (pytest.approx(mean, rel=1e-9), pytest.approx(lo, rel=1e-9), pytest.approx(hi, rel=1e-9))
        row = next(line for line in text.splitlines() if line.startswith(f"| {result.claim.name} |"))
        assert f"| {mean:+.2f} | [{lo:+.2f}, {hi:+.2f}] | points | {result.verdict} |" in row
    verdicts = {r.claim.name: r.verdict for r in report.claims}
    assert verdicts["gmp-beats-random"] == "held"  # random is 20 points worse by construction
    assert verdicts["reduced-equals-gmp"] == "contradicted"  # 5 points apart, the band is ±0.5


def test_claim_of_identical_masks_is_said(claims_study):
    out, report = claims_study
    text = report.markdown.read_text()
    # twin and gmp record the same mask fingerprint: the report says they pruned the same weights
    assert "m: gmp / finetune and twin / finetune pruned identical weights at sparsity=0.5" in text


def test_findings_grown_cost_cut_layers_and_budgets(claims_study):
    out, report = claims_study
    text = report.markdown.read_text()
    # red reports 3M MACs against a 2M dense model: flagged in its table row and in the notes
    red = next(line for line in text.splitlines() if line.startswith("| red | - | sparsity=0.5 |"))
    assert "-50.0% (grew)" in red
    assert "m: red at sparsity=0.5 costs more than the dense model (MACs +50.0%)" in text
    cut = text[text.index("| model | method @ target | layers cut |"):].split("\n\n")[0].splitlines()[2:]
    series = {line.split(" | ")[1].split(" @ ")[0] for line in cut}
    assert series == {"gmp / finetune", "gmp / scratch-e", "twin / finetune", "rnd / finetune", "red"}
    assert all(" | none | " in line or "layer" in line.split(" | ")[2] for line in cut)
    assert "## Training budgets" in text and "fine-tuning budgets differ" in text


def test_checklist_is_met_by_a_complete_study(claims_study, capsys):
    out, report = claims_study
    assert report.missing == [] and len(report.checklist) == 10
    text = report.markdown.read_text()
    assert text.rstrip().endswith("|") and text.index("## Reporting checklist") > text.index("## Environment")
    assert main(["report", str(out), "--check"]) == 0
    assert "all 10 items met" in capsys.readouterr().out


def test_check_names_each_missing_item(study, capsys):
    out, _ = study
    assert main(["report", str(out), "--check"]) == 1
    err = capsys.readouterr().err
    for item in ("exact architectures and counts", "at least 5 operating points per method",
                 "random and magnitude baselines", "the same dense checkpoint per seed",
                 "at least 3 seeds with mean ± std", "fine-tuning budgets recorded", "scratch and reduced rows",
                 "measured latency at 2 or more batch sizes", "model selection off the test split"):
        assert f"checklist item missing: {item}" in err
    assert "compression ratio and theoretical speed-up" not in err  # the noop runs record both


def test_checklist_items_fail_when_their_evidence_goes(claims_study):
    from prunelab.report.checklist import check_study
    from prunelab.study.results import load_results

    out, _ = claims_study
    results = load_results(out)

    def missing(df):
        return {i.name for i in check_study(df) if not i.met}

    assert missing(results) == set()
    assert missing(results[results["target"] != "sparsity=0.98"]) == {"at least 5 operating points per method"}
    assert missing(results[results["seed"] != 2]) == {"at least 3 seeds with mean ± std"}
    assert missing(results[results["method"] != "rnd"]) == {"random and magnitude baselines in the same study"}
    assert missing(results[results["protocol"] != "scratch-e"]) == {"scratch and reduced rows"}
    assert missing(results.drop(columns=["latency_ms_b8"])) == {"measured latency at 2 or more batch sizes"}
    tested = results.copy()
    tested.loc[tested["method"] == "red", "model_selection"] = "best test epoch"
    assert missing(tested) == {"model selection off the test split"}
    split = results.copy()
    split.loc[(split["method"] == "rnd") & (split["seed"] == 1), "dense_model"] = "other"
    assert missing(split) == {"the same dense checkpoint per seed for every method"}


def test_notes_on_mt_l1_and_missed_targets():
    import pandas as pd

    from prunelab.report.findings import identical_masks, l1_collapse, missed_targets

    gmp = {"kind": "global-magnitude", "params": {"schedule": "oneshot", "mt": None, "mt_percent": None}}
    mt = {"kind": "global-magnitude", "params": {"schedule": "oneshot", "mt": None, "mt_percent": 0.3}}
    rows = [{"status": "done", "model": "m", "method": name, "protocol": "finetune", "target": t, "seed": s,
             "mask_hash": f"{t}{s}" if t != "sparsity=0.98" or name == "gmp" else "other", "config": cfg}
            for name, cfg in (("gmp", gmp), ("gmp+mt", mt)) for t in ("sparsity=0.9", "sparsity=0.98")
            for s in (0, 1)]
    (note,) = identical_masks(pd.DataFrame(rows))
    assert note.startswith("m: MT inactive at sparsity=0.9: gmp+mt / finetune is identical to gmp / finetune")
    assert note.endswith("they differ at sparsity=0.98.")

    results = pd.DataFrame([{"status": "done", "run_id": run, "kind": kind} for run, kind in (("r1", "l1"),
                                                                                             ("r2", "fisher"))])
    layers = pd.DataFrame([{"run_id": run, "name": "block1.conv1", "target": "params_ratio=0.2", "layer_sparsity": 1.0}
                           for run in ("r1", "r2")])
    text = l1_collapse(results, layers)
    assert "cut whole layers in 1 run(s)" in text and "l1-normalized" in text
    assert l1_collapse(results, layers.assign(layer_sparsity=0.5)) is None

    runs = pd.DataFrame([{"status": "done", "model": "m", "method": "l1", "protocol": "finetune",
                          "target": "params_ratio=0.2", "target_metric": "params", "target_count": 1000,
                          "params": p, "config": {}} for p in (850, 870)])
    assert missed_targets(runs) == [["m", "l1 / finetune", "params_ratio=0.2", "1k params", "860", "-14.0%"]]
    assert missed_targets(runs.assign(params=990)) == []
