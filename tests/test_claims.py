"""Claims: Student t quantiles against published tables and SciPy, the decision rule case by case, and
claims in a spec checked with one-line errors."""

from __future__ import annotations

import math

import pytest

from prunelab.cli import main
from prunelab.errors import PrunelabError
from prunelab.study import parse_spec
from prunelab.study.claims import Interval, decide, t_cdf_two_sided, t_quantile

# Two-sided 95% critical values t(0.975, df), as printed in standard tables (e.g. NIST/SEMATECH
# e-Handbook of Statistical Methods, table 1.3.6.7.2).
T_TABLE = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 9: 2.262, 10: 2.228, 29: 2.045, 30: 2.042,
           60: 2.000, 100: 1.984}


@pytest.mark.parametrize("df", sorted(T_TABLE))
def test_t_quantile_matches_the_table(df):
    assert t_quantile(0.975, df) == pytest.approx(T_TABLE[df], abs=6e-4)


def test_t_distribution_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 4, 7, 12, 25, 80, 301):
        for t in (0.1, 0.7, 1.5, 2.2, 4.0, 9.0):
            assert t_cdf_two_sided(t, df) == pytest.approx(1 - 2 * stats.t.sf(t, df), abs=1e-12)
        for p in (0.9, 0.975, 0.995):
            assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-9)


def test_interval_is_the_t_interval_by_hand():
    values = [1.0, 2.0, 4.0]
    iv = Interval.of(values)
    sd = math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2)
    half = 4.302652729911275 * sd / math.sqrt(3)  # t(0.975, 2) to 16 digits
    assert (iv.n, iv.mean) == (3, pytest.approx(7 / 3))
    assert iv.lo == pytest.approx(7 / 3 - half, rel=1e-9) and iv.hi == pytest.approx(7 / 3 + half, rel=1e-9)
    assert Interval.of([2.0]).lo is None and Interval.of([]).mean is None


def _iv(lo, hi):
    return Interval(3, (lo + hi) / 2, 1.0, lo, hi, 4.3)


@pytest.mark.parametrize("test, margin, lo, hi, verdict", [
    ("noninferiority", 0.5, -0.4, 3.0, "held"),          # clears -m
    ("noninferiority", 0.5, -0.6, 3.0, "inconclusive"),  # reaches past -m
    ("noninferiority", 0.5, -3.0, -0.6, "contradicted"),
    ("equivalence", 0.5, -0.4, 0.4, "held"),
    ("equivalence", 0.5, -0.6, 0.1, "inconclusive"),     # wider than the band: never held
    ("equivalence", 0.5, -2.0, 2.0, "inconclusive"),     # centred on 0 but wider than the margin
    ("equivalence", 0.5, 0.6, 2.0, "contradicted"),
    ("equivalence", 0.5, -2.0, -0.5, "contradicted"),
    ("superiority", 0.0, 0.1, 2.0, "held"),
    ("superiority", 0.0, -0.1, 2.0, "inconclusive"),
    ("superiority", 5.0, 1.0, 4.9, "contradicted"),
    ("superiority", 5.0, 4.0, 9.0, "inconclusive"),
])
def test_decision_rule(test, margin, lo, hi, verdict):
    assert decide(test, margin, _iv(lo, hi))[0] == verdict


def test_no_interval_is_inconclusive():
    assert decide("noninferiority", 0.5, Interval.of([5.0]))[0] == "inconclusive"


SPEC = """
name: c
data: digits
models: [a, b]
methods:
  - {name: base, kind: noop}
  - {name: other, kind: noop, protocols: [finetune, scratch-e]}
targets: [{sparsity: [0.5, 0.8]}]
seeds: 3
measure: {latency: true, batch_sizes: [1, 8]}
"""


def _spec(claims: str, spec: str = SPEC):
    return parse_spec(spec + "claims:\n" + claims, source="s.yaml")


