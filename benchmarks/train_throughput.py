"""Training throughput: prunelab's trainer vs a seed-code-style DataLoader loop vs compute alone.

CIFAR ResNet-20 on 32x32 synthetic data, batch 128, SGD (momentum 0.9, weight decay 5e-4), three
ways measured side by side in one run:

* ``compute-only``: one pre-made batch on the device fed again and again (forward, loss, backward,
  step): the ceiling for any data pipeline with the same numerics.
* ``prunelab``: ``prunelab.train.Trainer`` on an in-memory synthetic set: the permutation, batch
  slicing, batched pad-4 crop + flip, metric bookkeeping and the LR schedule all included.
* ``reference``: the seed papers' loop (pytorch-prunes / PFS style): a ``torch.utils.data.DataLoader``
  over uint8 HWC images with per-sample reflect-pad-4 random crop, random flip, to-tensor and
  normalisation in ``__getitem__``, NCHW float32, batches copied to the device every step.

Warm-up steps are excluded and images/s come from each method's median step time. By default the
three methods run interleaved step by step (the prunelab trainer's ``on_step_end`` runs one timed
step of each other method), so load from other processes on a shared machine hits all three alike;
with DataLoader workers (default on CUDA) they run one after another instead, so the workers'
prefetching cannot overlap the other methods' steps. Compute-only and prunelab use the trainer's
numerics: channels_last (unless ``--nchw``; on this CPU it makes convolutions faster too) and, on
CUDA, bfloat16 autocast (unless ``--fp32``); the reference stays float32 NCHW as in the seed code.

    python benchmarks/train_throughput.py --steps 20
    python benchmarks/train_throughput.py --device cuda --steps 300 --fp32
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from prunelab.data import load
from prunelab.data.pipeline import augment_batch, draw_augment_params
from prunelab.models import create
from prunelab.train import Callback, TrainConfig, Trainer, resolve_device

MEAN = np.array([0.4914, 0.4822, 0.4465], dtype=np.float32)
STD = np.array([0.2023, 0.1994, 0.2010], dtype=np.float32)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_model(args, device: torch.device, numerics: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create(args.model).to(device)
    if numerics and args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def sgd(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)


def autocast(args, device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda" and args.amp)


# ------------------------------------------------------------------------------------------ methods
class ComputeOnly:
    """One pre-made batch on the device, fed again and again."""

    def __init__(self, args, device: torch.device) -> None:
        self.args, self.device = args, device
        self.model = make_model(args, device, numerics=True).train()
        self.opt = sgd(self.model)
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(args.batch_size, 3, 32, 32, generator=g).to(device)
        if args.channels_last:
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.y = torch.randint(0, 10, (args.batch_size,), generator=g).to(device)

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        with autocast(self.args, self.device):
            loss = F.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        self.opt.step()


class SeedStyleCifar(torch.utils.data.Dataset):
    """uint8 HWC images with per-sample transforms, as torchvision's CIFAR10 + RandomCrop/Flip/ToTensor."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, pad: int = 4) -> None:
        self.images, self.labels, self.pad = images, labels, pad

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        img = self.images[i]
        p = self.pad
        padded = np.pad(img, ((p, p), (p, p), (0, 0)), mode="reflect")
        top, left = random.randint(0, 2 * p), random.randint(0, 2 * p)
        img = padded[top:top + 32, left:left + 32]
        if random.random() < 0.5:
            img = img[:, ::-1]
        x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div_(255)
        x = (x - torch.from_numpy(MEAN)[:, None, None]) / torch.from_numpy(STD)[:, None, None]
        return x, int(self.labels[i])


