"""``prunelab scratch``: train a pruned architecture from scratch, Scratch-E or Scratch-B.

SOURCE is a prunelab checkpoint of a pruned model, or a structured plan as JSON. Example::

    prunelab scratch runs/pruned/model.pt --data digits --budget B --epochs 10 --out runs/scratch-b
"""

from __future__ import annotations

import json
from pathlib import Path

from prunelab.cli.common import (
    add_alias,
    add_data_arguments,
    add_train_arguments,
    emit_json,
    print_written,
    train_config_from_args,
)
from prunelab.cli.reduce import add_output_arguments, load_data
from prunelab.errors import PrunelabError
from prunelab.train.progress import stage


def add_arguments(parser) -> None:
    parser.add_argument("source", metavar="SOURCE", help="pruned checkpoint (.pt) or structured plan (.json)")
    parser.add_argument("--budget", choices=("E", "B"), default="B",
                        help="E: --epochs (the dense model's); B: --epochs x dense MACs / pruned MACs (default)")
    parser.add_argument("--base", dest="dense", default=None, metavar="MODEL",
                        help="the dense model (zoo name) for Scratch-B when the source does not record it")
    add_alias(parser, "--dense", "--base")
    parser.add_argument("--init", choices=("family", "constructor"), default="family",
                        help="family: the family's init for the actual layer sizes (default); constructor: keep "
                             "a plan's slices of a full-width init (pytorch-prunes)")
    add_data_arguments(parser)
    add_train_arguments(parser)
    add_output_arguments(parser, no_train=False)


def read_source(text: str):
    """A checkpoint path stays a path; a ``.json`` file is read as a structured plan."""
    path = Path(text)
    if path.suffix.lower() != ".json":
        return text
    if not path.is_file():
        raise PrunelabError(f"plan file not found: {path}")
    try:
        plan = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PrunelabError(f"plan file {path} is not valid JSON ({exc})") from None
    if not isinstance(plan, dict) or "groups" not in plan or "base" not in plan:
        raise PrunelabError(f"plan file {path} is not a structured plan (needs 'base' and 'groups')")
    return plan


def run(args) -> int:
    from prunelab.protocols.output import save_trained, write_summary
    from prunelab.protocols.scratch import pruned_architecture, train_from_scratch

    config = train_config_from_args(args)
    arch = pruned_architecture(read_source(args.source), args.dense)
    if args.budget == "B" and arch.dense is None:
        raise PrunelabError("Scratch-B needs the dense model the architecture was pruned from: pass --base MODEL")
    if getattr(args, "given", None) is not None and "epochs" not in args.given:
        raise PrunelabError(f"give --epochs: the dense model's training epochs (Scratch-{args.budget} "
                            + ("trains that long)" if args.budget == "E" else "scales them by the MACs ratio)"))
    data = load_data(args)
    with stage(f"training from scratch (Scratch-{args.budget})"):
        result = train_from_scratch(arch, data, config, budget=args.budget, init=args.init)
    out = Path(args.out)
    summary = {"command": "scratch", "source": str(args.source), "data": args.data, **result.to_dict()}
    ckpt = save_trained(out / "model.pt", result.spec, result.model, plan=result.plan,
                        meta={"protocol": f"scratch-{args.budget}", "input_shape": list(data.input_shape),
                              "dense_arch": result.dense.to_dict() if result.dense else None, "summary": summary})
    summary["checkpoint"] = str(ckpt)
    write_summary(out / "summary.json", summary)
    print_written("scratch", *([summary["checkpoint"]] if summary.get("checkpoint") else []),
                  *([summary["gates_file"]] if summary.get("gates_file") else []), out / "summary.json")
    if args.json:
        emit_json(summary)
    else:
        acc = (summary.get("final") or {}).get("test_acc")
        print(f"scratch-{args.budget}: {result.epochs} epochs (x{result.factor:.3f}), {result.params:,} params, "
              f"{result.macs:,} MACs" + (f", test acc {acc:.4f}" if isinstance(acc, float) else ""))
    return 0
