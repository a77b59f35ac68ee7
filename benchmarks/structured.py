"""Structured pruning speed, measured side by side in one run on this machine.

1. Fisher accumulation overhead per training step: a WRN-16-2 fine-tuning step (batch 128, CIFAR
   shape, SGD) plain, with channel masks, and with masks + Fisher accumulation; the three alternate
   step by step and medians are compared. Goal: Fisher <= 1.10 x plain.
2. Groups + compression of ResNet-50 (224x224) at 50% of the channels of every group (residual
   streams included, scope ``all``, L1 ranking within each group), against Torch-Pruning's own
   ``MagnitudePruner`` (pruning_ratio 0.5, L1 importance) on the same model; alternated, medians.
   Both cut the model in place (``StructuredPruner.compress`` / ``compress`` first copy the model so
   the masked one stays usable). Goal: prunelab within 1.5 x Torch-Pruning. The compressed ==
   masked check is timed separately.
3. Measured CPU latency of the compressed vs the dense model at batch 1 and 32, beside the MACs
   ratio (dense and compressed alternate call by call; medians).

    python benchmarks/structured.py                  # 2 threads
    python benchmarks/structured.py --threads 1 --steps 10 --json structured.json
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from prunelab.io import atomic_write_json
from prunelab.measure import count_macs, count_params
from prunelab.measure.timing import example_input, fixed_threads, time_interleaved
from prunelab.models import create, resolve
from prunelab.prune.structured import (
    ChannelMasks,
    channel_scores,
    compress,
    find_groups,
    get_criterion,
    prune_in_place,
    verify,
)

CIFAR = (3, 32, 32)
IMAGENET = (3, 224, 224)


def fisher_overhead(args) -> dict:
    """Median seconds per training step: plain, masks, masks + Fisher (interleaved)."""
    torch.manual_seed(0)
    model = create("wrn-16-2")
    groups = find_groups(model, CIFAR, "internal", spec=resolve("wrn-16-2"))
    masks = ChannelMasks(model, groups)
    masks.detach()
    fisher = get_criterion("fisher")(model, groups, masks)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, *CIFAR, generator=g)
    y = torch.randint(0, 10, (args.batch,), generator=g)
    model.train()

    def step(mode: str) -> float:
        if mode == "plain":
            masks.detach()
        else:
            masks.attach()
        if mode == "fisher":
            fisher.start()
        else:
            fisher.stop()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        if mode == "fisher":
            fisher.end_step()
        opt.step()
        return time.perf_counter() - t0

    modes = ["plain", "masks", "fisher"]
    for m in modes:  # warm-up
        step(m)
    times = {m: [] for m in modes}
    for r in range(args.steps):
        for k in range(len(modes)):
            m = modes[(r + k) % len(modes)]
            times[m].append(step(m))
    med = {m: statistics.median(v) for m, v in times.items()}
    assert fisher.steps > 0
    return {"model": "wrn-16-2", "batch": args.batch, "steps_each": args.steps,
            "median_s": med, "masks_ratio": med["masks"] / med["plain"], "fisher_ratio": med["fisher"] / med["plain"]}


def _prunelab_half(model: nn.Module) -> tuple[nn.Module, dict, dict]:
    """Groups, L1 ranking inside each group, keep the best half, compress (check timed apart)."""
    reference = copy.deepcopy(model)
    t0 = time.perf_counter()
    groups = find_groups(model, IMAGENET, "all")
    t1 = time.perf_counter()
    scores = channel_scores("l1", model, groups)
    keep = {gr.name: sorted(torch.topk(scores[gr.name], gr.width - gr.width // 2).indices.tolist()) for gr in groups}
    small = prune_in_place(model, groups, keep)  # in place, like Torch-Pruning's pruner
    t2 = time.perf_counter()
    verify(reference, small, groups, keep)
    t3 = time.perf_counter()
    return small, {"groups_s": t1 - t0, "compress_s": t2 - t1, "total_s": t2 - t0, "check_s": t3 - t2}, keep


def _torch_pruning_half(model: nn.Module) -> tuple[nn.Module, dict]:
    t0 = time.perf_counter()
    pruner = tp.pruner.MagnitudePruner(model, torch.randn(1, *IMAGENET),
                                       importance=tp.importance.MagnitudeImportance(p=1),
                                       pruning_ratio=0.5, ignored_layers=[model.fc])
    t1 = time.perf_counter()
    pruner.step()
    t2 = time.perf_counter()
    return model, {"init_s": t1 - t0, "step_s": t2 - t1, "total_s": t2 - t0}


def resnet50_compression(args) -> dict:
    torch.manual_seed(0)
    dense = create("resnet50")
    ours, theirs = [], []
    small = tp_small = None
    for r in range(args.rounds):
        order = ("ours", "tp") if r % 2 == 0 else ("tp", "ours")
        for who in order:
            model = copy.deepcopy(dense)
            if who == "ours":
                small, t, _ = _prunelab_half(model)
                ours.append(t)
            else:
                tp_small, t = _torch_pruning_half(model)
                theirs.append(t)
    med = {k: statistics.median(t[k] for t in ours) for k in ours[0]}
    med_tp = {k: statistics.median(t[k] for t in theirs) for k in theirs[0]}
    return {
        "rounds": args.rounds, "prunelab": med, "torch_pruning": med_tp,
        "ratio_total": med["total_s"] / med_tp["total_s"],
        "params": {"dense": count_params(dense).params, "prunelab": count_params(small).params,
                   "torch_pruning": count_params(tp_small).params},
        "macs": {"dense": count_macs(dense, IMAGENET), "prunelab": count_macs(small, IMAGENET),
                 "torch_pruning": count_macs(tp_small, IMAGENET)},
        "_small": small, "_dense": dense,
    }


def latency(dense: nn.Module, small: nn.Module, shape, batches, args) -> list[dict]:
    rows = []
    ratio = count_macs(dense, shape) / count_macs(small, shape)
    dense.eval()
    small.eval()
    for b in batches:
        x = example_input(shape, b)

        def run(m, x=x):
            def call():
                with torch.inference_mode():
                    return m(x)

            return call

        samples = time_interleaved({"dense": run(dense), "compressed": run(small)}, warmup=2,
                                   repeats=args.repeats if b == 1 else max(5, args.repeats // 2))
        d, c = statistics.median(samples["dense"]), statistics.median(samples["compressed"])
        rows.append({"batch": b, "dense_ms": d, "compressed_ms": c, "speedup": d / c, "macs_ratio": ratio})
    return rows


def wrn_pruned(scope: str) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    spec = resolve("wrn-16-2")
    dense = create(spec)
    groups = find_groups(dense, CIFAR, scope, spec=spec)
    scores = channel_scores("l1", dense, groups)
    keep = {g.name: sorted(torch.topk(scores[g.name], g.width - g.width // 2).indices.tolist()) for g in groups}
    return dense, compress(dense, groups, keep)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128, help="training batch of the Fisher overhead test")
    ap.add_argument("--steps", type=int, default=15, help="timed training steps per mode")
    ap.add_argument("--rounds", type=int, default=3, help="ResNet-50 compression rounds per tool")
    ap.add_argument("--repeats", type=int, default=20, help="latency calls per model at batch 1")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()
    out: dict = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                             "threads": args.threads, "torch": torch.__version__,
                             "torch_pruning": getattr(tp, "__version__", "?")}}
    with fixed_threads(args.threads):
        f = fisher_overhead(args)
        out["fisher_overhead"] = f
        print(f"[1] WRN-16-2 train step, batch {f['batch']}: plain {f['median_s']['plain'] * 1e3:.0f} ms, "
              f"masks {f['median_s']['masks'] * 1e3:.0f} ms ({f['masks_ratio']:.3f}x), "
              f"masks+Fisher {f['median_s']['fisher'] * 1e3:.0f} ms ({f['fisher_ratio']:.3f}x; goal <= 1.10x)")
        r = resnet50_compression(args)
        small, dense = r.pop("_small"), r.pop("_dense")
        out["resnet50_compression"] = r
        p, t = r["prunelab"], r["torch_pruning"]
        print(f"[2] ResNet-50 at 50% channels: prunelab groups {p['groups_s']:.2f} s + compress "
              f"{p['compress_s']:.2f} s = {p['total_s']:.2f} s; Torch-Pruning init {t['init_s']:.2f} s + step "
              f"{t['step_s']:.2f} s = {t['total_s']:.2f} s; ratio {r['ratio_total']:.2f}x (goal <= 1.5x); "
              f"compressed==masked check {p['check_s']:.2f} s")
        print(f"    params dense {r['params']['dense']:,}, prunelab {r['params']['prunelab']:,}, Torch-Pruning "
              f"{r['params']['torch_pruning']:,}; MACs {r['macs']['dense']:,} -> {r['macs']['prunelab']:,} / "
              f"{r['macs']['torch_pruning']:,}")
        rows = {}
        for scope in ("internal", "all"):
            d, s = wrn_pruned(scope)
            rows[f"wrn-16-2 {scope} 50%"] = latency(d, s, CIFAR, (1, 32), args)
        rows["resnet50 all 50%"] = latency(dense, small, IMAGENET, (1, 32), args)
        out["latency"] = rows
        print("[3] CPU latency, dense vs compressed (median ms):")
        for name, rr in rows.items():
            for row in rr:
                print(f"    {name:22s} batch {row['batch']:3d}: {row['dense_ms']:9.2f} -> "
                      f"{row['compressed_ms']:9.2f} ms speed-up {row['speedup']:.2f}x, "
                      f"MACs ratio {row['macs_ratio']:.2f}x")
    if args.json:
        atomic_write_json(args.json, out)


if __name__ == "__main__":
    main()