class Reference:
    """The seed codes' loop: DataLoader with per-sample transforms, float32 NCHW, copy to the device."""

    def __init__(self, args, device: torch.device, images: np.ndarray, labels: np.ndarray) -> None:
        self.device = device
        self.model = make_model(args, device, numerics=False).train()
        self.opt = sgd(self.model)
        self.loader = torch.utils.data.DataLoader(
            SeedStyleCifar(images, labels), batch_size=args.batch_size, shuffle=True, drop_last=True,
            num_workers=args.workers, pin_memory=device.type == "cuda")
        self.it = iter(self.loader)

    def step(self) -> None:
        try:
            x, y = next(self.it)
        except StopIteration:
            self.it = iter(self.loader)
            x, y = next(self.it)
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        self.opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.model(x), y)
        loss.backward()
        self.opt.step()


class StepTimer(Callback):
    """Times each prunelab step (from the end of this hook to its next call) and, when ``others`` are
    given, runs one timed step of each of them in between: the methods interleave step by step, so
    load from other processes hits all of them alike."""

    def __init__(self, args, device: torch.device, others: dict | None = None) -> None:
        self.args, self.device, self.others = args, device, others or {}
        self.times: dict[str, list[float]] = {"prunelab": [], **{k: [] for k in self.others}}
        self.last = 0.0

    def on_step_end(self, trainer) -> None:
        sync(self.device)
        now = time.perf_counter()
        record = trainer.step > self.args.warmup
        if record:
            self.times["prunelab"].append(now - self.last)
        for name, method in self.others.items():
            t0 = time.perf_counter()
            method.step()
            sync(self.device)
            if record:
                self.times[name].append(time.perf_counter() - t0)
        self.last = time.perf_counter()


def run_prunelab(args, device: torch.device, data, others: dict | None = None) -> dict[str, list[float]]:
    timer = StepTimer(args, device, others)
    model = make_model(args, device, numerics=False)
    cfg = TrainConfig(epochs=1, batch_size=args.batch_size, lr=0.05, momentum=0.9, weight_decay=5e-4,
                      schedule="cosine", device=str(device), amp=args.amp, channels_last=args.channels_last,
                      max_steps=args.warmup + args.steps + 1, seed=0)
    Trainer(model, data, cfg, callbacks=[timer]).fit()
    return timer.times


