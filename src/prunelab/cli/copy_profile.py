"""``prunelab copy-profile``: scale a pruned width profile into a family of networks and train them.

SOURCE is a pruned checkpoint or a structured plan (.json). Each target (or alpha) gives one member;
``--onto`` first carries the profile over to another model of the same family (e.g. WRN-40-2's
profile onto WRN-16-2, stage by stage). Example::

    prunelab copy-profile runs/pruned/model.pt --data digits --target-params 8000 15000 --epochs 5 --out runs/copy
"""

from __future__ import annotations

from pathlib import Path

from prunelab.cli.common import (
    add_data_arguments,
    add_train_arguments,
    emit_json,
    print_written,
    train_config_from_args,
)
from prunelab.cli.reduce import add_output_arguments, add_target_arguments, load_data, targets_from_args
from prunelab.cli.scratch import read_source
from prunelab.errors import PrunelabError
from prunelab.train.progress import stage


def add_arguments(parser) -> None:
    parser.add_argument("source", metavar="SOURCE", help="pruned checkpoint (.pt) or structured plan (.json)")
    parser.add_argument("--base", default=None, metavar="MODEL",
                        help="the unpruned model (zoo name) when the source does not record it")
    parser.add_argument("--onto", default=None, metavar="MODEL",
                        help="apply the profile to another model of the same family (e.g. another depth)")
    parser.add_argument("--alpha", type=float, nargs="+", default=None, help="fixed scale(s) of the pruned widths")
    add_target_arguments(parser, latency=False, many=True)
    add_data_arguments(parser)
    add_train_arguments(parser)
    add_output_arguments(parser)


def run(args) -> int:
    from prunelab.protocols.output import save_trained, write_summary
    from prunelab.protocols.profile import copy_profile, read_profile

    targets = targets_from_args(args)
    if bool(targets) == bool(args.alpha):
        raise PrunelabError("give --target-params N..., --target-macs N... or --alpha A... (exactly one)")
    config = train_config_from_args(args)
    profile = read_profile(read_source(args.source), args.base)
    data = load_data(args)
    onto = args.onto
    # Search every member first, so an unreachable target fails before any training or writing.
    jobs = [{"target": t} for t in targets] or [{"alpha": a} for a in args.alpha]
    members = [copy_profile(profile, data, config, onto=onto, round_to=args.round_to, tol=args.tol, train=False,
                            **job) for job in jobs]
    out = Path(args.out)
    rows = []
    for i, (job, member) in enumerate(zip(jobs, members)):
        if args.train:
            with stage(f"training family member {i + 1} of {len(jobs)}"):
                member = copy_profile(profile, data, config, alpha=member.alpha, onto=onto,
                                      round_to=args.round_to, train=True)
        row = member.to_dict()
        if "target" in job:
            row["target"] = job["target"].to_dict()
            row["search"] = members[i].search.to_dict() if members[i].search else None
        if member.model is not None:
            ckpt = save_trained(out / f"member-{i}.pt", member.spec, member.model,
                                meta={"protocol": "copied-profile", "input_shape": list(data.input_shape),
                                      "dense_arch": member.profile.base.to_dict(),
                                      "summary": row})
            row["checkpoint"] = str(ckpt)
        rows.append(row)
    summary = {"command": "copy-profile", "source": str(args.source), "data": args.data, "onto": onto,
               "profile": profile.to_dict(), "members": rows}
    write_summary(out / "summary.json", summary)
    print_written("copy-profile", *(row["checkpoint"] for row in rows if row.get("checkpoint")), out / "summary.json")
    if args.json:
        emit_json(summary)
    else:
        for row in rows:
            acc = (row.get("final") or {}).get("test_acc")
            print(f"alpha {row['alpha']:.4g}: {row['params']:,} params, {row['macs']:,} MACs"
                  + (f", test acc {acc:.4f}" if isinstance(acc, float) else ""))
    return 0
