"""The Crowley et al. (2018, sec. 5) latency recipe: it validates, a tiny version of it runs end to end
with latency measured at two batch sizes, and the report's latency plots equal the store.

The store is read back with plain SQL (``json_extract`` over each run's metrics), independently of
the report's pandas aggregation; parameter counts are checked against the saved models themselves.
No assertion depends on how fast this machine is.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import yaml

from prunelab.checkpoint import load_model
from prunelab.cli import main
from prunelab.report import write_report
from prunelab.study import run_study
from prunelab.study.spec import load_spec, spec_from_dict
from sql_stats import sql_stats

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "crowley_latency.yaml"


def test_recipe_validates_and_compares_reduced_with_pruned(capsys):
    assert main(["study", "validate", str(RECIPE)]) == 0
    assert "ok: study 'crowley_latency'" in capsys.readouterr().out
    spec = load_spec(RECIPE)
    runs = spec.expand()
    kinds = {(r.kind, r.params.get("mode"), r.protocol) for r in runs}
    assert {("fisher", None, "finetune"), ("fisher", None, "scratch-e"), ("reduced", "width", None),
            ("reduced", "bottleneck", None), ("reduced", "depth", None), ("dense", None, None)} <= kinds
    # reduced networks are timed at the pruned networks' parameter targets
    pruned = {json.dumps(r.target) for r in runs if r.kind == "fisher"}
    for mode in ("width", "bottleneck"):
        assert {json.dumps(r.target) for r in runs if r.params.get("mode") == mode} == pruned
    assert {json.dumps(r.target) for r in runs if r.params.get("mode") == "depth"} <= pruned
    measure = spec.measure
    assert measure["latency"] is True and isinstance(measure["threads"], int) and measure["device"] == "cpu"
    assert 1 in measure["batch_sizes"] and max(measure["batch_sizes"]) > 1
    assert all(r.measure == measure for r in runs) and len({r.seed for r in runs}) >= 2


def test_recipe_accepts_cuda():
    text = RECIPE.read_text().replace("device: cpu", "device: cuda")
    doc = yaml.safe_load(text)
    assert doc["measure"]["device"] == "cuda" and doc["train"]["device"] == "cuda"
    spec = spec_from_dict(doc)
    assert all(r.measure["device"] == "cuda" and r.train["device"] == "cuda" for r in spec.expand())


def tiny_doc() -> dict:
    """The recipe shrunk to seconds: a few training steps, one target, channels pruned 32 at a time."""
    doc = yaml.safe_load(RECIPE.read_text())
    doc["name"] = "crowley_latency_tiny"
    doc["train"].update(epochs=1, max_steps=3)
    doc["targets"] = [{"params_ratio": 0.44}]
    for method in doc["methods"]:
        if isinstance(method, dict) and method.get("kind") == "fisher":
            method.update(prune_every=1, channels_per_prune=32, finetune_epochs=0)
    doc["measure"].update(batch_sizes=[1, 32], repeats=3, min_time_s=0.0)
    return doc


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("crowley_latency") / "study"
    result = run_study(spec_from_dict(tiny_doc()), out, progress=False)
    assert result.ok, result.failures
    return out, write_report(out)


def plotted(figure) -> dict[tuple[str, str], tuple[float, float, float, float, int]]:
    out = {}
    for s in figure.series:
        assert s.x == sorted(s.x)
        for x, xs, y, ys, n, target in zip(s.x, s.x_std, s.y, s.y_std, s.n, s.points):
            out[(s.label, target)] = (x, xs, y, ys, n)
    return out


def assert_same(figure, expected, y_scale: float = 1.0) -> None:
    got = plotted(figure)
    assert got.keys() == expected.keys()
    for key, (mx, sx, my, sy, n) in expected.items():
        px, psx, py, psy, pn = got[key]
        assert pn == n == 2
        assert px == pytest.approx(mx, rel=1e-9) and py / y_scale == pytest.approx(my, rel=1e-9)
        assert psx == pytest.approx(sx, rel=1e-6, abs=1e-9) and psy / y_scale == pytest.approx(sy, rel=1e-6, abs=1e-9)


def test_every_run_is_timed_at_both_batch_sizes(tiny_study):
    out, _ = tiny_study
    conn = sqlite3.connect(out / "results.db")
    rows = conn.execute("SELECT method, protocol, latency_ms, json_extract(metrics, '$.latency_ms_b1'), "
                        "json_extract(metrics, '$.latency_ms_b32') FROM runs WHERE status = 'done'").fetchall()
    conn.close()
    labels = {(m, p) for m, p, *_ in rows}
    assert labels == {("dense", None), ("fisher", "finetune"), ("fisher", "scratch-e"), ("reduced-width", None),
                      ("reduced-bottleneck", None), ("reduced-depth", None)}
    assert len(rows) == 12
    for _, _, headline, b1, b32 in rows:
        assert b1 > 0 and b32 > 0 and headline == b1  # the headline latency is the first batch size's


def test_params_on_the_plots_are_the_saved_models_sizes(tiny_study):
    out, _ = tiny_study
    conn = sqlite3.connect(out / "results.db")
    rows = conn.execute("SELECT method, params, artifacts FROM runs WHERE status = 'done'").fetchall()
    conn.close()
    sizes = {}
    for method, params, artifacts in rows:
        model = load_model(out / json.loads(artifacts)["checkpoint"]).model
        assert params == sum(p.numel() for p in model.parameters())
        sizes.setdefault(method, set()).add(params)
    # WRN-16-2 (in_channels=1, 10 classes) has 691,386 parameters; WRN-10-2 is the only shallower depth
    assert sizes["dense"] == {691386} and sizes["reduced-depth"] == {303418}
    for method in ("fisher", "reduced-width", "reduced-bottleneck"):
        assert all(abs(p / 691386 - 0.44) < 0.05 for p in sizes[method]), (method, sizes[method])


@pytest.mark.parametrize("batch", [1, 32])
def test_latency_plots_equal_the_store(tiny_study, batch):
    out, report = tiny_study
    latency = f"json_extract(metrics, '$.latency_ms_b{batch}')"
    vs_params = report.figures[f"latency_ms_b{batch}_vs_params"]
    assert vs_params.path.is_file() and vs_params.path.stat().st_size > 1000
    assert_same(vs_params, sql_stats(out / "results.db", "params", latency, by_model=False))
    acc = report.figures[f"acc_vs_latency_ms_b{batch}"]
    assert acc.path.is_file()
    assert_same(acc, sql_stats(out / "results.db", latency, "acc", by_model=False), y_scale=100.0)
    text = report.markdown.read_text()
    assert f"(latency_ms_b{batch}_vs_params.png)" in text and f"(acc_vs_latency_ms_b{batch}.png)" in text
    assert f"Latency b{batch} (ms)" in text and "## Measured latency" in text


def test_batch_latency_columns_are_ordered_by_batch_size():
    from prunelab.errors import PrunelabError
    from prunelab.report.aggregate import batch_latency_columns, batch_of
    from prunelab.report.plots import axis_label

    cols = ["acc", "latency_ms_b32", "latency_ms", "latency_ms_b8", "latency_ms_b1", "latency_ms_bx"]
    assert batch_latency_columns(cols) == ["latency_ms_b1", "latency_ms_b8", "latency_ms_b32"]
    assert batch_of("latency_ms_b64") == 64 and batch_of("latency_ms") is None
    assert axis_label("latency_ms_b8") == "measured latency at batch 8 (ms)"
    with pytest.raises(PrunelabError, match="unknown plot axis 'flops'"):
        axis_label("flops")
