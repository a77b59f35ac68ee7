"""Commands under torchrun say what they do and keep the single-process steps by default.

``--batch-scaling keep-global`` (default): ``--batch-size`` is the global batch, split over the
processes, so the same command takes the same number of steps at the same learning rate on 1 or N
processes. ``scale-lr``: every process takes ``--batch-size`` and the learning rate is multiplied by
the world size (Goyal et al. 2017). Checked on the config arithmetic and in a two-process gloo run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from prunelab.cli import main
from prunelab.errors import PrunelabError
from prunelab.train import TrainConfig
from prunelab.train.distributed import scale_for_world


def test_scale_for_world_by_hand():
    c = TrainConfig(batch_size=128, lr=0.1)
    assert scale_for_world(c, 1) is c
    kept = scale_for_world(c, 4)
    assert (kept.batch_size, kept.lr) == (32, 0.1)
    scaled = scale_for_world(c, 4, "scale-lr")
    assert (scaled.batch_size, scaled.lr) == (128, pytest.approx(0.4))
    with pytest.raises(PrunelabError, match="does not split over 3 processes"):
        scale_for_world(c, 3)
    with pytest.raises(PrunelabError, match="batch scaling"):
        scale_for_world(c, 2, "sometimes")


TRAIN = ["train", "mlp", "--data", "digits", "--epochs", "1", "--batch-size", "64", "--lr", "0.05", "--device", "cpu",
         "--quiet", "--json"]


def _torchrun(tmp_path, *extra: str) -> tuple[dict, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                           "-m", "prunelab", *TRAIN, *extra], env=env, capture_output=True, text=True, timeout=180,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout), proc.stderr


@pytest.mark.slow
def test_two_processes_keep_the_single_process_steps(tmp_path, capsys):
    assert main([*TRAIN, "--out", str(tmp_path / "one.pt")]) == 0
    single = json.loads(capsys.readouterr().out)
    kept, err = _torchrun(tmp_path, "--out", str(tmp_path / "two.pt"))
    assert "world size 2, per-process batch 32, global batch 64, lr 0.05 (--batch-scaling keep-global)" in err
    assert kept["steps"] == single["steps"]  # 1295 samples: 21 steps of 64, or 2 x 21 steps of 32
    assert kept["train"]["batch_size"] == 32 and kept["train"]["lr"] == 0.05

    scaled, err = _torchrun(tmp_path, "--batch-scaling", "scale-lr", "--out", str(tmp_path / "three.pt"))
    assert "world size 2, per-process batch 64, global batch 128, lr 0.1 (--batch-scaling scale-lr)" in err
    assert scaled["train"]["lr"] == pytest.approx(0.1)
    assert scaled["steps"] == 11  # 647 samples per process, batches of 64
