"""``prunelab prune --structured``: channel pruning with a registered criterion (Fisher, L1, BN, ...).

Pipeline (Crowley et al. 2018, after Theis et al. 2018): load MODEL (a zoo name, trained dense first
for ``--pretrain-epochs``, or a checkpoint, possibly already pruned), find its channel groups
(``--scope``), then either

* iterative (default): fine-tune with the training flags and remove ``--channels-per-prune`` channels
  every ``--prune-every`` steps until the target, then ``--finetune-steps`` more; ``--epochs`` /
  ``--max-steps`` bound the run (the seeds fine-tune at a small constant LR: ``--schedule constant
  --lr 8e-4``);
* ``--oneshot``: rank once (Fisher accumulated over ``--prune-every`` batches), remove to the target,
  compress, then fine-tune the compressed model for ``--epochs``.

The result is compressed, checked against the masked model, and written to ``--out`` as a plan plus a
plain state_dict (no pickled modules), with a JSON summary beside it (per-group widths before/after,
params, MACs, accuracy).
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from prunelab.errors import PrunelabError

#: steps between prunes when --prune-every is not given (pytorch-prunes: one channel every 100 steps)
DEFAULT_PRUNE_EVERY = 100


class _NotGiven(int):
    """An int default that remembers it was not typed on the command line.

    ``--prune-every`` is shared with unstructured gradual pruning (default 1 update per epoch); for
    structured pruning the default is :data:`DEFAULT_PRUNE_EVERY` steps.
    """


def _has_option(parser, flag: str):
    return parser._option_string_actions.get(flag)


def add_arguments(parser) -> None:
    """The structured flags: those of :class:`~prunelab.prune.structured.StructuredConfig` fields come
    from the fields' declarations (:mod:`prunelab.schema`: type, range, choices, default, help)."""
    from prunelab.prune.structured import StructuredConfig, criterion_names, get_criterion
    from prunelab.schema import add_flags

    g = parser
    names = criterion_names()
    described = "; ".join(f"{n}: {get_criterion(n).summary}" for n in names).replace("%", "%%")
    g.add_argument("--criterion", choices=names, default="fisher",
                   help=f"channel score: {described} (default: fisher)")
    add_flags(g, StructuredConfig, ["scope"])
    exclude = _has_option(g, "--exclude")
    if exclude is None:
        g.add_argument("--exclude", nargs="+", default=[], metavar="PATTERN",
                       help="keep the output width of layers whose path or class name matches a glob")
    else:
        exclude.help = (exclude.help or "") + "; --structured: also class names, the group keeps its width"
    every = _has_option(g, "--prune-every")
    if every is None:
        g.add_argument("--prune-every", type=int, default=DEFAULT_PRUNE_EVERY, metavar="K",
                       help=f"training steps between prunes (default: {DEFAULT_PRUNE_EVERY})")
    else:
        if isinstance(every.default, int):
            every.default = _NotGiven(every.default)
        every.help = (every.help or "") + f"; --structured: training steps between prunes (default " \
                                          f"{DEFAULT_PRUNE_EVERY})"
    add_flags(g, StructuredConfig, ["channels_per_prune"])
    g.add_argument("--oneshot", action="store_true",
                   help="remove to the target at once, then fine-tune the compressed model")
    t = g.add_mutually_exclusive_group()
    t.add_argument("--target-channels", type=_count, metavar="N", help="channels left in the pruned groups")
    t.add_argument("--target-params", type=_count, metavar="N", help="parameters of the compressed model")
    t.add_argument("--target-macs", type=_count, metavar="N", help="MACs (batch 1) of the compressed model")
    t.add_argument("--target-params-ratio", type=float, metavar="R",
                   help="parameters of the compressed model as a fraction of the unpruned model's, in (0, 1)")
    t.add_argument("--target-macs-ratio", type=float, metavar="R",
                   help="MACs of the compressed model as a fraction of the unpruned model's, in (0, 1)")
    t.add_argument("--target-latency-ms", type=float, metavar="MS",
                   help="measured median latency of the compressed model (eager, see --latency-batch-size)")
    g.add_argument("--latency-batch-size", type=int, default=1, metavar="B", help="batch size of latency targets")
    from prunelab.cli.common import add_alias

    add_alias(g, "--latency-batch", "--latency-batch-size")
    g.add_argument("--latency-threads", type=int, default=None, metavar="T",
                   help="CPU threads of latency targets (default: torch's current count)")
    g.add_argument("--latency-device", default="cpu", metavar="DEVICE",
                   help="device of latency targets: cpu, cuda, cuda:N (default: cpu)")
    add_flags(g, StructuredConfig, ["fisher_beta", "fisher_cost", "round_to", "min_channels"])
    g.add_argument("--allow-miss", action="store_true",
                   help="write the model even when training ended before the target was reached (default: a "
                        "missed target is an error, exit 2, nothing written)")
    add_flags(g, StructuredConfig, ["finetune_steps"])
    g.add_argument("--checkpoint-every-prunes", type=int, default=None, metavar="N",
                   help="iterative: write the compressed model and its plan every N prunes next to --out "
                        "(PATH.pruneN.pt; the seeds keep every 100)")


