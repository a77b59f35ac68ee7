"""``prunelab pfs``: Pruning from Scratch (Wang et al. 2020) end to end.

Learns channel gates on a randomly initialised, frozen network (or a trained one: ``--init-from``),
selects the structure at a MACs budget measured against the unexpanded default model, and trains it
from scratch (Scratch-B by default). Example::

    prunelab pfs --model resnet20 --data digits --target-macs-ratio 0.5 --expansion 1.5 --gate-epochs 5 \\
        --epochs 10 --out runs/pfs
"""

from __future__ import annotations

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
from prunelab.cli.reduce import add_output_arguments, load_data
from prunelab.errors import PrunelabError


def add_arguments(parser) -> None:
    from prunelab.protocols.pfs import PFSConfig
    from prunelab.schema import add_flags

    add_model_argument(parser, "default (unexpanded) zoo model, e.g. resnet56 or vgg16")
    b = parser.add_argument_group("MACs budget (one of)")
    b.add_argument("--target-macs-ratio", dest="macs_ratio", type=float, default=None, metavar="R",
                   help="fraction of the default model's MACs to keep (0.5 = half the MACs)")
    b.add_argument("--target-macs", dest="macs", default=None, metavar="N", help="absolute MACs budget")
    add_alias(b, "--macs-ratio", "--target-macs-ratio")
    add_alias(b, "--macs", "--target-macs")
    g = parser.add_argument_group("gate learning")
    add_flags(g, PFSConfig, ["expansion", "lam", "ratio", "epochs", "lr", "batch_size", "holdout", "tol"])
    add_alias(g, "--budget-tol", "--tol")
    g.add_argument("--init-from", default=None, metavar="CHECKPOINT",
                   help="learn the gates on this trained network instead of a random one (comparison)")
    parser.add_argument("--budget", choices=("E", "B"), default="B",
                        help="training budget of the selected structure: Scratch-B (default) or Scratch-E")
    add_data_arguments(parser)
    add_train_arguments(parser)
    add_output_arguments(parser)


def run(args) -> int:
    from prunelab.io import atomic_torch_save
    from prunelab.protocols.output import save_trained, write_summary
    from prunelab.protocols.pfs import PFSConfig, pruning_from_scratch
    from prunelab.protocols.targets import parse_number

    model_from_args(args, checkpoints=False)
    from prunelab.checkpoint import is_checkpoint_path

    if is_checkpoint_path(args.model):
        raise PrunelabError(f"MODEL is the default zoo network (e.g. resnet56); give a trained checkpoint such as "
                            f"{args.model} with --init-from")
    if (args.macs_ratio is None) == (args.macs is None):
        raise PrunelabError("give exactly one budget: --target-macs-ratio R or --target-macs N")
    pfs = PFSConfig(lam=args.lam, ratio=args.ratio, epochs=args.gate_epochs, lr=args.gate_lr,
                    batch_size=args.gate_batch_size, holdout=args.holdout, expansion=args.expansion,
                    tol=args.budget_tol).validate()
    config = train_config_from_args(args)
    data = load_data(args)
    result = pruning_from_scratch(args.model, data, config, pfs, macs_ratio=args.macs_ratio,
                                  macs=parse_number(args.macs) if args.macs is not None else None,
                                  init_from=args.init_from, budget=args.budget, train=args.train)
    out = Path(args.out)
    summary = {"command": "pfs", "model": args.model, "data": args.data, "pfs": pfs.to_dict(), **result.to_dict()}
    if result.scratch is not None:
        ckpt = save_trained(out / "model.pt", result.structure.spec, result.scratch.model,
                            meta={"protocol": "pfs", "input_shape": list(data.input_shape),
                                  "dense_arch": result.learning.default.to_dict(),
                                  "summary": summary})
        summary["checkpoint"] = str(ckpt)
    gates = {"units": [u.name for u in result.learning.units], "gates": dict(result.learning.gates),
             "arch": result.learning.spec.to_dict()}
    summary["gates_file"] = str(atomic_torch_save(gates, out / "gates.pt"))
    write_summary(out / "summary.json", summary)
    print_written("pfs", *([summary["checkpoint"]] if summary.get("checkpoint") else []),
                  *([summary["gates_file"]] if summary.get("gates_file") else []), out / "summary.json")
    if args.json:
        emit_json(summary)
    else:
        s = result.structure
        line = (f"pfs: kept {s.kept}/{s.total} gates, {s.macs:,} MACs = {s.macs_ratio:.1%} of the default model "
                f"(gates from epoch {result.learning.selected_epoch}, {result.learning.selected_by})")
        if result.scratch is not None:
            acc = (result.scratch.to_dict().get("final") or {}).get("test_acc")
            line += f"; scratch-{args.budget} {result.scratch.epochs} epochs" + (
                f", test acc {acc:.4f}" if isinstance(acc, float) else "")
        print(line)
    return 0
