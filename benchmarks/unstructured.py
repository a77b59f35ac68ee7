"""Unstructured pruning speed, measured side by side in one run.

(a) Global magnitude threshold + masks at 90 % for ResNet-50 (25.5M conv+linear weights): prunelab's
    ``prune(model, PruneConfig("global", 0.9))`` vs ``torch.nn.utils.prune.global_unstructured`` with
    ``L1Unstructured`` on identical weights (the masks are checked to be identical). Each repetition
    prunes a fresh copy; the copies are made outside the timed region; the two are interleaved and
    the medians compared.
(b) One training step (forward, backward, SGD with momentum and weight decay) of CIFAR ResNet-20 at
    batch 128, dense vs masked (90 % global MP; :class:`~prunelab.train.masks.MaskEnforcer` re-applies
    the masks and clears momentum after the step, as ``Trainer`` does for every model). Steps are
    interleaved call by call and medians compared; the cost of the mask enforcement alone is timed
    too, since on a noisy shared machine it is far below the noise of a whole step, and an identical
    dense copy is timed alongside as a control for the noise.

Usage: ``python benchmarks/unstructured.py [--threads 1] [--reps 5] [--steps 20] [--skip-a | --skip-b]``
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

from prunelab.measure.timing import time_interleaved
from prunelab.models import create
from prunelab.prune.unstructured import PruneConfig, get_mask, prune
from prunelab.train.masks import MaskEnforcer


def conv_linear(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def bench_global_threshold(reps: int) -> dict:
    torch.manual_seed(0)
    base = create("resnet50")
    n = sum(m.weight.numel() for m in conv_linear(base))
    names = ("prunelab", "torch.nn.utils.prune")
    wall: dict[str, list[float]] = {k: [] for k in names}
    cpu: dict[str, list[float]] = {k: [] for k in names}
    identical = None
    for r in range(reps):
        order = names if r % 2 == 0 else names[::-1]
        models = {name: copy.deepcopy(base) for name in order}
        for name in order:
            model = models[name]
            t0, c0 = time.perf_counter(), time.process_time()
            if name == "prunelab":
                prune(model, PruneConfig("global", 0.9), warn=False)
            else:
                params = [(m, "weight") for m in conv_linear(model)]
                torch_prune.global_unstructured(params, pruning_method=torch_prune.L1Unstructured, amount=0.9)
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
        if identical is None:
            pairs = zip(conv_linear(models["prunelab"]), conv_linear(models["torch.nn.utils.prune"]))
            identical = all(torch.equal(get_mask(a), b.weight_mask.bool()) for a, b in pairs)
        del models
    med_wall = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    return {"weights": n, "wall_s": med_wall, "cpu_s": med_cpu, "samples_wall_s": wall, "masks_identical": identical,
            "speedup_wall": med_wall[names[1]] / med_wall[names[0]],
            "speedup_cpu": med_cpu[names[1]] / med_cpu[names[0]]}


def bench_masked_step(steps: int, batch: int = 128) -> dict:
    torch.manual_seed(0)
    dense = create("resnet20")
    control = copy.deepcopy(dense)
    masked = copy.deepcopy(dense)
    prune(masked, PruneConfig("global", 0.9), warn=False)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)

    runs = {}
    for name, model in (("dense", dense), ("dense (control copy)", control), ("masked", masked)):
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        masks = MaskEnforcer()
        masks.refresh(model)  # no masks on the dense models: after_step is one check, as in the trainer
        masks.enforce(opt)

        def step(model=model, opt=opt, masks=masks):
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            masks.after_step(opt)

        runs[name] = step
        if name == "masked":
            runs["mask enforcement only"] = lambda masks=masks, opt=opt: masks.after_step(opt)
    samples = time_interleaved(runs, warmup=3, repeats=steps)
    med = {k: statistics.median(v) for k, v in samples.items()}
    for m in conv_linear(masked):
        assert torch.all(m.weight[~get_mask(m)] == 0)
    return {"median_ms": med, "overhead_step": med["masked"] / med["dense"] - 1.0,
            "control": med["dense (control copy)"] / med["dense"] - 1.0,
            "overhead_enforcement": med["mask enforcement only"] / med["dense"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (default 1: on a shared machine multi-threaded memory-bound ops stall "
                             "on descheduled threads, which distorts the comparison)")
    parser.add_argument("--reps", type=int, default=5, help="(a) repetitions of each pruning call")
    parser.add_argument("--steps", type=int, default=20, help="(b) timed training steps of each kind")
    parser.add_argument("--skip-a", action="store_true")
    parser.add_argument("--skip-b", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} CPU threads")
    if not args.skip_a:
        a = bench_global_threshold(args.reps)
        w, c = a["wall_s"], a["cpu_s"]
        print(f"(a) Global MP 90% on ResNet-50 ({a['weights']:,} weights), medians of {args.reps}: "
              f"prunelab {w['prunelab'] * 1000:.0f} ms wall / {c['prunelab'] * 1000:.0f} ms CPU, "
              f"torch.nn.utils.prune {w['torch.nn.utils.prune'] * 1000:.0f} ms wall / "
              f"{c['torch.nn.utils.prune'] * 1000:.0f} ms CPU -> {a['speedup_wall']:.1f}x faster (wall), "
              f"{a['speedup_cpu']:.1f}x (CPU time); masks identical: {a['masks_identical']}")
        print("    wall samples (s): " + "; ".join(f"{k}: {', '.join(f'{x:.3f}' for x in v)}"
                                              for k, v in a["samples_wall_s"].items()))
    if not args.skip_b:
        b = bench_masked_step(args.steps)
        med = b["median_ms"]
        print(f"(b) ResNet-20 training step, batch 128, median of {args.steps}: dense {med['dense']:.1f} ms, "
              f"masked {med['masked']:.1f} ms -> overhead {b['overhead_step']:+.2%} (noise: an identical dense copy "
              f"differs by {b['control']:+.2%}); "
              f"mask enforcement alone {med['mask enforcement only']:.3f} ms = {b['overhead_enforcement']:.3%} "
              f"of a dense step")


if __name__ == "__main__":
    main()