def _count(text: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 1 or value != int(value):
        raise argparse.ArgumentTypeError(f"{text!r} must be a whole number >= 1")
    return int(value)


#: ratio flags -> the size they are a fraction of (of the unpruned model, counted as the study counts)
RATIO_TARGETS = {"target_params_ratio": "params", "target_macs_ratio": "macs"}


def _target(args, model=None, input_shape=None):
    """The target of the flags. A ratio becomes a count of ``model`` (the unpruned one) at
    ``input_shape``, as a study's ``params_ratio`` / ``macs_ratio`` does; without a model it is only
    checked (and stands in as its own value)."""
    from prunelab.prune.structured import Target

    latency = {"latency_batch": args.latency_batch_size, "latency_threads": args.latency_threads,
               "latency_device": args.latency_device}
    for dest, kind in RATIO_TARGETS.items():
        ratio = getattr(args, dest, None)
        if ratio is None:
            continue
        if not 0 < ratio < 1:
            raise PrunelabError(f"--{dest.replace('_', '-')} must be in (0, 1), got {ratio}")
        if model is None:
            return Target(kind, ratio, **latency)
        from prunelab.measure import count_macs, count_params

        base = count_params(model).params if kind == "params" else count_macs(model, input_shape)
        return Target(kind, float(int(round(ratio * base))), **latency)
    for kind, value in (("channels", args.target_channels), ("params", args.target_params),
                        ("macs", args.target_macs), ("latency_ms", args.target_latency_ms)):
        if value is not None:
            return Target(kind, value, **latency)
    raise PrunelabError("a target is required: --target-channels, --target-params, --target-macs, "
                        "--target-params-ratio, --target-macs-ratio or --target-latency-ms")


def ratio_target(cfg, args, model, inputs):
    """``cfg`` with the target of ``--target-params-ratio`` / ``--target-macs-ratio`` in real units: the
    fraction of ``model``'s dense count (params, or MACs at batch 1 on ``inputs``), as a study counts it."""
    if all(getattr(args, dest, None) is None for dest in RATIO_TARGETS):
        return cfg
    return replace(cfg, target=_target(args, model, inputs))


def structured_config(args, model=None, input_shape=None):
    """The :class:`~prunelab.prune.structured.StructuredConfig` of the parsed flags (ratio targets
    turned into counts of ``model``, see :func:`_target`)."""
    from prunelab.prune.structured import StructuredConfig

    given = args.prune_every is not None and not isinstance(args.prune_every, _NotGiven)
    every = int(args.prune_every) if given else DEFAULT_PRUNE_EVERY
    return StructuredConfig(
        criterion=args.criterion, scope=args.scope, exclude=tuple(args.exclude or ()),
        schedule="oneshot" if args.oneshot else "iterative", prune_every=every,
        channels_per_prune=args.channels_per_prune, target=_target(args, model, input_shape),
        fisher_beta=args.fisher_beta,
        fisher_cost=args.fisher_cost, round_to=args.round_to, finetune_steps=args.finetune_steps,
        checkpoint_every=args.checkpoint_every_prunes, seed=args.seed,
        min_channels=getattr(args, "min_channels", None)).validate()


def print_coverage(pruner) -> None:
    """What the prune can touch, on stderr: prunable fractions in scope, and every group left out."""
    cov = pruner.coverage()
    sys.stderr.write(f"prunelab prune: {cov['groups']} prunable group(s) in scope {pruner.config.scope!r}: "
                     f"{cov['params_in_prunable_layers']:.1%} of the parameters are in prunable layers; at most "
                     f"{cov['params_removable']:.1%} of the parameters and {cov['macs_removable']:.1%} of the MACs "
                     f"can be removed\n")
    for s in cov["skipped"]:
        sys.stderr.write(f"prunelab prune: not pruned: {s['group']}: {s['reason']}\n")


def run(args) -> int:
    from prunelab.cli.common import (
        data_meta,
        emit_json,
        load_model_and_data,
        print_written,
        track_command,
        train_config_from_args,
    )
    from prunelab.io import atomic_write_json, check_writable
    from prunelab.protocols.build import data_inputs
    from prunelab.protocols.structured import run_channel_pruning
    from prunelab.prune.structured import StructuredPruner, save_pruned, spec_of_compressed

    train_config = train_config_from_args(args)
    cfg = structured_config(args)
    out = Path(args.out) if args.out else None
    if out is not None and out.suffix == ".json":
        raise PrunelabError(f"--out {args.out} must not end in .json (the summary goes to PATH with suffix .json)")
    if out is not None:
        check_writable(out.with_suffix(".json"))  # the summary beside it, refused before any work
    if cfg.checkpoint_every and out is None:
        raise PrunelabError("--checkpoint-every-prunes needs --out (checkpoints are written next to it)")
    if cfg.checkpoint_every and cfg.schedule == "oneshot":
        raise PrunelabError("--checkpoint-every-prunes applies to the iterative schedule only")
    if args.pretrain_epochs is not None and args.pretrain_epochs < 0:
        raise PrunelabError(f"--pretrain-epochs must be >= 0, got {args.pretrain_epochs}")

    loaded, data, is_checkpoint = load_model_and_data(args, train_config.seed)
    model, spec = loaded.model, loaded.spec
    from prunelab.prune.unstructured.masks import carries_masks

    if carries_masks(model.state_dict()):
        raise PrunelabError(f"{args.model} carries unstructured weight masks; structured pruning needs a dense or "
                            f"channel-pruned model")
    input_shape = data_inputs(data)
    if any(getattr(args, dest, None) is not None for dest in RATIO_TARGETS):
        cfg = structured_config(args, model, input_shape)
    pruner = StructuredPruner(model, cfg, input_shape, spec=spec, previous_plan=loaded.plan)
    pretrain = args.pretrain_epochs if args.pretrain_epochs is not None else (0 if is_checkpoint else
                                                                              train_config.epochs)
    print_coverage(pruner)
    written: list[str] = []

    def checkpoint(p) -> None:
        path = out.with_name(f"{out.stem}.prune{p.prunes}{out.suffix}")
        save_pruned(path, p.compress(), p.plan(), meta={"prunes": p.prunes, "structured": cfg.to_dict(),
                                                        **data_meta(data)})
        written.append(str(path))

    outcome = run_channel_pruning(pruner, data, train_config, pretrain_epochs=pretrain,
                                  on_checkpoint=checkpoint if cfg.checkpoint_every else None)
    small, before, after, reached = outcome.model, outcome.before, outcome.after, outcome.reached
    summary: dict[str, Any] = {
        "model": args.model, "arch": spec.to_dict(), "data": args.data, "structured": cfg.to_dict(),
        "train": train_config.to_dict(), "pretrain_epochs": pretrain, "scope": cfg.scope,
        "skipped_groups": pruner.groups.skipped, "accuracy": {"before": outcome.acc_dense},
    }
    if cfg.schedule == "oneshot":
        summary["accuracy"]["pruned"] = outcome.pruning.acc_pruned
    summary["accuracy"]["after"] = outcome.acc
    steps, curves = outcome.steps, outcome.curves
    summary.update(
        target={**cfg.target.to_dict(), "reached": bool(reached)},
        channels={"before": before["channels"], "after": after["channels"]},
        params={"before": before["params"], "after": after["params"]},
        macs={"before": before["macs"], "after": after["macs"]},
        groups=pruner.widths(), prunes=len(pruner.history), steps=steps, history=pruner.history,
        group_seconds=round(pruner.group_seconds, 4),
    )
    if "latency_ms" in after:
        summary["latency_ms"] = after["latency_ms"]
    plan = outcome.pruning.plan
    try:
        summary["compressed_spec"] = spec_of_compressed(plan).to_dict()
    except PrunelabError:
        summary["compressed_spec"] = None
    if not reached:
        why = (f"target {cfg.target.describe()} not reached (training ended after {steps} steps at "
               f"{after['params']:,} params, {after['macs']:,} MACs; raise --epochs or --max-steps")
        if not args.allow_miss:
            for path in written:  # nothing of a failed prune stays behind
                Path(path).unlink(missing_ok=True)
            raise PrunelabError(f"{why}, or give --allow-miss to keep the model anyway)")
        sys.stderr.write(f"prunelab prune: warning: {why})\n")
    collapsed = [g for g in summary["groups"] if g["after"] <= 1 < g["before"] // 4]
    if collapsed:
        listed = ", ".join(f"{g['group']} {g['before']} -> {g['after']}" for g in collapsed[:4])
        sys.stderr.write(f"prunelab prune: warning: layer collapse: {len(collapsed)} group(s) kept at most one "
                         f"channel ({listed}); the {cfg.criterion} scores are ranked across layers, so "
                         f"layers with small filters can go first (--exclude them, or use fisher or "
                         f"l1-normalized)\n")
    if out is not None:
        save_pruned(out, small, plan, meta={"structured": cfg.to_dict(), "accuracy": summary["accuracy"],
                                             **data_meta(data),
                                             "target": summary["target"]})
        summary["checkpoints"] = written
        atomic_write_json(out.with_suffix(".json"), summary)
        print_written("prune", *written, out, out.with_suffix(".json"))
    acc = summary["accuracy"]
    track_command(args, out.stem if out is not None else f"{args.model}-{cfg.criterion}", summary, curves,
                  {"acc": acc.get("after"), "acc_pruned": acc.get("pruned"), "acc_dense": acc.get("before"),
                   "params": after["params"], "base_params": before["params"], "macs": after["macs"],
                   "base_macs": before["macs"], "channels": after["channels"]})
    if args.json:
        emit_json(summary)
    else:
        print_summary(summary)
    return 0


def print_summary(s: dict) -> None:
    print(f"{'group':32s} {'before':>7s} {'after':>7s}")
    for row in s["groups"]:
        print(f"{row['group']:32s} {row['before']:7d} {row['after']:7d}")
    print(f"channels {s['channels']['before']:,} -> {s['channels']['after']:,}; "
          f"params {s['params']['before']:,} -> {s['params']['after']:,}; "
          f"MACs {s['macs']['before']:,} -> {s['macs']['after']:,}")
    acc = {k: v for k, v in s["accuracy"].items() if v is not None}
    if acc:
        print("accuracy: " + ", ".join(f"{k} {v:.4f}" for k, v in acc.items()))
