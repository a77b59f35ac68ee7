"""Does the deploy artefact beat the best dense runtime? Pruned models vs the dense model in ONNX Runtime.

For each case the deploy artefact (``prunelab export --format deploy``, :mod:`prunelab.export.deploy`)
is built at the case's batch size and timed against the dense model in ONNX Runtime (the masked model
exported with its zeros, or the unpruned model for structured cases), interleaved call by call, with
medians; both are called with a torch tensor and return one, as a PyTorch user calls them. CPU,
1 thread by default, FP32 throughout: no quantisation is mixed into these figures.
Weights are random; masks come from global magnitude pruning of the initial weights (the
classifier's random weights are left unpruned where global MP would empty it, so the logits are
not a constant), structured models from the structured pruner (random criterion, half the MACs,
irregular widths).

Cases and goals (``speedup_vs_ort_dense``):

* sparse, 95% global MP: ResNet-56 and WRN-40-2 >= 1.5 at batch 1 and >= 1.2 at batch 32;
  an MLP 2048x3 >= 4 (batch 1 and 32);
* sparse, every zoo model at 90% (batch 1): >= 0.98, never slower;
* structured, half the MACs: ResNet-56 and WRN-40-2 >= 0.85 x macs_ratio at batch 32, >= 0.7 x at batch 1.

    python benchmarks/deploy.py                         # everything (long: run it on an idle machine)
    python benchmarks/deploy.py --cases sparse structured --json rows.json
    python benchmarks/deploy.py --quick --json rows.json  # a smoke run on a tiny model

``--json FILE`` writes a list of rows with exactly the keys ``model``, ``kind`` (sparse or structured),
``level`` (sparsity, or the kept fraction of MACs), ``batch``, ``ort_dense_ms``, ``prunelab_ms``,
``speedup_vs_ort_dense`` and ``macs_ratio`` (dense MACs over the pruned model's sparse-aware MACs).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable

import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.export.deploy import DeployModel, build_deploy
from prunelab.export.onnx import onnx_bytes_of, ort_session
from prunelab.io import atomic_write_json
from prunelab.measure import count_macs
from prunelab.measure.timing import example_input, fixed_threads, time_interleaved
from prunelab.models import create, input_shape_of, list_models, resolve
from prunelab.prune.structured import StructuredConfig, StructuredPruner, Target
from prunelab.prune.unstructured import prune_global

KEYS = ("model", "kind", "level", "batch", "ort_dense_ms", "prunelab_ms", "speedup_vs_ort_dense", "macs_ratio")
CASES = ("sparse", "mlp", "zoo", "structured")


def _classifier_kept(model: nn.Module) -> None:
    """Give an emptied last Linear layer its weights back (global MP on random weights can remove all of
    a small classifier; a constant output would make every output comparison trivially exact)."""
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]
    for m in last:
        if hasattr(m, "weight_mask") and not bool(m.weight_mask.any()):
            m.weight_mask.fill_(True)
            torch.nn.init.normal_(m.weight, std=0.05)


def sparse_model(name: str, sparsity: float, **kwargs) -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(0)
    spec = resolve(name, **kwargs)
    model = create(spec).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # layer-collapse warnings of random weights
        prune_global(model, sparsity)
    _classifier_kept(model)
    return model, tuple(input_shape_of(spec))


def structured_model(name: str, keep: float) -> tuple[nn.Module, nn.Module, tuple[int, ...]]:
    torch.manual_seed(0)
    spec = resolve(name)
    shape = tuple(input_shape_of(spec))
    dense = create(spec).eval()
    pruner = StructuredPruner(create(spec).eval(), StructuredConfig(
        criterion="random", schedule="oneshot", target=Target("macs", keep * count_macs(dense, shape))), shape,
        spec=spec)
    pruner.prune_oneshot()
    small = pruner.compress().eval()
    pruner.detach()
    return dense, small, shape


def compare(baseline: Callable[[], object], candidate: Callable[[], object], args) -> tuple[float, float]:
    """Medians over ``--blocks`` separate interleaved runs pooled together: on a shared machine one
    run of identical sessions was seen to differ 2x for a whole run, which pooled blocks outvote."""
    pooled: dict[str, list[float]] = {"ort": [], "prunelab": []}
    for _ in range(args.blocks):
        samples = time_interleaved({"ort": baseline, "prunelab": candidate}, warmup=args.warmup,
                                   repeats=args.repeats, max_time_s=args.max_time / args.blocks)
        for key, values in samples.items():
            pooled[key].extend(values)
    return statistics.median(pooled["ort"]), statistics.median(pooled["prunelab"])


def run_case(args, label: str, kind: str, level: float, batch: int, dense: nn.Module, pruned: nn.Module,
             shape: tuple[int, ...]) -> dict:
    """Build the deploy artefact of ``pruned`` at ``batch`` and time it against ``dense`` in ONNX Runtime."""
    artefact = build_deploy(pruned, shape, kind=kind, batch_size=batch, threads=args.threads, on_problem="dense",
                            pad_to=args.pad_to if kind == "structured" else None, repeats=args.layer_repeats,
                            warmup=2)
    deployed = DeployModel.from_artefact(artefact, threads=args.threads)
    x = example_input(shape, batch)
    session = ort_session(onnx_bytes_of(dense, shape, dynamic_batch=True), threads=args.threads)
    name = session.get_inputs()[0].name

    def ort() -> torch.Tensor:  # torch in, torch out, as the artefact is called
        return torch.from_numpy(session.run(None, {name: x.numpy()})[0])

    ort_ms, ours_ms = compare(ort, lambda: deployed(x), args)
    dense_macs = count_macs(dense, shape)
    pruned_macs = count_macs(pruned, shape, sparse=True)
    row = {"model": label, "kind": kind, "level": level, "batch": batch, "ort_dense_ms": ort_ms,
           "prunelab_ms": ours_ms, "speedup_vs_ort_dense": ort_ms / ours_ms, "macs_ratio": dense_macs / pruned_macs}
    assert tuple(row) == KEYS
    print(f"  {label:<22} {kind:<10} {level:>6.2f} {batch:>5} {ort_ms:>11.3f} {ours_ms:>11.3f} "
          f"{row['speedup_vs_ort_dense']:>8.2f}x {row['macs_ratio']:>7.2f}  {artefact.runtime:<11} "
          f"{goal(row)}", flush=True)
    for note in artefact.report.notes:
        print(f"      note: {note}", flush=True)
    return row


def goal(row: dict) -> str:
    s, kind = row["speedup_vs_ort_dense"], row["kind"]
    if kind == "structured":
        need = (0.85 if row["batch"] >= 32 else 0.7) * row["macs_ratio"]
    elif row["model"].startswith("mlp 2048") and row["level"] >= 0.95:
        need = 4.0
    elif row["model"] in ("resnet56", "wrn-40-2") and row["level"] >= 0.95:
        need = 1.5 if row["batch"] == 1 else 1.2
    elif row["level"] >= 0.9:
        need = 0.98
    else:
        return ""
    return f"goal >= {need:.2f}: {'met' if s >= need else 'NOT met'}"


def cases(args):
    """(label, kind, level, batch, builder) for every case asked for."""
    if args.quick:
        yield "cnn", "sparse", 0.9, 1, lambda: _same(sparse_model("cnn", 0.9))
        yield "cnn", "structured", 0.5, 1, lambda: structured_model("cnn", 0.5)
        return
    if "sparse" in args.cases:
        for name in ("resnet56", "wrn-40-2"):
            for batch in (1, 32):
                yield name, "sparse", 0.95, batch, lambda n=name: _same(sparse_model(n, 0.95))
    if "mlp" in args.cases:
        for batch in (1, 32):
            yield "mlp 2048x3", "sparse", 0.95, batch, lambda: _same(sparse_model(
                "mlp", 0.95, in_features=2048, hidden_widths=[2048, 2048, 2048]))
    if "zoo" in args.cases:
        for name in args.zoo or list_models():
            yield name, "sparse", 0.9, 1, lambda n=name: _same(sparse_model(n, 0.9))
    if "structured" in args.cases:
        for name in ("resnet56", "wrn-40-2"):
            for batch in (1, 32):
                yield name, "structured", 0.5, batch, lambda n=name: structured_model(n, 0.5)


def _same(pair: tuple[nn.Module, tuple[int, ...]]) -> tuple[nn.Module, nn.Module, tuple[int, ...]]:
    model, shape = pair
    return model, model, shape  # a masked model's dense baseline is itself, zeros and all, in ONNX Runtime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for every measurement (default 1)")
    parser.add_argument("--repeats", type=int, default=30, help="timed rounds per block (default 30)")
    parser.add_argument("--blocks", type=int, default=3,
                        help="separate interleaved runs per comparison, pooled (default 3)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--max-time", type=float, default=60.0,
                        help="seconds at most per comparison, all blocks together (default 60)")
    parser.add_argument("--layer-repeats", type=int, default=15,
                        help="timed rounds per layer when the artefact chooses its kernels (default 15)")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--zoo", nargs="+", default=None, metavar="MODEL", help="zoo models of the 'zoo' case")
    parser.add_argument("--pad-to", type=int, default=8, help="channel multiple tried for structured models")
    parser.add_argument("--quick", action="store_true", help="a smoke run on a tiny model (CI)")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the rows as JSON")
    args = parser.parse_args(argv)
    try:
        for name in args.zoo or []:
            resolve(name)
    except PrunelabError as exc:
        sys.stderr.write(f"deploy.py: error: --zoo: {exc}\n")
        return 2
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"prunelab deploy benchmark: CPU, {args.threads} thread(s), FP32, random weights; "
          f"load average at start {load} on {os.cpu_count()} CPUs")
    print(f"  {'model':<22} {'kind':<10} {'level':>6} {'batch':>5} {'ORT dense ms':>11} {'prunelab ms':>11} "
          f"{'speed-up':>9} {'MACs x':>7}  {'runtime':<11} goal")
    rows = []
    t0 = time.perf_counter()
    with fixed_threads(args.threads):
        for label, kind, level, batch, build in cases(args):
            try:
                dense, pruned, shape = build()
                rows.append(run_case(args, label, kind, level, batch, dense, pruned, shape))
            except PrunelabError as exc:
                print(f"  {label:<22} {kind:<10} skipped: {exc}", flush=True)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"done in {time.perf_counter() - t0:.0f} s; load average at end {load}")
    if args.json:
        atomic_write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
