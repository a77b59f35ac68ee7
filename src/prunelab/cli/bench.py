"""``prunelab bench MODEL_OR_CHECKPOINT [MORE ...]``: measured inference latency, interleaved.

Every model given is timed on every back-end, and all configurations at one thread count and batch
size are interleaved call by call (:mod:`prunelab.export.bench`), so their ratios are fair on a busy
machine. Reported: median, IQR, p90 per configuration, with warnings for a large spread or a busy
machine; progress goes to stderr; each configuration is bounded by ``--max-time`` seconds.

Examples::

    prunelab bench resnet56 --batch-sizes 1 32 --threads 1 --backend eager onnxruntime
    prunelab bench dense.pt pruned.pt --backend onnxruntime deploy --batch-sizes 1 32
    prunelab bench pruned-deploy.pt --batch-sizes 1 32          # a deploy artefact runs on its own runtime
    prunelab bench pruned.pt --sparse --batch-sizes 32 --json --out latency.json
"""

from __future__ import annotations

import sys

from prunelab.errors import PrunelabError


def add_arguments(parser) -> None:
    from prunelab.cli.common import add_hf_arguments
    from prunelab.export.bench import DEFAULT_MAX_TIME_S, MAX_TIME_LIMIT_S
    from prunelab.measure.timing import MAX_REPEATS

    add_hf_arguments(parser)
    parser.add_argument("model", metavar="MODEL_OR_CHECKPOINT", nargs="*",
                        help="zoo names, prunelab checkpoints or deploy artefacts; several are compared interleaved")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 64], metavar="B",
                        help="batch sizes (default: 1 8 64)")
    parser.add_argument("--threads", type=int, nargs="+", default=None, metavar="N",
                        help="CPU thread counts to measure (default: torch's current count)")
    parser.add_argument("--backend", nargs="+", default=["eager"], metavar="NAME",
                        help="eager, compile (torch.compile), onnxruntime, deploy (default: eager)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (default: cpu)")
    parser.add_argument("--input-size", default=None, metavar="CxHxW",
                        help="input shape without the batch (default: the model's)")
    parser.add_argument("--sparse", action="store_true",
                        help="eager back-end: run masked layers with sparse kernels (the checkpoint's recorded "
                             "choices, or measured now at the first batch size)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed calls per configuration (default: 10)")
    parser.add_argument("--repeats", type=int, default=50,
                        help=f"minimum timed calls per configuration, 1 to {MAX_REPEATS} (default: 50)")
    parser.add_argument("--min-time", type=float, default=0.5,
                        help="minimum seconds of timed calls per configuration, at most --max-time (default: 0.5)")
    parser.add_argument("--max-time", type=float, default=DEFAULT_MAX_TIME_S,
                        help=f"maximum seconds per configuration, warm-up included, up to {MAX_TIME_LIMIT_S:g}: "
                             f"timing stops there even before --repeats calls (default: {DEFAULT_MAX_TIME_S:g})")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--out", default=None, metavar="PATH", help="also write the results as JSON")
    from prunelab.cli.common import add_plugin_argument

    add_plugin_argument(parser)


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


def _is_deploy_file(path: str) -> bool:
    import os
    import zipfile

    if not os.path.isfile(path) or not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:  # a deploy artefact is the only prunelab file with a 'runtime' record
        records = [i for i in zf.infolist() if i.filename.endswith("/data.pkl") and i.file_size < 2**24]
        return any(b"prunelab-deploy" in zf.read(i) for i in records)


