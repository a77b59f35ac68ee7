"""Streamed data under torchrun: two gloo processes on CPU, each reading its own shard of every epoch
through a DistributedSampler, ending with the same weights as each other and as the in-memory run."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

WORKER = textwrap.dedent('''
    import io, json, sys, contextlib
    import torch
    from torch import nn
    from torch.utils.data import Dataset

    import prunelab.data as D
    from prunelab.cli import main
    from prunelab.train import TrainConfig, Trainer
    from prunelab.train import distributed as dist

    torch.set_num_threads(1)
    out = sys.argv[1]
    assert dist.init_from_env() and dist.is_distributed()
    rank = dist.rank()

    class Logged(Dataset):
        """A user's Dataset that notes which samples this process read."""
        def __init__(self, split):
            self.x, self.y, self.seen = split.x, split.y, []
        def __len__(self):
            return len(self.y)
        def __getitem__(self, i):
            self.seen.append(int(i))
            return self.x[i], int(self.y[i])

    mem = D.load("synthetic", shape="1x8x8", n_train=301, n_val=32, n_test=64, seed=0)
    train = Logged(mem.train)
    stream = D.from_dataset(train, Logged(mem.val), Logged(mem.test), num_classes=10, augment=mem.augment)
    train.seen.clear()  # from_dataset checked the first sample
    states = {}
    for name, data in (("memory", mem), ("stream", stream)):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                              nn.Linear(512, 10))
        trainer = Trainer(model, data, TrainConfig(epochs=2, batch_size=16, lr=0.05, device="cpu"))
        final = trainer.fit().final
        states[name] = {"state": model.state_dict(), "final": final}
    sampler = trainer.feed.sampler()
    orders = [sampler.order(e).tolist() for e in range(2)]
    # the command line under torchrun prints the world size and the global batch (rank 0 only, on stderr)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        code = main(["train", "cnn", "--data", "synthetic", "--data-option", "shape=1x8x8", "--data-option",
                     "n_train=96", "--epochs", "1", "--batch-size", "16", "--device", "cpu", "--out", f"{out}/cli.pt"])
    torch.save({"states": states, "seen": train.seen, "orders": orders, "code": code,
                "stdout": buf.getvalue() if rank == 0 else ""}, f"{out}/rank{rank}.pt")
    dist.destroy()
''')


@pytest.mark.slow
def test_streamed_data_under_torchrun_gives_each_rank_its_shard_and_the_in_memory_weights(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                           str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    for r in (r0, r1):
        mem, stream = r["states"]["memory"], r["states"]["stream"]
        assert all(torch.equal(mem["state"][k], stream["state"][k]) for k in mem["state"])
        assert mem["final"]["test_acc"] == stream["final"]["test_acc"]
    assert all(torch.equal(r0["states"]["stream"]["state"][k], r1["states"]["stream"]["state"][k])
               for k in r0["states"]["stream"]["state"])
    # each rank read exactly its shard of each epoch: 150 of the 301 samples, disjoint from the other's
    n = 150
    for epoch in range(2):
        a = r0["seen"][epoch * n:(epoch + 1) * n]
        b = r1["seen"][epoch * n:(epoch + 1) * n]
        assert a == r0["orders"][epoch] and b == r1["orders"][epoch] and not set(a) & set(b)
    assert r0["orders"][0] != r0["orders"][1]  # set_epoch: a new permutation every epoch
    assert r0["code"] == r1["code"] == 0
    # --batch-size 16 is the global batch (--batch-scaling keep-global): 8 per process
    assert "world size 2, per-process batch 8, global batch 16, lr 0.1 (--batch-scaling keep-global)" in r0["stdout"]
