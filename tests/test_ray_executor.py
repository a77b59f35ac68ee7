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


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_executor_runs_a_study(tmp_path, ray_instance):
    (tmp_path / "spec.yaml").write_text(SPEC)
    result = run_study(tmp_path / "spec.yaml", tmp_path / "ray", executor="ray", workers=2, progress=False)
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


STREAMED = """
name: ray-stream
data: {name: imagefolder-stream, root: ROOT, options: {size: 16, resize: 18, workers: 1}}
train: {epochs: 1, batch_size: 8, lr: 0.05, device: cpu}
models: [cnn]
methods: [dense]
seeds: [0, 1]
"""


def test_ray_runs_a_study_of_streamed_runs_with_the_local_numbers(tmp_path, ray_instance):
    """Each Ray task reads its run's image folder through DataLoader workers of its own."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("val", 4)):
        for c in ("a", "b"):
            (tmp_path / "img" / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray((rng.random((20, 24, 3)) * 255).astype(np.uint8)).save(
                    tmp_path / "img" / split / c / f"{i}.jpg")
    (tmp_path / "spec.yaml").write_text(STREAMED.replace("ROOT", str(tmp_path / "img")))
    result = run_study(tmp_path / "spec.yaml", tmp_path / "ray", executor="ray", workers=2, progress=False)
    assert result.counts["done"] == 2, result.failures
    local = run_study(tmp_path / "spec.yaml", tmp_path / "local", progress=False)
    got = load_results(tmp_path / "ray").set_index("run_id").sort_index()
    ref = load_results(tmp_path / "local").set_index("run_id").sort_index()
    assert local.counts["done"] == 2 and got["acc"].tolist() == ref["acc"].tolist()
    assert got["loss"].tolist() == ref["loss"].tolist()
