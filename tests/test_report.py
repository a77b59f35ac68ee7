"""Reports: every plotted and tabulated number equals a direct SQL aggregation of the store."""

from __future__ import annotations

import math
import sqlite3

import pytest

from prunelab.report import write_report
from prunelab.study import run_study
from sql_stats import sql_stats

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


@pytest.mark.parametrize("axis", ["params", "macs", "sparsity", "latency_ms"])
def test_plotted_values_equal_the_store(study, axis):
    out, report = study
    figure = report.figures[f"acc_vs_{axis}"]
    assert figure.path.is_file() and figure.path.stat().st_size > 1000
    expected = sql_stats(out / "results.db", axis)
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
    for name in ("acc_vs_params", "acc_vs_macs", "acc_vs_sparsity", "acc_vs_latency_ms", "layer_sparsity"):
        assert f"({name}.png)" in text and f'src="{name}.png"' in html
    assert "## Environment" in text and "| torch |" in text and "| cpu_count |" in text and "| device | cpu |" in text


def test_report_without_latency_or_done_runs(tmp_path):
    text = SPEC.replace("measure: {latency: true}\n", "").replace("fail: [2]", "fail: true")
    (tmp_path / "spec.yaml").write_text(text.replace("{name: m1, kind: noop}", "{name: m1, kind: noop, fail: true}"))
    run_study(tmp_path / "spec.yaml", tmp_path / "study", progress=False)
    report = write_report(tmp_path / "study", tmp_path / "elsewhere")
    assert report.markdown.parent == tmp_path / "elsewhere" and not report.figures
    assert "No run is done yet" in report.markdown.read_text()
