"""``prunelab export CHECKPOINT --format deploy|onnx|sparse --out PATH``.

* ``deploy``: the fastest form prunelab can make for this CPU (:mod:`prunelab.export.deploy`): the
  folded graph in the native sparse executor where it beats dense ONNX Runtime, else the dense
  ONNX Runtime graph; ``prunelab bench PATH --backend deploy`` and
  :func:`prunelab.export.load_deploy` run it.
* ``onnx``: an ONNX file (dynamic batch), checked against ONNX Runtime.
* ``sparse``: a prunelab checkpoint of the masked model plus per-layer kernel choices measured on
  this device (sparse CSR kernels where faster), run from eager PyTorch; ``prunelab bench PATH
  --sparse`` and :func:`prunelab.export.load_sparse` run it.
"""

from __future__ import annotations

FORMATS = ("deploy", "onnx", "sparse")
#: the formats that read each format-specific option; giving one with another format is an error, not a no-op
OPTION_FORMATS = {"static_batch": ("onnx",), "opset": ("onnx",), "batch_size": ("sparse", "deploy"),
                  "threads": ("sparse", "deploy"), "device": ("sparse",), "policy": ("sparse",),
                  "fallback": ("deploy",), "pad_to": ("deploy",)}


def add_arguments(parser) -> None:
    from prunelab.cli.common import add_hf_arguments

    parser.add_argument("checkpoint", metavar="CHECKPOINT", nargs="?", default=None,
                        help="a prunelab checkpoint (or a zoo name; or --hf FOLDER)")
    add_hf_arguments(parser)
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--out", required=True, metavar="PATH")
    parser.add_argument("--input-size", default=None, metavar="CxHxW",
                        help="input shape without the batch (default: the model's)")
    parser.add_argument("--static-batch", action="store_true", help="onnx: fix the batch dimension")
    parser.add_argument("--opset", type=int, default=None, help="onnx: opset version")
    parser.add_argument("--batch-size", type=int, default=1,
                        help="sparse, deploy: batch size the kernels are chosen at (default: 1)")
    parser.add_argument("--threads", type=int, default=None,
                        help="sparse, deploy: CPU threads the kernels are timed with (default: torch's count; "
                             "deploy: 1)")
    parser.add_argument("--device", default="cpu", help="sparse: device the kernels are timed on")
    parser.add_argument("--policy", default="measure", help="sparse: measure (default), sparse, dense")
    parser.add_argument("--fallback", default="error", choices=("error", "dense"),
                        help="deploy: when the model is not pruned, ONNX Runtime is not installed or the native "
                             "sparse executor cannot be built: error (exit 2, nothing written; the default) or "
                             "dense (fall back to the dense kernels and say so)")
    parser.add_argument("--pad-to", type=int, default=None, metavar="N",
                        help="deploy, structured models: pad channel counts with zero channels to a multiple of N "
                             "where measured faster (outputs unchanged)")
    parser.add_argument("--json", action="store_true", help="print a JSON summary")
    from prunelab.cli.common import add_plugin_argument

    add_plugin_argument(parser)


