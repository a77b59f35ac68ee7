"""The study command line: run / status / validate, results as CSV and JSON, report; bad input exits 2."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest

from prunelab.cli import main
from prunelab.study import load_results

SPEC = """
name: cli
data: digits
models: [a, b]
methods:
  - {name: s, kind: noop}
targets: [{sparsity: [0.5, 0.9]}]
seeds: 2
"""


@pytest.fixture()
def spec(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC)
    return path


def test_validate(spec, capsys):
    assert main(["study", "validate", str(spec), "--list"]) == 0
    out = capsys.readouterr().out
    assert "ok: study 'cli', 8 runs (s 8)" in out and out.count("seed") == 8
    spec.write_text(SPEC.replace("seeds: 2", "seeds: 2\nseeds: 3"))
    assert main(["study", "validate", str(spec)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "malformed YAML: duplicate key 'seeds'" in err and f"{spec}:9:" in err


def test_run_status_results_and_report(spec, tmp_path, capsys):
    out = tmp_path / "study"
    assert main(["study", "run", str(spec), "--out", str(out), "--quiet", "--report"]) == 0
    text = capsys.readouterr().out
    assert "study cli: 8 done, 0 failed, 0 unfinished (8 executed now)" in text and "report:" in text
    assert (out / "report" / "report.md").is_file() and (out / "report" / "acc_vs_params.png").is_file()
    assert (out / "study.yaml").read_text() == SPEC

    assert main(["study", "status", str(out)]) == 0
    assert "8 runs: 8 done, 0 running, 0 failed, 0 pending" in capsys.readouterr().out
    assert main(["study", "status", str(out / "results.db"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["done"] == 8

    df = load_results(out)
    assert main(["results", str(out), "--csv"]) == 0
    csv = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert list(csv["run_id"]) == list(df["run_id"]) and len(csv) == 8
    for col in ("acc", "loss", "params", "macs", "sparsity", "seed", "target_value"):
        assert csv[col].tolist() == pytest.approx(df[col].tolist(), rel=1e-12)
    assert main(["results", str(out), "--json", "-o", str(tmp_path / "r.json")]) == 0
    records = json.loads((tmp_path / "r.json").read_text())
    assert [r["acc"] for r in records] == df["acc"].tolist()
    assert main(["results", str(out)]) == 0
    table = capsys.readouterr().out
    assert table.count("done") == 8 and "None" not in table

    assert main(["report", str(out), "--out", str(tmp_path / "rep")]) == 0
    assert "report:" in capsys.readouterr().out and (tmp_path / "rep" / "report.html").is_file()


def test_failed_runs_exit_1(spec, tmp_path, capsys):
    spec.write_text(SPEC.replace("kind: noop}", "kind: noop, fail: [1]}"))
    assert main(["study", "run", str(spec), "--out", str(tmp_path / "s"), "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "4 done, 4 failed" in captured.out and captured.err.count("synthetic failure requested") == 4
    assert main(["results", str(tmp_path / "s")]) == 0
    some_failed = capsys.readouterr().out
    spec.write_text(SPEC.replace("kind: noop}", "kind: noop, fail: true}"))
    assert main(["study", "run", str(spec), "--out", str(tmp_path / "all"), "--quiet"]) == 1
    capsys.readouterr()
    assert main(["results", str(tmp_path / "all")]) == 0
    all_failed = capsys.readouterr().out
    for table in (some_failed, all_failed):  # a failed run shows '-' for its metrics, whatever the others did
        failed = [line.split() for line in table.splitlines() if " failed " in line]
        assert len(failed) == (4 if table is some_failed else 8) and "None" not in table, table
        assert all(row[-5:-1] == ["-", "-", "-", "-"] for row in failed), table


@pytest.mark.parametrize("argv, fragment", [
    (["results", "{tmp}/nothing-here"], "no study at"),
    (["study", "status", "{tmp}/missing.db"], "no results store at"),
    (["study", "run", "{tmp}/missing.yaml"], "study spec not found"),
    (["study", "run", "{spec}", "--workers", "0"], "--workers must be >= 1"),
    (["study", "run", "{spec}", "--executor", "slurm"], "invalid choice: 'slurm'"),
    (["study"], "missing action"),
])
def test_bad_input_is_one_line_exit_2(spec, tmp_path, capsys, argv, fragment):
    argv = [a.format(tmp=tmp_path, spec=spec) for a in argv]
    with pytest.raises(SystemExit) if "--executor" in argv else _nothing():
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err, err
    assert not (tmp_path / "studies").exists()


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
