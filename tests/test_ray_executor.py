"""The Ray executor against a local Ray instance: same results as the local executor."""

from __future__ import annotations

import os

import pytest

from prunelab.study import load_results, run_study

SPEC = """
name: ray
data: digits
models: [a, b]
methods:
  - {name: s, kind: sleep, seconds: 0.2, epochs: 2, log: true}
targets: [{sparsity: [0.5, 0.9]}]
seeds: 2
"""


def test_ray_executor_runs_a_study(tmp_path):
    ray = pytest.importorskip("ray")
    (tmp_path / "spec.yaml").write_text(SPEC)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = run_study(tmp_path / "spec.yaml", tmp_path / "ray", executor="ray", workers=2, progress=False)
    finally:
        ray.shutdown()
    assert result.counts["done"] == 8 and result.executed == 8, result.failures
    local = run_study(tmp_path / "spec.yaml", tmp_path / "local", progress=False)
    assert local.executed == 8
    got = load_results(tmp_path / "ray").set_index("run_id").sort_index()
    ref = load_results(tmp_path / "local").set_index("run_id").sort_index()
    assert got.index.tolist() == ref.index.tolist()
    for col in ("acc", "loss", "params", "macs", "sparsity"):
        assert got[col].tolist() == ref[col].tolist()
    assert set(got["attempt"]) == {1}
    # claims belong to the driver; the runs executed in Ray worker processes
    assert set(got["worker"]) == {f"{os.uname().nodename}:{os.getpid()}"}
    pids = {line.split()[1] for line in (tmp_path / "ray" / "executions.log").read_text().splitlines()}
    assert str(os.getpid()) not in pids and len(pids) >= 1
