"""Honest bench: interleaving, median and IQR against numpy, spread and load warnings, bounded time
(with a fake clock), progress, limits on the command line; the zoo listing cache against a live count;
and the layering of measure and export. No assertion depends on how fast this machine is."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from prunelab.cli import main
from prunelab.errors import PrunelabError
from prunelab.export.backends import Backend, register_backend
from prunelab.export.bench import bench_compare
from prunelab.measure import timing

torch.set_num_threads(1)


@pytest.mark.parametrize("samples", [[1.0, 2.0, 3.0, 4.0], [5.0], [3.0, 1.0, 2.0], list(np.linspace(0, 7, 11) ** 2)])
def test_summary_against_numpy(samples):
    stats = timing.summarize(samples)
    q25, q50, q75 = np.percentile(samples, [25, 50, 75])
    assert stats["median_ms"] == pytest.approx(q50)
    assert stats["iqr_ms"] == pytest.approx(q75 - q25)
    assert stats["mean_ms"] == pytest.approx(np.mean(samples)) and stats["std_ms"] == pytest.approx(np.std(samples))


def test_spread_and_busy_warnings(monkeypatch):
    assert timing.spread_warning("m", {"median_ms": 10.0, "iqr_ms": 0.5}) is None
    assert "large spread" in timing.spread_warning("m", {"median_ms": 10.0, "iqr_ms": 2.0})
    monkeypatch.setattr(timing.os, "getloadavg", lambda: (5.0, 5.0, 5.0))
    monkeypatch.setattr(timing.os, "cpu_count", lambda: 2)
    assert "machine is busy (load average 5.0 on 2 CPUs" in timing.busy_warning(1)
    monkeypatch.setattr(timing.os, "getloadavg", lambda: (0.9, 0.5, 0.5))
    assert timing.busy_warning(1) is None


def test_time_is_bounded_with_a_fake_clock(monkeypatch):
    now = [0.0]

    def clock() -> float:
        now[0] += 1.0  # every reading of the clock is one second later
        return now[0]

    monkeypatch.setattr(timing.time, "perf_counter", clock)
    samples = timing.time_interleaved({"a": lambda: None, "b": lambda: None}, warmup=0, repeats=1000,
                                      max_time_s=20.0)
    assert 1 <= len(samples["a"]) < 1000 and len(samples["a"]) == len(samples["b"])
    with pytest.raises(PrunelabError, match="maximum time"):
        timing.time_interleaved({"a": lambda: None}, max_time_s=0.0)
    with pytest.raises(PrunelabError, match="minimum time"):
        timing.check_timing(1, 10, 1e9)
    with pytest.raises(PrunelabError, match="repeat count"):
        timing.check_timing(1, 10**9, 0.0)


def test_models_and_backends_are_interleaved_call_by_call():
    calls: list[str] = []

    def recorder(model, input_shape, x, threads, device):
        return lambda: calls.append(f"{model.tag}/rec")

    def other(model, input_shape, x, threads, device):
        return lambda: calls.append(f"{model.tag}/other")

    register_backend(Backend("test-recorder", recorder))
    register_backend(Backend("test-other", other))
    a, b = nn.Identity(), nn.Identity()
    a.tag, b.tag = "a", "b"
    messages: list[str] = []
    results, _ = bench_compare({"a": a, "b": b}, (3,), batch_sizes=[1, 2], threads=[1],
                               backends=["test-recorder", "test-other"], warmup=0, repeats=3, min_time_s=0.0,
                               progress=messages.append)
    timed = calls[-12:]  # the second (threads, batch) group: 3 rounds of 4 configurations
    rounds = [timed[i:i + 4] for i in range(0, 12, 4)]
    assert all(sorted(r) == ["a/other", "a/rec", "b/other", "b/rec"] for r in rounds)  # one call each per round
    assert rounds[0][0] != rounds[1][0]  # the starting configuration rotates
    assert [(r.model, r.backend, r.batch_size) for r in results] == [
        ("a", "test-recorder", 1), ("a", "test-recorder", 2), ("a", "test-other", 1), ("a", "test-other", 2),
        ("b", "test-recorder", 1), ("b", "test-recorder", 2), ("b", "test-other", 1), ("b", "test-other", 2)]
    assert all(r.repeats == 3 and r.iqr_ms is not None for r in results)
    assert any("timing 4 configuration(s) interleaved" in m for m in messages)
    assert sum("preparing" in m for m in messages) == 8


@pytest.mark.parametrize("extra, message", [
    (["--min-time", "1e9"], "minimum time"),
    (["--max-time", "1e9"], "maximum time per configuration"),
    (["--max-time", "1", "--min-time", "2"], "exceeds the maximum time"),
    (["--repeats", "1000000000"], "repeat count"),
    (["--backend", "deploy", "--sparse"], "cannot be combined with --backend deploy"),
])
def test_cli_bench_limits(extra, message, capsys):
    assert main(["bench", "mlp", "--batch-sizes", "1", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_cli_bench_help_states_the_limits(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "up to 600" in text and "1 to 100000" in text and "at most --max-time" in text


# --------------------------------------------------------------------------------------------- listing


def test_zoo_cache_is_current_and_equals_a_live_count():
    from prunelab.cli import models

    data = models.cached_counts()
    assert data is not None, ("src/prunelab/cli/zoo_counts.json is stale or missing; regenerate it with "
                              "python -m prunelab.cli.models --write-cache")
    assert data["rows"] == json.loads(json.dumps(models.live_zoo_rows()))


def test_listing_counts_equal_the_published_counts(capsys):
    from test_counting import PUBLISHED

    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    for name, (params, weights, macs, rel) in PUBLISHED.items():
        assert rows[name]["params"] == params and rows[name]["conv_linear_weights"] == weights
        assert abs(rows[name]["macs"] - macs) <= rel * macs


def test_info_from_the_cache_equals_a_live_report():
    from prunelab.cli.info import describe

    for name in ("resnet20", "wrn-16-1", "mlp"):
        assert describe(name) == json.loads(json.dumps(describe(name, use_cache=False)))
