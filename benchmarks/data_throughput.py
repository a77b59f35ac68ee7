"""Data throughput: the streaming path against the in-memory path, and streamed JPEG folders.

Three sections, each measured side by side in one run:

* ``cifar``: one CIFAR-shaped set (``--images`` 3x32x32 images, batch 128) trained with CIFAR
  ResNet-20 fed two ways: ``in-memory`` (the default path: float tensors resident on the device,
  one ``index_select`` and one batched pad-crop-flip per batch) and ``streaming`` (the same images
  as a uint8 ``Dataset`` read by ``--workers`` DataLoader workers, normalised and augmented on the
  device). Both see the same samples in the same order. Timed rounds of ``--steps`` training steps
  alternate between the two (so load from other processes hits both alike); images/s is the median
  round. The data-only rate (batches produced with no model) is printed too. Goal on CPU: streaming
  >= 0.9x in-memory with 2 workers.
* ``imagenet``: a generated folder of ``--jpegs`` JPEGs at 500x375 (ImageNet's typical size) in
  ImageNet's layout, streamed at 224x224 with the PFS training pipeline (random resized crop and flip
  in the workers, colour jitter 0.4, PCA lighting 0.1 and normalisation on the device), with 0, 1 and
  2 workers; each configuration runs in a fresh process: images/s over one pass and the peak
  resident memory of the main process and of the largest worker.
* ``gpu`` (CUDA only): ResNet-50 at batch 256 trained from the streamed folder against the
  compute-only ceiling (one resident batch fed again and again). Goal: >= 0.9x.

    python benchmarks/data_throughput.py --quick
    python benchmarks/data_throughput.py --sections cifar imagenet --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

import prunelab.data as D
from prunelab.data.base import Augment, DataBundle, Split
from prunelab.models import create
from prunelab.train import TrainConfig, Trainer

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)


class Uint8Images(Dataset):
    """CIFAR-like storage: uint8 CHW images, one read per item (what a user's Dataset does)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


class Normalise:
    """Device op of the streaming path: uint8 -> float -> CIFAR normalisation."""

    def __call__(self, x: torch.Tensor, generator) -> torch.Tensor:
        mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
        return (x.float().div_(255.0) - mean) / std


def peak_kib() -> tuple[int, int]:
    """Peak resident memory of this process and of its largest finished child, in KiB."""
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)


# -------------------------------------------------------------------------------------------- cifar
def cifar_bundles(n: int, workers: int) -> tuple[DataBundle, DataBundle]:
    g = torch.Generator().manual_seed(0)
    x8 = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    x = (x8.float() / 255.0 - mean) / std
    aug = Augment(pad=4, flip=True, pad_mode="reflect")
    empty = Split(torch.zeros(0, 3, 32, 32), torch.zeros(0, dtype=torch.int64))
    memory = DataBundle("cifar-shaped", Split(x, y), empty, empty, 10, (3, 32, 32), augment=aug)
    stream = D.from_dataset(Uint8Images(x8, y), num_classes=10, name="cifar-shaped", input_shape=(3, 32, 32),
                            augment=aug, transform=Normalise(), workers=workers, prefetch=4)
    return memory, stream


class Rounds:
    """Steps of several trainers in alternating timed rounds."""

    def __init__(self, trainers: dict[str, Trainer], steps: int) -> None:
        self.trainers, self.steps = trainers, steps
        self.iters = {name: self._batches(t) for name, t in trainers.items()}
        self.times: dict[str, list[float]] = {name: [] for name in trainers}

    @staticmethod
    def _batches(trainer: Trainer):
        epoch = 0
        while True:
            yield from trainer.feed.epoch(epoch)
            epoch += 1

    def step(self, name: str) -> None:
        t = self.trainers[name]
        x, y = next(self.iters[name])
        t.optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(t.model(x), y).backward()
        t.optimizer.step()

    def run(self, rounds: int, warmup: int) -> dict[str, float]:
        for name in self.trainers:
            for _ in range(warmup):
                self.step(name)
        for _ in range(rounds):
            for name in self.trainers:
                start = time.perf_counter()
                for _ in range(self.steps):
                    self.step(name)
                self.times[name].append(time.perf_counter() - start)
        bs = next(iter(self.trainers.values())).config.batch_size
        return {name: self.steps * bs / statistics.median(ts) for name, ts in self.times.items()}


