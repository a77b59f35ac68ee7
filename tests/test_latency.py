"""Latency measurement: result fields, thread and mode handling, validation, the bench CLI, plots.

No assertion depends on how fast this machine is; the one time check is a lower bound set by
``time.sleep`` (a forward pass that sleeps 5 ms cannot have a median below 5 ms).
"""

from __future__ import annotations

import json
import os
import time

import pytest
import torch
from torch import nn

from prunelab.cli import main
from prunelab.errors import PrunelabError
from prunelab.export.backends import measure_backend
from prunelab.export.bench import bench
from prunelab.io import save_checkpoint
from prunelab.measure.latency import (
    LatencyResult,
    compare_latency,
    format_table,
    latency_of,
    measure_latency,
    round_channels,
)
from prunelab.measure.timing import time_interleaved
from prunelab.models import create, resolve
from prunelab.report.latency import plot_latency

torch.set_num_threads(1)
FAST = {"warmup": 1, "repeats": 3, "min_time_s": 0.0}


def tiny() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 2))


class Sleeper(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.005)
        return x


def test_result_fields_are_sane_and_state_is_restored():
    model = tiny().train()
    threads_before = torch.get_num_threads()
    r = measure_latency(model, (3, 8, 8), batch_size=2, threads=1, **FAST)
    assert isinstance(r, LatencyResult)
    assert 0 < r.median_ms <= r.p90_ms
    assert r.mean_ms > 0 and r.std_ms >= 0
    assert r.repeats >= 3 and r.batch_size == 2 and r.threads == 1
    assert r.device == "cpu" and r.backend == "eager"
    assert r.peak_memory_mb is None or r.peak_memory_mb >= 0
    assert r.per_sample_ms == pytest.approx(r.median_ms / 2)
    assert r.throughput == pytest.approx(2000.0 / r.median_ms)
    assert model.training, "the model's train/eval mode must be restored"
    assert torch.get_num_threads() == threads_before
    assert set(r.to_dict()) >= {"median_ms", "p90_ms", "mean_ms", "std_ms", "repeats", "batch_size", "threads",
                                "device", "backend", "peak_memory_mb"}


def test_median_is_bounded_below_by_a_sleep():
    r = measure_latency(Sleeper(), (1,), warmup=0, repeats=3, min_time_s=0.0)
    assert r.median_ms >= 5.0