def test_a_claim_is_resolved_against_the_runs():
    spec = _spec("  - {name: c1, paper: P, a: {method: other, protocol: finetune}, b: base, model: a, "
                 "targets: [{sparsity: 0.8}], test: noninferiority, margin: 0.5}\n"
                 "  - {name: c2, a: {method: base}, b: {method: other, protocol: scratch-e}, model: b, "
                 "metric: latency_ms_b8, test: superiority, margin: 0}\n")
    c1, c2 = spec.claims
    assert (c1.a.method, c1.a.protocol, c1.b.method, c1.b.protocol) == ("other", "finetune", "base", None)
    assert c1.targets == ("sparsity=0.8",) and c1.model == "a" and c1.metric == "acc" and not c1.relative
    assert c2.targets == ("sparsity=0.5", "sparsity=0.8") and c2.relative  # latency: percent of B by default
    assert [c["name"] for c in spec.claims_dict()] == ["c1", "c2"]
    assert "claims" not in spec.to_dict()  # claims change no run: outside the spec hash


@pytest.mark.parametrize("claim, message", [
    ("{name: x, a: nope, b: base, model: a, test: noninferiority, margin: 1}", "unknown arm a method 'nope'"),
    ("{name: x, a: other, b: base, model: a, test: noninferiority, margin: 1}",
     "method 'other' runs protocols finetune, scratch-e: name one"),
    ("{name: x, a: {method: other, protocol: scratch-b}, b: base, model: a, test: noninferiority, margin: 1}",
     "unknown protocol of method 'other' 'scratch-b'"),
    ("{name: x, a: {method: other, protocol: finetune}, b: base, model: a, targets: [{sparsity: 0.9}], "
     "test: noninferiority, margin: 1}", "arm a (other / finetune) has no run at target sparsity=0.9"),
    ("{name: x, a: base, b: {method: other, protocol: finetune}, test: noninferiority, margin: 1}",
     "models a, b run both arms: name one with 'model:'"),
    ("{name: x, a: base, b: {method: other, protocol: finetune}, model: a, metric: top5, test: noninferiority, "
     "margin: 1}", "unknown claim metric 'top5'"),
    ("{name: x, a: base, b: {method: other, protocol: finetune}, model: a, metric: latency_ms_b64, "
     "test: superiority, margin: 0}", "metric latency_ms_b64 is not measured"),
    ("{name: x, a: base, b: {method: other, protocol: finetune}, model: a, test: noninferiority, margin: 0}",
     "margin must be a number > 0"),
    ("{name: x, a: base, b: {method: other, protocol: finetune}, model: a, test: better, margin: 1}",
     "unknown claim test 'better'"),
    ("{name: x, a: base, b: base, model: a, test: noninferiority, margin: 1}", "both arms are base"),
    ("{name: x, a: base, b: {method: other, protocol: finetune}, model: a, test: noninferiority, margin: 1, "
     "colour: red}", "unknown claim key 'colour'"),
    ("{name: x, b: base, test: noninferiority, margin: 1}", "a claim needs 'a'"),
])
def test_bad_claims_are_one_line_errors_with_the_line(claim, message):
    with pytest.raises(PrunelabError) as exc:
        _spec(f"  - {claim}\n")
    text = str(exc.value)
    assert message in text and "\n" not in text
    assert text.startswith("s.yaml:12: ")  # the claim's own line


def test_duplicate_claims_and_latency_without_measurement():
    with pytest.raises(PrunelabError, match="claim name 'x' is used twice"):
        _spec("  - {name: x, a: base, b: {method: other, protocol: finetune}, model: a, test: equivalence, "
              "margin: 1}\n" * 2)
    without = SPEC.replace("measure: {latency: true, batch_sizes: [1, 8]}\n", "")
    with pytest.raises(PrunelabError, match="needs measured latency"):
        _spec("  - {name: x, a: base, b: {method: other, protocol: finetune}, model: a, metric: latency_ms, "
              "test: superiority, margin: 0}\n", without)


def test_one_seed_cannot_pair():
    with pytest.raises(PrunelabError, match="share 1 seed"):
        _spec("  - {name: x, a: base, b: {method: other, protocol: finetune}, model: a, test: equivalence, "
              "margin: 1}\n", SPEC.replace("seeds: 3", "seeds: 1"))


def test_study_validate_reports_a_bad_claim_in_one_line(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(SPEC + "claims:\n  - {name: x, a: nope, b: base, test: equivalence, margin: 1}\n")
    assert main(["study", "validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown arm a method 'nope'" in err and "Traceback" not in err
    path.write_text(SPEC + "claims:\n  - {name: x, a: base, b: {method: other, protocol: finetune}, model: a, "
                           "test: equivalence, margin: 1}\n")
    assert main(["study", "validate", str(path)]) == 0
    assert "1 claims" in capsys.readouterr().out