def run_alone(method, args, device: torch.device) -> list[float]:
    times = []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        method.step()
        sync(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    return times


def data_path_times(args, device: torch.device, data, images: np.ndarray, labels: np.ndarray,
                    batches: int = 40) -> dict[str, list[float]]:
    """Seconds per batch of the two data paths alone (no model), interleaved batch by batch: prunelab's
    slice of the resident tensors plus batched crop/flip, and the reference DataLoader's next batch
    copied to the device."""
    x_all, y_all = data.train.x.to(device), data.train.y.to(device)
    order = torch.randperm(len(data.train)).to(device)
    dy, dx, flip = draw_augment_params(len(data.train), data.augment, None, device)
    loader = Reference(args, device, images, labels).loader
    it = iter(loader)
    times: dict[str, list[float]] = {"prunelab": [], "reference": []}
    b = args.batch_size
    for i in range(batches):
        sl = slice((i * b) % (len(order) - b), (i * b) % (len(order) - b) + b)
        sync(device)
        t0 = time.perf_counter()
        x = augment_batch(x_all.index_select(0, order[sl]), data.augment, params=(dy[sl], dx[sl], flip[sl]))
        y = y_all.index_select(0, order[sl])
        sync(device)
        times["prunelab"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            x, y = next(it)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        sync(device)
        times["reference"].append(time.perf_counter() - t0)
    return times


def measure(args, device: torch.device, data, images: np.ndarray, labels: np.ndarray) -> dict[str, list[float]]:
    """Per-step seconds of each method: interleaved step by step, or one method after another."""
    times: dict[str, list[float]] = {"compute-only": [], "prunelab": [], "reference": []}
    for _ in range(args.repeats):
        compute, reference = ComputeOnly(args, device), Reference(args, device, images, labels)
        if args.schedule == "interleaved":
            got = run_prunelab(args, device, data, {"compute-only": compute, "reference": reference})
        else:
            got = {"compute-only": run_alone(compute, args, device), "prunelab": run_prunelab(args, device, data),
                   "reference": run_alone(reference, args, device)}
        for k, v in got.items():
            times[k].extend(v)
    return times


# --------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20, help="timed steps per method")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before timing")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=None,
                   help="reference DataLoader workers (default 0 on CPU, 4 on CUDA)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--repeats", type=int, default=1, help="repeat the whole measurement (pooled)")
    p.add_argument("--schedule", choices=("interleaved", "blocks"), default=None,
                   help="interleave the methods step by step (default without DataLoader workers, robust on a "
                        "shared machine) or run them one after another (default with workers, whose prefetching "
                        "would otherwise overlap the other methods' steps)")
    p.add_argument("--fp32", action="store_true", help="on CUDA: no autocast, no channels_last for prunelab")
    p.add_argument("--nchw", action="store_true", help="no channels_last for prunelab and compute-only")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    args.amp = device.type == "cuda" and not args.fp32
    args.channels_last = not (args.nchw or args.fp32)
    if args.workers is None:
        args.workers = 4 if device.type == "cuda" else 0
    if args.schedule is None:
        args.schedule = "interleaved" if args.workers == 0 else "blocks"
    n = (args.warmup + args.steps + 1) * args.batch_size
    data = load("synthetic", shape="3x32x32", n_train=n, n_val=0, n_test=args.batch_size, seed=0)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n)
    random.seed(0)

    times = measure(args, device, data, images, labels)
    best = {k: args.batch_size / statistics.median(v) for k, v in times.items()}
    ratios = {"prunelab/compute-only": best["prunelab"] / best["compute-only"],
              "prunelab/reference": best["prunelab"] / best["reference"],
              "reference/compute-only": best["reference"] / best["compute-only"]}
    data_ms = {k: 1000 * statistics.median(v[2:]) for k, v in
               data_path_times(args, device, data, images, labels).items()}
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    setup = {"model": args.model, "batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup,
             "repeats": args.repeats, "schedule": args.schedule, "statistic": "median step time",
             "device": str(device), "gpu": gpu, "threads": torch.get_num_threads(),
             "cpus": os.cpu_count(), "reference_workers": args.workers, "amp_bf16": args.amp,
             "channels_last": args.channels_last, "torch": torch.__version__}
    if args.json:
        json.dump({"setup": setup, "images_per_s": best, "ratios": ratios, "data_path_ms_per_batch": data_ms},
                  sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    where = gpu or f"CPU, {torch.get_num_threads()} threads of {os.cpu_count()} cores"
    numerics = " + ".join(["bf16 autocast" if args.amp else "fp32",
                           "channels_last" if args.channels_last else "NCHW"])
    print(f"{args.model}, synthetic 3x32x32, batch {args.batch_size}, {where}; {args.steps} timed steps x "
          f"{args.repeats} after {args.warmup} warm-up, {args.schedule}, images/s from the median step time; "
          f"compute-only and prunelab: {numerics}; reference: fp32 NCHW, DataLoader workers={args.workers}")
    print(f"{'method':<34}{'images/s':>12}{'x compute-only':>16}{'x reference':>13}")
    rows = [("compute-only (one pre-made batch)", "compute-only"), ("prunelab Trainer (in-memory)", "prunelab"),
            ("reference (DataLoader, per-sample)", "reference")]
    for label, key in rows:
        v = best[key]
        print(f"{label:<34}{v:>12.1f}{v / best['compute-only']:>16.3f}{v / best['reference']:>13.3f}")
    print(f"prunelab / compute-only = {ratios['prunelab/compute-only']:.3f} (goal >= 0.95); "
          f"prunelab / reference = {ratios['prunelab/reference']:.2f}x (goal >= 1.3x)")
    print(f"data path alone, ms per batch of {args.batch_size} (median, interleaved): prunelab "
          f"{data_ms['prunelab']:.2f}, reference {data_ms['reference']:.2f} "
          f"({data_ms['reference'] / data_ms['prunelab']:.1f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
