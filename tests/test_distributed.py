"""A two-process gloo run under torchrun: both ranks end with the same weights, all_reduce_ sums."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from prunelab.train import distributed as dist

WORKER = textwrap.dedent('''
    import sys
    import torch
    from torch import nn

    import prunelab.data as D
    from prunelab.train import TrainConfig, Trainer
    from prunelab.train import distributed as dist

    torch.set_num_threads(1)
    out = sys.argv[1]
    assert dist.init_from_env() and dist.is_distributed()
    rank, world = dist.rank(), dist.world_size()
    reduced = dist.all_reduce_(torch.tensor([float(rank + 1), 10.0 * rank]), "sum")
    biggest = dist.all_reduce_(torch.tensor([rank]), "max")
    torch.manual_seed(100 + rank)  # a different init per rank: DDP must start every rank from rank 0's
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                          nn.Linear(512, 10))
    model[1].register_buffer("weight_mask", torch.ones(8, dtype=torch.bool))
    data = D.load("synthetic", shape="1x8x8", n_train=1295, n_val=64, n_test=256, seed=0)
    trainer = Trainer(model, data, TrainConfig(epochs=2, batch_size=32, lr=0.05, schedule="cosine", device="cpu"))
    result = trainer.fit()
    torch.save({"state": model.state_dict(), "reduced": reduced, "max": biggest, "world": world,
                "steps_per_epoch": trainer.steps_per_epoch, "final": result.final}, f"{out}/rank{rank}.pt")
    dist.destroy()
''')


def test_all_reduce_is_a_no_op_in_one_process():
    t = torch.tensor([1.0, 2.0])
    assert dist.all_reduce_(t) is t and t.tolist() == [1.0, 2.0]
    assert not dist.is_distributed() and dist.rank() == 0 and dist.world_size() == 1
    dist.barrier()


@pytest.mark.slow
def test_two_process_gloo_run_keeps_ranks_identical(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", str(script),
         str(tmp_path)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["world"] == r1["world"] == 2
    assert r0["reduced"].tolist() == r1["reduced"].tolist() == [3.0, 10.0]
    assert r0["max"].tolist() == [1]
    assert r0["state"].keys() == r1["state"].keys()
    for key in r0["state"]:
        assert torch.equal(r0["state"][key], r1["state"][key]), key
    # the 1295 training samples are sharded: 647 per rank, 21 batches of 32 per epoch
    assert r0["steps_per_epoch"] == 21 and r0["final"]["step"] == 42
    for k in ("train_loss", "train_acc", "val_acc", "test_acc", "test_loss"):
        assert r0["final"][k] == r1["final"][k]
    assert r0["final"]["test_acc"] > 0.5  # chance is 0.1
