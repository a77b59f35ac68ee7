"""``prunelab bench MODEL_OR_CHECKPOINT``: measured inference latency (median, p90, peak memory).

Examples::

    prunelab bench resnet56 --batch-sizes 1 32 --threads 1 2 --backend eager onnxruntime
    prunelab bench pruned.pt --sparse --batch-sizes 32 --json --out latency.json
"""

from __future__ import annotations

from prunelab.errors import PrunelabError


def add_arguments(parser) -> None:
    parser.add_argument("model", metavar="MODEL_OR_CHECKPOINT", help="a zoo name or a prunelab checkpoint")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 64], metavar="B")
    parser.add_argument("--threads", type=int, nargs="+", default=None, metavar="N",
                        help="CPU thread counts to measure (default: torch's current count)")
    parser.add_argument("--backend", nargs="+", default=["eager"], metavar="NAME",
                        help="eager and/or onnxruntime")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    parser.add_argument("--input-size", default=None, metavar="CxHxW",
                        help="input shape without the batch (default: the model's)")
    parser.add_argument("--sparse", action="store_true",
                        help="run masked layers with sparse kernels (the checkpoint's recorded choices, or "
                             "measured now at the first batch size)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=50, help="minimum number of timed calls")
    parser.add_argument("--min-time", type=float, default=0.5, help="minimum seconds of timed calls")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--out", default=None, metavar="PATH", help="also write the results as JSON")


def input_shape_for(loaded, text: str | None) -> tuple[int, ...]:
    """``--input-size``, else the checkpoint's recorded input shape, else the family's default."""
    from prunelab.cli.common import parse_shape
    from prunelab.models import input_shape_of

    if text:
        return parse_shape(text)
    recorded = (loaded.meta or {}).get("input_shape")
    if recorded:
        return tuple(int(d) for d in recorded)
    return input_shape_of(loaded.spec)


def run(args) -> int:
    from prunelab.checkpoint import model_or_checkpoint
    from prunelab.cli.common import check_input, emit_json
    from prunelab.io import atomic_write_json
    from prunelab.measure.latency import (
        BACKENDS,
        bench,
        check_batch_size,
        check_device,
        check_threads,
        format_table,
    )

    for backend in args.backend:
        if backend not in BACKENDS:
            raise PrunelabError(f"unknown backend {backend!r}; valid choices: {', '.join(BACKENDS)}")
    for b in args.batch_sizes:
        check_batch_size(b)
    for t in args.threads or []:
        check_threads(t)
    device = check_device(args.device)
    if args.sparse and "onnxruntime" in args.backend:
        raise PrunelabError("--sparse runs PyTorch sparse kernels; it cannot be combined with --backend onnxruntime")
    loaded = model_or_checkpoint(args.model)
    shape = input_shape_for(loaded, args.input_size)
    check_input(shape, max(args.batch_sizes))
    model = loaded.model
    sparse_info = None
    if args.sparse:
        from prunelab.export.sparse import apply_choices, convert_to_sparse, sparse_report_of

        report = sparse_report_of(loaded.meta)
        if report is not None:
            model = apply_choices(model, report.choices(), device=device, lowerings=report.lowerings())
        else:
            threads = args.threads[0] if args.threads else None
            model, report = convert_to_sparse(model, shape, batch_size=args.batch_sizes[0], threads=threads,
                                              device=device)
        sparse_info = {"sparse_layers": report.sparse_layers, "layers": len(report.layers),
                       "chosen_at_batch_size": report.batch_size, "chosen_on": report.device,
                       "lowerings": {n: m.lowering for n, m in model.named_modules() if hasattr(m, "lowering")}}
    results = bench(model, shape, batch_sizes=args.batch_sizes, threads=args.threads or [None],
                    backends=args.backend, device=device, warmup=args.warmup, repeats=args.repeats,
                    min_time_s=args.min_time)
    payload = {"model": args.model, "input_shape": list(shape), "sparse": sparse_info,
               "results": [r.to_dict() for r in results]}
    if args.out:
        atomic_write_json(args.out, payload)
    if args.json:
        emit_json(payload)
    else:
        title = f"{args.model}: input {'x'.join(map(str, shape))}"
        if sparse_info:
            title += f", sparse kernels in {len(sparse_info['sparse_layers'])}/{sparse_info['layers']} layers"
        print(format_table(results, title=title))
    return 0