def run(args) -> int:
    from prunelab.checkpoint import model_or_checkpoint
    from prunelab.cli.common import check_input, parse_shape
    from prunelab.export.backends import get_backend
    from prunelab.export.bench import Prepared, bench_compare, check_max_time
    from prunelab.measure.timing import check_batch_size, check_device, check_threads, check_timing

    for backend in args.backend:
        get_backend(backend)
    for b in args.batch_sizes:
        check_batch_size(b)
    for t in args.threads or []:
        check_threads(t)
    device = check_device(args.device)
    check_timing(args.warmup, args.repeats, args.min_time)
    check_max_time(args.max_time, args.min_time)
    if args.sparse and set(args.backend) != {"eager"}:
        other = next(b for b in args.backend if b != "eager")
        raise PrunelabError(f"--sparse runs PyTorch sparse kernels from eager; it cannot be combined with --backend "
                            f"{other} (--backend deploy runs the native sparse executor)")
    if len(set(args.model)) != len(args.model):
        raise PrunelabError("each model may be given once")
    models: dict = {}
    shape = None
    sparse_info = {}
    if args.hf is not None:
        return _run_hf(args, device)
    if not args.model:
        raise PrunelabError("missing MODEL_OR_CHECKPOINT: give zoo names, checkpoints, deploy artefacts or --hf FOLDER")
    for name in args.model:
        if _is_deploy_file(name):
            from prunelab.export.deploy import load_deploy

            deployed = load_deploy(name, threads=(args.threads or [None])[0])
            item_shape = deployed.input_shape
            models[name] = Prepared(name, call=deployed)
        else:
            loaded = model_or_checkpoint(name)
            item_shape = input_shape_for(loaded, args.input_size)
            model = loaded.model
            if args.sparse:
                model, sparse_info[name] = _sparse(model, loaded, item_shape, args, device)
            models[name] = model
        if args.input_size:
            item_shape = parse_shape(args.input_size)
        if shape is not None and tuple(item_shape) != tuple(shape):
            raise PrunelabError(f"models compared together need one input shape: {name} takes "
                                f"{'x'.join(map(str, item_shape))}, the first takes {'x'.join(map(str, shape))}")
        shape = tuple(item_shape)

    check_input(shape, max(args.batch_sizes))
    _check_inputs(models, shape, min(args.batch_sizes))

    def progress(message: str) -> None:
        if not args.quiet:
            print(message, file=sys.stderr, flush=True)

    results, warnings = bench_compare(models, shape, batch_sizes=args.batch_sizes, threads=args.threads or [None],
                                      backends=args.backend, device=device, warmup=args.warmup,
                                      repeats=args.repeats, min_time_s=args.min_time, max_time_s=args.max_time,
                                      progress=progress)
    if len(models) == 1:
        for r in results:
            r.model = None
    payload = {"model": args.model[0], "models": list(args.model), "input_shape": list(shape),
               "sparse": sparse_info.get(args.model[0]) if len(args.model) == 1 else sparse_info or None,
               "results": [r.to_dict() for r in results], "warnings": warnings}
    title = f"{', '.join(args.model)}: input {'x'.join(map(str, shape))}"
    if len(args.model) == 1 and sparse_info:
        info = sparse_info[args.model[0]]
        title += f", sparse kernels in {len(info['sparse_layers'])}/{info['layers']} layers"
    return _emit(args, payload, results, warnings, title)


def _emit(args, payload: dict, results, warnings: list[str], title: str) -> int:
    """The results written to ``--out`` (JSON), the warnings on stderr, then the JSON or the table."""
    from prunelab.cli.common import emit_json
    from prunelab.io import atomic_write_json
    from prunelab.measure.latency import format_table

    if args.out:
        atomic_write_json(args.out, payload)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    if args.json:
        emit_json(payload)
    else:
        print(format_table(results, title=title))
    if args.out:
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _run_hf(args, device: str) -> int:
    """``bench --hf FOLDER``: the folder's model on its example inputs (token ids of ``--seq-len``)."""
    from prunelab.cli.common import hf_from_args
    from prunelab.export.bench import bench_compare

    if args.sparse or args.input_size:
        raise PrunelabError("--sparse and --input-size do not apply to --hf (its inputs come from the config and "
                            "--seq-len)")
    loaded = hf_from_args(args)
    spec = loaded.inputs
    _check_inputs({args.hf: loaded.model}, spec, min(args.batch_sizes))

    def progress(message: str) -> None:
        if not args.quiet:
            print(message, file=sys.stderr, flush=True)

    results, warnings = bench_compare({args.hf: loaded.model}, spec, batch_sizes=args.batch_sizes,
                                      threads=args.threads or [None], backends=args.backend, device=device,
                                      warmup=args.warmup, repeats=args.repeats, min_time_s=args.min_time,
                                      max_time_s=args.max_time, progress=progress)
    for r in results:
        r.model = None
    payload = {"model": args.hf, "models": [args.hf], "input_shape": list(spec.shape), "inputs": spec.to_dict(),
               "sparse": None, "results": [r.to_dict() for r in results], "warnings": warnings}
    return _emit(args, payload, results, warnings, f"{args.hf}: input {spec.describe()}")


def _check_inputs(models, shape, batch: int) -> None:
    """One eager call per model before any progress line, so a wrong input shape is one line on stderr."""
    import torch

    from prunelab.measure.timing import example_input, input_dtype, trial_call
    from prunelab.models.inputs import call_model

    for model in models.values():
        if isinstance(model, torch.nn.Module):
            was_training = model.training
            model.eval()
            x = example_input(shape, batch, dtype=input_dtype(model))

            def call(model=model, x=x) -> object:
                with torch.inference_mode():
                    return call_model(model, x)
            try:
                trial_call(call, shape, batch)
            finally:
                model.train(was_training)


def _sparse(model, loaded, shape, args, device):
    from prunelab.export.sparse import apply_choices, convert_to_sparse, sparse_report_of

    report = sparse_report_of(loaded.meta)
    if report is not None:
        model = apply_choices(model, report.choices(), device=device, lowerings=report.lowerings())
    else:
        threads = args.threads[0] if args.threads else None
        model, report = convert_to_sparse(model, shape, batch_size=args.batch_sizes[0], threads=threads, device=device)
    info = {"sparse_layers": report.sparse_layers, "layers": len(report.layers),
            "chosen_at_batch_size": report.batch_size, "chosen_on": report.device,
            "lowerings": {n: m.lowering for n, m in model.named_modules() if hasattr(m, "lowering")}}
    return model, info
