"""``prunelab reduce``: a reduced network (depth, width or bottleneck) at a target size, trained.

Example::

    prunelab reduce --model wrn-16-2 --data digits --mode width --target-params 20000 --epochs 5 --out runs/red
"""

from __future__ import annotations

import sys
from pathlib import Path

from prunelab.cli.common import (
    add_alias,
    add_data_arguments,
    add_model_argument,
    add_train_arguments,
    emit_json,
    model_from_args,
    print_written,
    train_config_from_args,
)
from prunelab.errors import PrunelabError
from prunelab.train.progress import stage


def add_target_arguments(parser, *, latency: bool = True, many: bool = False) -> None:
    """``--target-params N`` / ``--target-macs N`` (/ ``--target-latency-ms MS``): the size to hit (one
    metric), spelled as in ``prunelab prune``; the old ``--params`` / ``--macs`` / ``--latency-ms`` still
    work, with a note."""
    g = parser.add_argument_group("target (one of)")
    nargs = "+" if many else None
    g.add_argument("--target-params", dest="params", nargs=nargs, metavar="N",
                   help="parameter count (e.g. 20000, 1.5M)")
    g.add_argument("--target-macs", dest="macs", nargs=nargs, metavar="N", help="MACs at batch 1 (e.g. 2.5M)")
    add_alias(g, "--params", "--target-params")
    add_alias(g, "--macs", "--target-macs")
    if latency:
        g.add_argument("--target-latency-ms", dest="latency_ms", nargs=nargs, metavar="MS",
                       help="median latency measured on --latency-device")
        add_alias(g, "--latency-ms", "--target-latency-ms")
        g.add_argument("--latency-device", default="cpu", help="device of latency targets: cpu, cuda, cuda:N")
        g.add_argument("--latency-batch-size", type=int, default=1, help="batch size of latency targets")
        g.add_argument("--latency-threads", type=int, default=None,
                       help="CPU threads of latency targets (default: torch's current count)")
    g.add_argument("--tol", type=float, default=0.02, help="relative tolerance of the target (default 0.02)")
    g.add_argument("--round-to", type=int, default=1, metavar="K",
                   help="round widths to a multiple of K (8 or 16 for hardware-friendly widths)")


def targets_from_args(args) -> list:
    """The :class:`~prunelab.protocols.targets.Target` list given on the command line (may be empty)."""
    from prunelab.protocols.targets import Target, parse_number

    found = []
    for metric, attr in (("params", "params"), ("macs", "macs"), ("latency", "latency_ms")):
        values = getattr(args, attr, None)
        if values is None:
            continue
        for v in values if isinstance(values, list) else [values]:
            found.append(Target(metric, parse_number(v)))
    if len({t.metric for t in found}) > 1:
        raise PrunelabError("give targets in one metric only: --target-params, --target-macs or --target-latency-ms")
    return found


def latency_options_from_args(args):
    from prunelab.measure.timing import check_batch_size, check_device, check_threads
    from prunelab.protocols.targets import LatencyOptions

    return LatencyOptions(batch_size=check_batch_size(args.latency_batch_size),
                          device=check_device(args.latency_device), threads=check_threads(args.latency_threads))


def load_data(args):
    """The dataset of ``--data`` (with ``--data-root``, ``--val-fraction``, ``--data-option``); its splits
    do not depend on ``--seed``, so runs with different seeds share them (as ``prunelab train``)."""
    from prunelab.cli.common import data_from_args

    return data_from_args(args, seed=0)


def add_output_arguments(parser, *, no_train: bool = True) -> None:
    parser.add_argument("--out", metavar="DIR", required=True, help="folder for the checkpoint(s) and summary.json")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    if no_train:
        parser.add_argument("--no-train", dest="train", action="store_false",
                            help="stop after choosing the architecture (summary only, no checkpoint)")


def add_arguments(parser) -> None:
    add_model_argument(parser, "zoo model to reduce (see `prunelab models`)")
    parser.add_argument("--mode", choices=("width", "bottleneck", "depth"), default="width")
    parser.add_argument("--multiplier", type=float, default=None, help="fixed width / bottleneck multiplier")
    parser.add_argument("--depth", type=int, default=None, help="fixed depth (--mode depth)")
    parser.add_argument("--max-multiplier", type=float, default=1.0,
                        help="upper end of the multiplier search (default 1: never larger than the model)")
    add_target_arguments(parser)
    add_data_arguments(parser)
    add_train_arguments(parser)
    add_output_arguments(parser)


def run(args) -> int:
    from prunelab.protocols.output import save_trained, write_summary
    from prunelab.protocols.reduced import reduced_network

    model_from_args(args, checkpoints=False)
    targets = targets_from_args(args)
    fixed = args.depth if args.mode == "depth" else args.multiplier
    if args.mode != "depth" and args.depth is not None:
        raise PrunelabError("--depth goes with --mode depth; use --multiplier with width or bottleneck")
    if args.mode == "depth" and args.multiplier is not None:
        raise PrunelabError("--multiplier goes with --mode width or bottleneck; use --depth with depth")
    if len(targets) > 1 or (targets and fixed is not None) or (not targets and fixed is None):
        raise PrunelabError("give exactly one of --target-params, --target-macs, --target-latency-ms, or a fixed "
                            f"{'--depth' if args.mode == 'depth' else '--multiplier'}")
    config = train_config_from_args(args)
    latency = latency_options_from_args(args) if targets and targets[0].metric == "latency" else None
    data = load_data(args)
    with stage("searching and training the reduced network"):
        result = reduced_network(args.model, data, config, mode=args.mode, value=fixed,
                                 target=targets[0] if targets else None, round_to=args.round_to, tol=args.tol,
                                 max_multiplier=args.max_multiplier, latency=latency, train=args.train)
    out = Path(args.out)
    summary = {"command": "reduce", "model": args.model, "data": args.data, **result.to_dict()}
    if args.mode == "depth":
        summary["value"] = int(summary["value"])
    missed = (summary.get("search") or {}).get("rel_error")
    if missed is not None and abs(missed) > args.tol:
        sys.stderr.write(f"prunelab reduce: warning: the nearest legal depth, {summary['value']}, misses the "
                         f"{targets[0].metric} target by {missed:+.1%} (depth changes in whole blocks)\n")
    if result.model is not None:
        ckpt = save_trained(out / "model.pt", result.spec, result.model,
                            meta={"protocol": "reduced", "input_shape": list(data.input_shape),
                                  "dense_arch": result.base.to_dict(), "summary": summary})
        summary["checkpoint"] = str(ckpt)
    write_summary(out / "summary.json", summary)
    print_written("reduce", *([summary["checkpoint"]] if summary.get("checkpoint") else []),
                  *([summary["gates_file"]] if summary.get("gates_file") else []), out / "summary.json")
    if args.json:
        emit_json(summary)
    else:
        _print_line(summary)
    return 0


def _print_line(summary: dict) -> None:
    final = summary.get("final") or {}
    acc = final.get("test_acc")
    acc_text = f", test acc {acc:.4f}" if isinstance(acc, float) else ""
    print(f"{summary['protocol']} {summary.get('mode', '')} {summary.get('value', '')}: "
          f"{summary['params']:,} params, {summary['macs']:,} MACs{acc_text}")