class Hog(nn.Module):
    """Touches a fresh 64 MiB buffer on every call (above glibc's largest mmap threshold, so it is
    mapped and unmapped each time rather than recycled from the heap)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.ones(16 * 2**20).sum()


def test_cpu_peak_memory_sees_a_64_mib_buffer():
    r = measure_latency(Hog(), (1,), warmup=1, repeats=2, min_time_s=0.0)
    if r.peak_memory_mb is None:
        pytest.skip("no /proc peak-RSS counters on this platform")
    assert r.peak_memory_mb >= 60
    small = measure_latency(tiny(), (3, 8, 8), **FAST)
    assert small.peak_memory_mb < 60


def test_min_time_extends_the_repeats():
    r = measure_latency(Sleeper(), (1,), warmup=0, repeats=1, min_time_s=0.03)
    assert r.repeats >= 2 and r.mean_ms * r.repeats >= 30.0  # timed calls continue until 30 ms are filled


def test_onnxruntime_backend_fields():
    r = measure_backend(tiny(), (3, 8, 8), batch_size=3, threads=1, backend="onnxruntime", **FAST)
    assert r.backend == "onnxruntime" and r.threads == 1 and r.batch_size == 3 and r.median_ms > 0


def test_interleaved_timing_gives_every_candidate_the_same_rounds():
    calls: list[str] = []
    samples = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, warmup=0,
                               repeats=4)
    assert len(samples["a"]) == len(samples["b"]) == 4
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]  # the starting candidate rotates


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": 0}, "batch size"),
    ({"threads": (os.cpu_count() or 1) + 1}, "thread count"),
    ({"threads": 0}, "thread count"),
    ({"backend": "tensorrt"}, "backend"),
    ({"device": "tpu"}, "device"),
    ({"repeats": 0}, "repeat"),
])
def test_bad_settings_raise_one_line(kwargs, message):
    with pytest.raises(PrunelabError, match=message) as err:
        measure_latency(tiny(), (3, 8, 8), **{**FAST, **kwargs})
    assert "\n" not in str(err.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(PrunelabError, match="CUDA is not available"):
        measure_latency(tiny(), (3, 8, 8), device="cuda", **FAST)


@pytest.mark.parametrize("n, multiple, kwargs, expected", [
    (60, 8, {}, 64), (59, 8, {}, 56), (61, 8, {}, 64), (3, 8, {}, 8), (100, 16, {}, 96), (104, 16, {}, 112),
    (62, 8, {"maximum": 62}, 62), (2, 8, {"minimum": 1}, 1), (12.4, 4, {}, 12), (16, 1, {}, 16),
])
def test_round_channels(n, multiple, kwargs, expected):
    assert round_channels(n, multiple, **kwargs) == expected


def test_round_channels_rejects_nonsense():
    with pytest.raises(PrunelabError):
        round_channels(10, 0)
    with pytest.raises(PrunelabError):
        round_channels(0, 8)


def test_latency_of_and_bench_table():
    assert latency_of(tiny(), (3, 8, 8), batch_size=1, threads=1, repeats=3, min_time_s=0.0) > 0
    results = bench(tiny(), (3, 8, 8), batch_sizes=(1, 4), threads=(1,), backends=("eager", "onnxruntime"), **FAST)
    assert [(r.backend, r.batch_size) for r in results] == [("eager", 1), ("eager", 4), ("onnxruntime", 1),
                                                            ("onnxruntime", 4)]
    text = format_table(results, title="tiny")
    assert text.splitlines()[0] == "tiny" and "median ms" in text and len(text.splitlines()) == 3 + 4


def test_bench_validates_everything_before_measuring():
    with pytest.raises(PrunelabError, match="batch size"):
        bench(tiny(), (3, 8, 8), batch_sizes=(1, 0), **FAST)


def test_compare_and_plot(tmp_path):
    small = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    big = nn.Sequential(nn.Flatten(), nn.Linear(12, 64), nn.ReLU(), nn.Linear(64, 2))
    rows = compare_latency({"small": (small, None, 0.5, "reduced"), "big": (big, 1000, 0.7, "pruned")}, (12,),
                           batch_sizes=(1, 4), threads=1, warmup=1, repeats=3)
    assert len(rows) == 4
    first = {r["name"]: r for r in rows if r["batch_size"] == 1}
    assert first["small"]["params"] == 12 * 2 + 2  # counted from the model when not given
    assert first["big"]["params"] == 1000 and first["big"]["group"] == "pruned"
    path = plot_latency(rows, tmp_path / "latency.png", title="test")
    data = (tmp_path / "latency.png").read_bytes()
    assert path.endswith("latency.png") and data[:8] == b"\x89PNG\r\n\x1a\n"
    study_rows = [{"name": "a", "method": "reduced", "group": "reduced", "params": 100, "acc": 0.5, "latency_ms": 1.0},
                  {"name": "b", "group": "pruned", "params": 90, "acc": float("nan"), "latency_ms": 2.0}]
    plot_latency(study_rows, tmp_path / "study.svg")
    assert (tmp_path / "study.svg").read_text().lstrip().startswith("<?xml")
    with pytest.raises(PrunelabError, match="batch size 7"):
        plot_latency(rows, tmp_path / "none.png", batch_size=7)


# --------------------------------------------------------------------------------------------- CLI

BENCH_FAST = ["--warmup", "1", "--repeats", "2", "--min-time", "0"]


def test_cli_bench_zoo_model_json(tmp_path, capsys):
    out = tmp_path / "lat.json"
    rc = main(["bench", "mlp", "--batch-sizes", "1", "2", "--threads", "1", "--backend", "eager", "onnxruntime",
               *BENCH_FAST, "--json", "--out", str(out)])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert printed["input_shape"] == [64]
    assert [(r["backend"], r["batch_size"]) for r in printed["results"]] == [
        ("eager", 1), ("eager", 2), ("onnxruntime", 1), ("onnxruntime", 2)]


def test_cli_bench_checkpoint_table(tmp_path, capsys):
    path = tmp_path / "cnn.pt"
    save_checkpoint(path, arch=resolve("cnn").to_dict(), state_dict=create("cnn").state_dict())
    assert main(["bench", str(path), "--batch-sizes", "2", "--threads", "1", *BENCH_FAST]) == 0
    text = capsys.readouterr().out
    assert "input 1x8x8" in text and "median ms" in text


@pytest.mark.parametrize("extra, message", [
    (["--batch-sizes", "0"], "batch size"),
    (["--threads", str((os.cpu_count() or 1) + 1)], "thread count"),
    (["--backend", "tvm"], "backend"),
    (["--input-size", "3x0"], "input size"),
    (["--input-size", "3x8x8"], "cannot run on input"),
])
def test_cli_bench_bad_settings_exit_2(extra, message, capsys):
    assert main(["bench", "mlp", *BENCH_FAST, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_cli_bench_file_that_is_not_a_checkpoint_exits_2(tmp_path, capsys):
    bogus = tmp_path / "notes.pt"
    bogus.write_text("not a model")
    assert main(["bench", str(bogus), *BENCH_FAST]) == 2
    err = capsys.readouterr().err
    assert "notes.pt" in err and len(err.strip().splitlines()) == 1
    plain = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, plain)
    assert main(["bench", str(plain), *BENCH_FAST]) == 2
    assert "not a prunelab checkpoint" in capsys.readouterr().err
