"""Is the pruned model actually faster? Measured side by side in one run on this machine.

1. Structured pruning of CIFAR ResNet-56 and WRN-40-2 (Crowley et al.'s main network) to half their
   MACs: measured speed-up vs the MACs ratio at batch 1 and 32, for (a) uniformly halved
   block-internal widths, (b) a pruned network with irregular widths (structured pruner, random
   criterion, MACs target), (c) the same with widths rounded to multiples of 8.
   Goal: speed-up >= 0.8 x the MACs ratio at batch 32. ResNet-56's 16-channel first stage already
   runs far below the convolution throughput of its later stages on CPU, and halving it to 8
   channels costs more efficiency still; WRN-40-2's twice-wider layers keep theirs.
2. Unstructured sparsity: the sparse-kernel path (prunelab.export.sparse: CSR matmuls, and the native
   direct sparse convolution of prunelab.export.direct_conv where it can be built) vs the dense masked model
   at 90% and 95% global magnitude sparsity, for a Linear-heavy MLP at batch 32 (goal >= 3x at 95%)
   and for a CIFAR ResNet-56 at batch 1 and 32 (goal >= 1.3x at 95%); the ResNet also with
   layer-wise uniform masks. FP32 throughout: no quantisation is mixed into these ratios.
3. PyTorch eager vs ONNX Runtime on the same models (the first network of section 1).

Every comparison alternates its candidates call by call (prunelab.measure.latency.time_interleaved)
and quotes medians. Weights are random (masks from global magnitude pruning of the initial
weights; per-layer densities are printed, because they decide what sparse kernels can do).

    python benchmarks/inference.py                  # CPU, 1 thread
    python benchmarks/inference.py --threads 2 --json results.json
    python benchmarks/inference.py --device cuda    # CUDA events; ONNX Runtime only with its CUDA provider
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import warnings

import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.export.sparse import convert_to_sparse
from prunelab.io import atomic_write_json
from prunelab.measure import count_macs
from prunelab.measure.timing import example_input, fixed_threads, time_interleaved
from prunelab.models import create, resolve
from prunelab.protocols.reduced import scale_bottleneck
from prunelab.prune.structured import StructuredConfig, StructuredPruner, Target
from prunelab.prune.unstructured import prune_global, prune_uniform

CIFAR = (3, 32, 32)


def medians(fns: dict, args, repeats: int | None = None) -> dict[str, float]:
    samples = time_interleaved(fns, device=args.device, warmup=args.warmup, repeats=repeats or args.repeats)
    return {name: statistics.median(v) for name, v in samples.items()}


def eager(model: nn.Module, x: torch.Tensor):
    def call() -> object:
        with torch.inference_mode():
            return model(x)
    return call


def table(header: tuple[str, ...], rows: list[tuple]) -> str:
    cells = [tuple(str(c) for c in header)] + [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------


STRUCTURED_MODELS = ("resnet56", "wrn-40-2")
DENSE = "dense"


def structured_models(name: str, device: str, memory_format: torch.memory_format) -> dict[str, tuple[nn.Module, int]]:
    """A CIFAR network and three half-MACs versions of it, each with its MACs (batch 1):
    uniformly halved block-internal widths (``scale_bottleneck``), and the structured pruner's
    irregular widths (random criterion, MACs target) without and with rounding to multiples of 8."""
    spec = resolve(name)
    dense = create(spec).eval()
    full = count_macs(dense, CIFAR)
    models = {DENSE: dense, "uniform half widths": create(scale_bottleneck(spec, 0.5)).eval()}
    for label, round_to in (("pruned, irregular", None), ("pruned, round_to=8", 8)):
        base = create(spec).eval()
        config = StructuredConfig(criterion="random", schedule="oneshot", round_to=round_to,
                                  target=Target("macs", full / 2))
        pruner = StructuredPruner(base, config, CIFAR, spec=spec)
        pruner.prune_oneshot()
        models[label] = pruner.compress().eval()
        pruner.detach()
    return {label: (m.to(device, memory_format=memory_format), count_macs(m, CIFAR)) for label, m in models.items()}


def section_structured(args, name: str, models) -> list[dict]:
    out = []
    dense_macs = models[DENSE][1]
    for batch in (1, 32):
        x = example_input(CIFAR, batch, args.device).contiguous(memory_format=args.memory_format)
        med = medians({label: eager(m, x) for label, (m, _) in models.items()}, args)
        for label, (_, macs) in models.items():
            macs_ratio = dense_macs / macs
            speedup = med[DENSE] / med[label]
            out.append({"network": name, "model": label, "batch": batch, "macs": macs, "macs_speedup": macs_ratio,
                        "median_ms": med[label], "speedup": speedup, "fraction_of_macs_ratio": speedup / macs_ratio})
    print(table(("network", "model", "batch", "MACs", "MACs ratio", "median ms", "speed-up", "speed-up / MACs ratio"),
                [(r["network"], r["model"], r["batch"], f"{r['macs'] / 1e6:.1f}M", f"{r['macs_speedup']:.2f}x",
                  f"{r['median_ms']:.3f}", f"{r['speedup']:.2f}x", f"{r['fraction_of_macs_ratio']:.2f}")
                 for r in out]))
    return out


# ---------------------------------------------------------------------------------------------


def mlp() -> tuple[nn.Module, tuple[int, ...]]:
    """A Linear-heavy zoo MLP: 2048 -> 2048 -> 2048 -> 2048 -> 10 (12.6M weights, equal fan-in,
    so global magnitude pruning of its initial weights is close to uniform per layer)."""
    return create("mlp", in_features=2048, hidden_widths=[2048, 2048, 2048]).eval(), (2048,)


def densities(model: nn.Module) -> str:
    parts = []
    for name, m in model.named_modules():
        if hasattr(m, "weight_mask"):
            parts.append((name, float(m.weight_mask.float().mean())))
    if len(parts) <= 6:
        return ", ".join(f"{n} {d:.3f}" for n, d in parts)
    groups: dict[str, list[float]] = {}
    for n, d in parts:
        groups.setdefault(n.split(".")[0], []).append(d)
    return ", ".join(f"{g} {statistics.fmean(v):.3f}" for g, v in groups.items())


def section_sparse(args) -> list[dict]:
    out = []

    def resnet():
        return create("resnet56").eval(), CIFAR

    # (label, model, batch, method, sparsities): global magnitude as asked; layer-wise uniform for
    # the ResNet too, because with random weights global magnitude leaves the early layers dense.
    cases = [("mlp 2048x3", mlp, 32, "global", (0.9, 0.95)), ("resnet56", resnet, 1, "global", (0.9, 0.95)),
             ("resnet56", resnet, 32, "global", (0.9, 0.95)), ("resnet56", resnet, 1, "uniform", (0.95,)),
             ("resnet56", resnet, 32, "uniform", (0.95,))]
    for name, build, batch, method, sparsities in cases:
        for sparsity in sparsities:
            torch.manual_seed(0)
            model, shape = build()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                (prune_global if method == "global" else prune_uniform)(model, sparsity)
            model.to(args.device)
            t0 = time.perf_counter()
            sparse, report = convert_to_sparse(model, shape, batch_size=batch, threads=args.threads,
                                               device=args.device, repeats=max(10, args.repeats // 2))
            convert_s = time.perf_counter() - t0
            x = example_input(shape, batch, args.device)
            med = medians({"dense": eager(model, x), "sparse": eager(sparse, x)}, args)
            row = {"model": name, "masks": method, "sparsity": sparsity, "batch": batch, "dense_ms": med["dense"],
                   "sparse_ms": med["sparse"], "speedup": med["dense"] / med["sparse"],
                   "sparse_layers": len(report.sparse_layers), "layers": len(report.layers),
                   "direct_layers": sum(lowering == "direct" for lowering in report.lowerings().values()),
                   "relative_error": report.relative_error, "convert_s": convert_s, "densities": densities(model)}
            out.append(row)
    print(table(("model", "masks", "sparsity", "batch", "dense ms", "sparse ms", "speed-up", "sparse layers",
                 "of them direct", "rel. error", "choose s"),
                [(r["model"], r["masks"], f"{r['sparsity']:.0%}", r["batch"], f"{r['dense_ms']:.3f}",
                  f"{r['sparse_ms']:.3f}", f"{r['speedup']:.2f}x", f"{r['sparse_layers']}/{r['layers']}",
                  r["direct_layers"], f"{r['relative_error']:.1e}", f"{r['convert_s']:.1f}") for r in out]))
    seen = set()
    for r in out:
        key = (r["model"], r["masks"], r["sparsity"])
        if key not in seen:
            seen.add(key)
            print(f"  densities {r['model']} {r['masks']} {r['sparsity']:.0%}: {r['densities']}")
    return out


# ---------------------------------------------------------------------------------------------


def section_onnx(args, models) -> list[dict]:
    from prunelab.export.onnx import onnx_bytes_of, ort_session

    out = []
    for name in (DENSE, "uniform half widths", "pruned, irregular"):
        model = models[name][0]
        data = onnx_bytes_of(model, CIFAR, dynamic_batch=True)
        session = ort_session(data, threads=torch.get_num_threads(), device=args.device)
        for batch in (1, 32):
            x = example_input(CIFAR, batch, args.device)
            feed = {session.get_inputs()[0].name: x.cpu().numpy()}
            med = medians({"eager": eager(model, x), "onnxruntime": lambda s=session, f=feed: s.run(None, f)}, args)
            out.append({"model": name, "batch": batch, "eager_ms": med["eager"], "ort_ms": med["onnxruntime"],
                        "ort_speedup": med["eager"] / med["onnxruntime"]})
    print(table(("model", "batch", "eager ms", "onnxruntime ms", "eager / ort"),
                [(r["model"], r["batch"], f"{r['eager_ms']:.3f}", f"{r['ort_ms']:.3f}", f"{r['ort_speedup']:.2f}x")
                 for r in out]))
    return out


# ---------------------------------------------------------------------------------------------


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu": cpu, "cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "load_average": load}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for every measurement (default 1)")
    parser.add_argument("--repeats", type=int, default=30, help="timed rounds per comparison")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--sections", nargs="+", default=["structured", "sparse", "onnx"],
                        choices=["structured", "sparse", "onnx"])
    parser.add_argument("--structured-models", nargs="+", default=list(STRUCTURED_MODELS), metavar="MODEL",
                        help=f"CIFAR zoo networks for sections 1 and 3 (default: {' '.join(STRUCTURED_MODELS)})")
    parser.add_argument("--channels-last", action="store_true",
                        help="run the structured models and their inputs in channels_last (dense and pruned alike)")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write every figure as JSON")
    args = parser.parse_args(argv)
    args.memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    try:
        for name in args.structured_models:
            resolve(name)
    except PrunelabError as exc:
        sys.stderr.write(f"inference.py: error: --structured-models: {exc}\n")
        return 2
    info = machine()
    print(f"prunelab inference benchmark: {args.device}, {args.threads} thread(s), "
          f"{'channels_last' if args.channels_last else 'NCHW'}; CPU {info['cpu']} "
          f"({info['cpus']} cores), torch {info['torch']}; load average at start {info['load_average']}")
    print("medians of interleaved calls; FP32; random weights\n")
    results: dict = {"machine": info, "device": args.device, "threads": args.threads}
    t0 = time.perf_counter()
    with fixed_threads(args.threads):
        nets = {name: structured_models(name, args.device, args.memory_format) for name in args.structured_models
                } if {"structured", "onnx"} & set(args.sections) else {}
        if "structured" in args.sections:
            print("[1] structured pruning to half the MACs (goal: speed-up >= 0.8 x MACs ratio at batch 32)")
            results["structured"] = [row for name, models in nets.items()
                                     for row in section_structured(args, name, models)]
            print()
        if "sparse" in args.sections:
            from prunelab.export.direct_conv import native_unavailable_reason

            why_not = native_unavailable_reason()
            print("[2] sparse kernels vs dense masked model (goals at 95%: MLP >= 3x at batch 32; ResNet >= 1.3x); "
                  + ("direct sparse convolution kernel available" if why_not is None else
                     f"no direct sparse convolution kernel: {why_not}"))
            results["sparse"] = section_sparse(args)
            print()
        if "onnx" in args.sections:
            if args.device.startswith("cuda"):
                import onnxruntime

                if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                    print("[3] skipped: onnxruntime has no CUDA execution provider here")
                    args.sections.remove("onnx")
            if "onnx" in args.sections:
                first = args.structured_models[0]
                print(f"[3] PyTorch eager vs ONNX Runtime (same thread count), {first}")
                results["onnx"] = section_onnx(args, nets[first])
                print()
    info["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"done in {time.perf_counter() - t0:.0f} s; load average at end {info['load_average_end']}")
    if args.json:
        atomic_write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