def data_only(data: DataBundle, batches: int) -> float:
    feed = D.Feed(data, batch_size=128)

    def epochs():
        for epoch in range(10**6):
            yield from feed.epoch(epoch)

    it, n = epochs(), 0
    next(it)  # workers started
    start = time.perf_counter()
    for _ in range(batches):
        x, _ = next(it)
        n += x.shape[0]
    rate = n / (time.perf_counter() - start)
    feed.close()
    return rate


def section_cifar(args) -> dict:
    memory, stream = cifar_bundles(args.images, args.workers)
    cfg = TrainConfig(epochs=10**6, batch_size=128, lr=0.05, device=args.device, augment=True)
    trainers = {}
    for name, data in (("in-memory", memory), ("streaming", stream)):
        torch.manual_seed(0)
        trainers[name] = Trainer(create("resnet20"), data, cfg)
    rates = Rounds(trainers, args.steps).run(args.rounds, warmup=2)
    only = {"in-memory": data_only(memory, args.data_batches), "streaming": data_only(stream, args.data_batches)}
    for t in trainers.values():
        t.feed.close()
    return {"train_images_per_s": rates, "ratio": rates["streaming"] / rates["in-memory"],
            "data_only_images_per_s": only, "workers": args.workers, "images": args.images}


# ----------------------------------------------------------------------------------------- imagenet
def make_jpegs(root: Path, n: int, classes: int = 10) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    base = (rng.random((375 // 25, 500 // 25, 3)) * 255).astype(np.uint8)
    for i in range(n):
        split = "val" if (i // classes) % 10 == 9 else "train"
        folder = root / split / f"n{i % classes:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        # smooth content (compresses like a photograph), different per image
        img = Image.fromarray(np.roll(base, i, axis=1)).resize((500, 375), Image.BILINEAR)
        noise = rng.integers(0, 24, (375, 500, 3), dtype=np.uint8)
        Image.fromarray(np.asarray(img) ^ noise).save(folder / f"img_{i:06d}.JPEG", quality=90)


def measure_imagenet(folder: str, workers: int, batch: int, device: str) -> dict:
    """One configuration, in this (fresh) process: one pass over the training images."""
    data = D.load("imagefolder-stream", folder, size=224, resize=256, scale_min=0.08, jitter=0.4, lighting=0.1,
                  workers=workers, prefetch=2)
    feed = D.Feed(data, device, batch_size=batch)
    it = iter(feed.epoch(0))
    x, _ = next(it)  # the first batch starts the workers: not timed
    n, start = 0, time.perf_counter()
    for x, _ in it:
        n += x.shape[0]
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    feed.close()  # workers exit: their peak enters RUSAGE_CHILDREN
    time.sleep(0.5)
    main, child = peak_kib()
    return {"workers": workers, "images_per_s": n / elapsed, "images": n, "peak_main_mib": main / 1024,
            "peak_worker_mib": child / 1024 if workers else 0.0}


def section_imagenet(args) -> dict:
    folder = args.folder
    tmp = None
    if folder is None:
        tmp = tempfile.TemporaryDirectory(prefix="prunelab-jpegs-")
        folder = tmp.name
        start = time.perf_counter()
        make_jpegs(Path(folder), args.jpegs)
        print(f"  generated {args.jpegs} JPEGs at 500x375 in {time.perf_counter() - start:.1f}s", file=sys.stderr)
    rows = []
    for workers in args.imagenet_workers:
        cmd = [sys.executable, __file__, "--_measure", folder, "--workers", str(workers), "--batch", "64",
               "--device", args.device]
        r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if r.returncode != 0:
            raise SystemExit(r.stderr[-2000:])
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    if tmp is not None:
        tmp.cleanup()
    return {"jpegs": args.jpegs, "rows": rows}


# ---------------------------------------------------------------------------------------------- gpu
def section_gpu(args) -> dict:
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device here: the GPU figure is not measured"}
    folder = args.folder
    if folder is None:
        folder = tempfile.mkdtemp(prefix="prunelab-jpegs-")
        make_jpegs(Path(folder), args.jpegs)
    data = D.load("imagefolder-stream", folder, size=224, resize=256, jitter=0.4, lighting=0.1,
                  workers=args.gpu_workers, prefetch=4)
    cfg = TrainConfig(epochs=10**6, batch_size=256, lr=0.1, device="cuda", channels_last=True, amp=True)
    torch.manual_seed(0)
    trainer = Trainer(create("resnet50", num_classes=data.num_classes), data, cfg)
    model, opt = trainer.model, trainer.optimizer
    x0 = torch.randn(256, 3, 224, 224, device="cuda").contiguous(memory_format=torch.channels_last)
    y0 = torch.randint(0, data.num_classes, (256,), device="cuda")

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    def timed(batches) -> float:
        n, start = 0, None
        for i, (x, y) in enumerate(batches):
            if i == 3:
                torch.cuda.synchronize()
                start, n = time.perf_counter(), 0
            step(x.contiguous(memory_format=torch.channels_last), y)
            n += x.shape[0]
        torch.cuda.synchronize()
        return n / (time.perf_counter() - start)

    compute = timed((x0, y0) for _ in range(args.gpu_steps + 3))
    stream = timed(b for _, b in zip(range(args.gpu_steps + 3), trainer.feed.epoch(0)))
    trainer.feed.close()
    return {"compute_only_images_per_s": compute, "streaming_images_per_s": stream, "ratio": stream / compute}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sections", nargs="+", default=["cifar", "imagenet", "gpu"], choices=("cifar", "imagenet", "gpu"))
    p.add_argument("--quick", action="store_true", help="small sizes: a check that everything runs")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads of the main process")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the streaming path (cifar)")
    p.add_argument("--images", type=int, default=10_000, help="CIFAR-shaped images")
    p.add_argument("--steps", type=int, default=10, help="training steps per timed round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--data-batches", type=int, default=50, help="batches timed for the data-only rates")
    p.add_argument("--jpegs", type=int, default=2000, help="generated JPEGs (500x375) for the imagenet section")
    p.add_argument("--folder", default=None, help="stream this ImageNet-style folder instead of generated JPEGs")
    p.add_argument("--imagenet-workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--gpu-workers", type=int, default=8)
    p.add_argument("--gpu-steps", type=int, default=30)
    p.add_argument("--json", default=None, metavar="PATH", help="also write every figure as JSON")
    p.add_argument("--_measure", default=None, help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=64, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args._measure is not None:
        print(json.dumps(measure_imagenet(args._measure, args.workers, args.batch, args.device)))
        return
    if args.quick:
        args.images, args.steps, args.rounds, args.data_batches, args.jpegs = 1024, 2, 2, 8, 160
        args.gpu_steps = 10
    print(f"data throughput on {args.device} ({torch.get_num_threads()} threads, {os.cpu_count()} CPUs)"
          f"{' [quick]' if args.quick else ''}")
    out: dict = {}
    if "cifar" in args.sections:
        r = out["cifar"] = section_cifar(args)
        t, d = r["train_images_per_s"], r["data_only_images_per_s"]
        print(f"cifar-shaped, batch 128, ResNet-20, streaming with {args.workers} workers:")
        print(f"  training images/s: in-memory {t['in-memory']:.0f}, streaming {t['streaming']:.0f} "
              f"-> streaming / in-memory {r['ratio']:.2f}x (goal >= 0.9x)")
        print(f"  data only images/s: in-memory {d['in-memory']:.0f}, streaming {d['streaming']:.0f}")
    if "imagenet" in args.sections:
        r = out["imagenet"] = section_imagenet(args)
        print(f"imagenet-shaped JPEG folder ({r['jpegs']} images 500x375, 90% train), streamed at 224x224, batch 64:")
        for row in r["rows"]:
            print(f"  workers {row['workers']}: {row['images_per_s']:.0f} images/s, peak memory main "
                  f"{row['peak_main_mib']:.0f} MiB, largest worker {row['peak_worker_mib']:.0f} MiB")
    if "gpu" in args.sections:
        r = out["gpu"] = section_gpu(args)
        if "skipped" in r:
            print(f"gpu: {r['skipped']}")
        else:
            print(f"gpu ResNet-50 batch 256: compute-only {r['compute_only_images_per_s']:.0f} images/s, streaming "
                  f"{r['streaming_images_per_s']:.0f} -> {r['ratio']:.2f}x (goal >= 0.9x)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
