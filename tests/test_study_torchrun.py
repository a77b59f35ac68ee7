"""Study runs launched by torchrun: every run data-parallel on two gloo processes (CPU), shared
artifacts produced by both ranks in step and kept once, outcomes and failures recorded by the runner."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from prunelab.checkpoint import load_model
from prunelab.study import load_results, run_study
from prunelab.study.executors import Job, TorchrunExecutor, _Launch

SPEC = """
name: ddp
data: digits
train: {epochs: 1, max_steps: 6, batch_size: 32, lr: 0.05, device: cpu}
models: [cnn]
methods:
  - dense
  - {name: fisher, kind: fisher, prune_every: 1, channels_per_prune: 8, finetune: {lr: 0.01},
     targets: [{params_ratio: 0.6}]}
  - {name: broken, kind: sleep, fail: true, targets: [{sparsity: 0.5}]}
seeds: [0]
"""


def test_runs_execute_data_parallel_under_torchrun(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    out = tmp_path / "out"
    result = run_study(spec, out, executor="torchrun", nproc_per_node=2, threads=1, progress=False)
    assert result.counts == {"done": 2, "failed": 1, "pending": 0, "running": 0}, result.failures
    assert [e for _, e in result.failures] == ["RuntimeError: synthetic failure requested for seed 0"]
    conn = sqlite3.connect(out / "results.db")
    envs = {m: json.loads(e) for m, e in conn.execute("SELECT method, env FROM runs WHERE status = 'done'")}
    conn.close()
    assert {m: e["world_size"] for m, e in envs.items()} == {"dense": 2, "fisher": 2}
    df = load_results(out).set_index("method")
    assert df.loc["dense", "params"] == 24_170  # the zoo's cnn (1x8x8 digits, 10 classes)
    assert 0.5 <= df.loc["fisher", "params"] / 24_170 <= 0.7  # the pruned model was compressed to the target
    # each shared artifact was produced once, by both ranks together, and kept once (rank 0's)
    keys = [json.loads(p.read_text())["what"] for p in (out / "artifacts").glob("*/key.json")]
    assert sorted(keys) == ["dense", "structured-prune"]
    dense_dir = next(p.parent for p in (out / "artifacts").glob("*/key.json") if '"dense"' in p.read_text())
    assert sum(p.numel() for p in load_model(dense_dir / "model.pt").model.parameters()) == 24_170
    assert not list((out / "artifacts").glob(".*.tmp-*"))  # no leftovers of the producers
    assert not (out / "runs" / ".launch").exists()  # launch folders are cleaned up

def test_a_launch_that_dies_without_an_outcome_fails_its_run_with_its_log(tmp_path):
    folder = tmp_path / "launch"
    folder.mkdir()
    (folder / "launch.log").write_text("starting\nTraceback (most recent call last):\nRuntimeError: rank 1 died\n")
    outcome = TorchrunExecutor._outcome(_Launch("r1", None, folder, None), 1)  # type: ignore[arg-type]
    assert outcome["ok"] is False
    assert outcome["error"].startswith("torchrun exited with status 1 and no outcome:")
    assert outcome["error"].endswith("RuntimeError: rank 1 died")


def test_the_executor_checks_its_arguments():
    import pytest

    from prunelab.errors import PrunelabError

    job = Job(str(Path(".")), str(Path(".")))
    with pytest.raises(PrunelabError, match="nproc-per-node"):
        TorchrunExecutor(job, 1, 0)
    with pytest.raises(PrunelabError, match="workers"):
        TorchrunExecutor(job, 0, 2)