def run(args) -> int:
    from prunelab.checkpoint import model_or_checkpoint
    from prunelab.cli.bench import input_shape_for
    from prunelab.cli.common import check_input, emit_json
    from prunelab.errors import PrunelabError

    for dest, formats in OPTION_FORMATS.items():
        if args.format not in formats and dest in (getattr(args, "given", None) or ()):
            raise PrunelabError(f"--{dest.replace('_', '-')} applies to --format {' / '.join(formats)} only")
    if args.hf is not None:
        return _run_hf(args)
    if args.checkpoint is None:
        raise PrunelabError("missing CHECKPOINT: give a prunelab checkpoint, a zoo name or --hf FOLDER")
    loaded = model_or_checkpoint(args.checkpoint)
    shape = input_shape_for(loaded, args.input_size)
    check_input(shape, max(1, args.batch_size if args.format in ("sparse", "deploy") else 1))
    if args.format == "deploy":
        summary, text = _deploy(args, loaded, shape)
    elif args.format == "onnx":
        from prunelab.export.onnx import DEFAULT_OPSET, to_onnx

        result = to_onnx(loaded.model, shape, args.out, dynamic_batch=not args.static_batch,
                         opset=DEFAULT_OPSET if args.opset is None else args.opset)
        summary = result.to_dict()
        text = (f"wrote {result.path} ({result.bytes} bytes, opset {result.opset}); ONNX Runtime vs PyTorch: "
                f"max abs error {result.max_abs_error:.2e}, relative error {result.relative_error:.2e}")
    else:
        from prunelab.errors import check_choice
        from prunelab.export.sparse import POLICIES, convert_to_sparse, save_sparse
        from prunelab.train.masks import get_mask

        check_choice("sparse conversion policy", args.policy, POLICIES)
        if not any(get_mask(m) is not None for m in loaded.model.modules()):
            raise PrunelabError(f"{args.checkpoint} has no pruned (masked) layers; sparse export needs a checkpoint "
                                "from unstructured pruning (prunelab prune --method ...)")
        _, report = convert_to_sparse(loaded.model, shape, batch_size=args.batch_size, threads=args.threads,
                                      device=args.device, policy=args.policy)
        meta = {**loaded.meta, "input_shape": list(shape)}
        save_sparse(args.out, loaded.model, report, spec=loaded.spec, plan=loaded.plan, meta=meta)
        summary = {"path": args.out, **report.to_dict()}
        text = (f"{report.table()}\nwrote {args.out}: sparse kernels in {len(report.sparse_layers)} of "
                f"{len(report.layers)} masked layers (batch {report.batch_size}, {report.device}, "
                f"{report.threads} thread{'' if report.threads == 1 else 's'}); "
                f"relative error vs masked model {report.relative_error:.1e}")
    if args.json:
        emit_json(summary)
    else:
        print(text)
    return 0


def _run_hf(args) -> int:
    """``export --hf FOLDER --format onnx``: the folder's model with one graph input per example
    tensor (``input_ids`` for text, ``input`` for images) and its logits as ``output``."""
    from prunelab.cli.common import emit_json, hf_from_args
    from prunelab.errors import PrunelabError
    from prunelab.export.onnx import DEFAULT_OPSET, to_onnx

    if args.format != "onnx":
        raise PrunelabError(f"--hf folders export to --format onnx (deploy and sparse take prunelab checkpoints of "
                            f"convolutional networks), not {args.format}")
    if args.input_size:
        raise PrunelabError("--input-size does not apply to --hf (its inputs come from the config and --seq-len)")
    loaded = hf_from_args(args)
    result = to_onnx(loaded.model, loaded.inputs, args.out, dynamic_batch=not args.static_batch,
                     opset=DEFAULT_OPSET if args.opset is None else args.opset)
    if args.json:
        emit_json(result.to_dict())
    else:
        print(f"wrote {result.path} ({result.bytes} bytes, opset {result.opset}, input {loaded.inputs.describe()}); "
              f"ONNX Runtime vs PyTorch: max abs error {result.max_abs_error:.2e}, relative error "
              f"{result.relative_error:.2e}")
    return 0


def _deploy(args, loaded, shape) -> tuple[dict, str]:
    from prunelab.errors import PrunelabError
    from prunelab.export.deploy import build_deploy, save_deploy
    from prunelab.train.masks import get_mask

    if args.pad_to is not None and args.pad_to < 1:
        raise PrunelabError(f"--pad-to must be >= 1, got {args.pad_to}")
    masked = any(get_mask(m) is not None for m in loaded.model.modules())
    kind = "sparse" if masked else "structured" if loaded.plan is not None else "dense"
    threads = 1 if args.threads is None else args.threads
    artefact = build_deploy(loaded.model, shape, kind=kind, batch_size=args.batch_size, threads=threads,
                            on_problem=args.fallback, pad_to=args.pad_to)
    meta = {"source": str(args.checkpoint), "arch": loaded.spec.to_dict(), "kind": kind}
    save_deploy(args.out, artefact, meta)
    report = artefact.report
    lines = [report.table()] if report.layers else []
    lines += [f"note: {n}" for n in report.notes]
    lines.append(f"wrote {args.out}: runtime {report.runtime} ({report.reason}); "
                 f"sparse kernels in {len(report.sparse_layers)} of {len(report.layers)} layers; "
                 f"relative error vs the model {report.relative_error:.1e}")
    return {"path": args.out, **report.to_dict()}, "\n".join(lines)
