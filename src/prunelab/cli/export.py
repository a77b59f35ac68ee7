"""``prunelab export CHECKPOINT --format onnx|sparse --out PATH``.

* ``onnx``: an ONNX file (dynamic batch), checked against ONNX Runtime.
* ``sparse``: a prunelab checkpoint of the masked model plus per-layer kernel choices measured on
  this device (sparse CSR kernels where faster); ``prunelab bench PATH --sparse`` and
  :func:`prunelab.export.load_sparse` run it.
"""

from __future__ import annotations

FORMATS = ("onnx", "sparse")
#: options that only one format reads; giving one with the other format is an error, not a no-op
FORMAT_ONLY = {"onnx": ("static_batch", "opset"), "sparse": ("batch_size", "threads", "device", "policy")}


def add_arguments(parser) -> None:
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="a prunelab checkpoint (or a zoo name)")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--out", required=True, metavar="PATH")
    parser.add_argument("--input-size", default=None, metavar="CxHxW",
                        help="input shape without the batch (default: the model's)")
    parser.add_argument("--static-batch", action="store_true", help="onnx: fix the batch dimension")
    parser.add_argument("--opset", type=int, default=None, help="onnx: opset version")
    parser.add_argument("--batch-size", type=int, default=1, help="sparse: batch size the kernels are chosen at")
    parser.add_argument("--threads", type=int, default=None, help="sparse: CPU threads the kernels are timed with")
    parser.add_argument("--device", default="cpu", help="sparse: device the kernels are timed on")
    parser.add_argument("--policy", default="measure", help="sparse: measure (default), sparse, dense")
    parser.add_argument("--json", action="store_true", help="print a JSON summary")


def run(args) -> int:
    from prunelab.checkpoint import model_or_checkpoint
    from prunelab.cli.bench import input_shape_for
    from prunelab.cli.common import check_input, emit_json
    from prunelab.errors import PrunelabError

    for fmt, dests in FORMAT_ONLY.items():
        wrong = [d for d in dests if fmt != args.format and d in (getattr(args, "given", None) or ())]
        if wrong:
            raise PrunelabError(f"--{wrong[0].replace('_', '-')} applies to --format {fmt} only")
    loaded = model_or_checkpoint(args.checkpoint)
    shape = input_shape_for(loaded, args.input_size)
    check_input(shape, max(1, args.batch_size if args.format == "sparse" else 1))
    if args.format == "onnx":
        from prunelab.export.onnx import DEFAULT_OPSET, to_onnx

        result = to_onnx(loaded.model, shape, args.out, dynamic_batch=not args.static_batch,
                         opset=DEFAULT_OPSET if args.opset is None else args.opset)
        summary = result.to_dict()
        text = (f"wrote {result.path} ({result.bytes} bytes, opset {result.opset}); ONNX Runtime vs PyTorch: "
                f"max abs error {result.max_abs_error:.2e}, relative error {result.relative_error:.2e}")
    else:
        from prunelab.errors import check_choice
        from prunelab.export.sparse import POLICIES, convert_to_sparse, save_sparse

        check_choice("sparse conversion policy", args.policy, POLICIES)
        if not any(hasattr(m, "weight_mask") for m in loaded.model.modules()):
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
