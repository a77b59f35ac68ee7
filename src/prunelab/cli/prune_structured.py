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

import torch

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
    from prunelab.prune.structured import SCOPES, criterion_names, get_criterion

    g = parser
    names = criterion_names()
    described = "; ".join(f"{n}: {get_criterion(n).summary}" for n in names).replace("%", "%%")
    g.add_argument("--criterion", choices=names, default="fisher",
                   help=f"channel score: {described} (default: fisher)")
    g.add_argument("--scope", choices=SCOPES, default="internal",
                   help="internal: channels inside residual/dense blocks only (the seeds); all: every group, "
                        "residual streams pruned jointly (default: internal)")
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
    g.add_argument("--channels-per-prune", type=int, default=1, metavar="N",
                   help="channels removed at each prune (default: 1)")
    g.add_argument("--oneshot", action="store_true",
                   help="remove to the target at once, then fine-tune the compressed model")
    t = g.add_mutually_exclusive_group()
    t.add_argument("--target-channels", type=_count, metavar="N", help="channels left in the pruned groups")
    t.add_argument("--target-params", type=_count, metavar="N", help="parameters of the compressed model")
    t.add_argument("--target-macs", type=_count, metavar="N", help="MACs (batch 1) of the compressed model")
    t.add_argument("--target-latency-ms", type=float, metavar="MS",
                   help="measured median latency of the compressed model (eager, see --latency-batch)")
    t.add_argument("--target-params-ratio", type=_ratio, metavar="R",
                   help="parameters of the compressed model as a fraction of the dense model's (0 < R < 1)")
    t.add_argument("--target-macs-ratio", type=_ratio, metavar="R",
                   help="MACs of the compressed model as a fraction of the dense model's (0 < R < 1)")
    g.add_argument("--latency-batch", type=int, default=1, metavar="B", help="batch size of latency targets")
    g.add_argument("--latency-threads", type=int, default=None, metavar="T",
                   help="CPU threads of latency targets (default: torch's current count)")
    g.add_argument("--latency-device", default="cpu", metavar="DEVICE",
                   help="device of latency targets: cpu, cuda, cuda:N (default: cpu)")
    g.add_argument("--fisher-beta", type=float, default=0.0, metavar="BETA",
                   help="cost term of --criterion fisher: score - BETA x cost freed (Theis et al.; default 0 as "
                        "the seeds)")
    g.add_argument("--fisher-cost", choices=("macs", "params"), default="macs",
                   help="what --fisher-beta charges (default: macs)")
    g.add_argument("--round-to", type=int, default=None, metavar="K",
                   help="keep every group's width a multiple of K (8 or 16 suit most CPUs and GPUs)")
    g.add_argument("--min-channels", type=_min_channels, default=None, metavar="N|FRACTION",
                   help="the fewest channels (heads, for attention) every group keeps: a whole number, or a "
                        "fraction of each group's width such as 0.25 (default: 1, or 0 where a block may vanish)")
    g.add_argument("--finetune-steps", type=int, default=0, metavar="S",
                   help="iterative: keep fine-tuning S steps after the target is reached (default: 0)")
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


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a fraction between 0 and 1 (e.g. 0.5)")
    return value


def _min_channels(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0 or (value >= 1 and value != int(value)):
        raise argparse.ArgumentTypeError(f"{text!r} must be a whole number >= 1 or a fraction in (0, 1)")
    return int(value) if value >= 1 else value


def _target(args):
    from prunelab.prune.structured import Target

    for kind, value in (("channels", args.target_channels), ("params", args.target_params),
                        ("macs", args.target_macs), ("latency_ms", args.target_latency_ms)):
        if value is not None:
            return Target(kind, value, latency_batch=args.latency_batch, latency_threads=args.latency_threads,
                          latency_device=args.latency_device)
    if _ratio_of(args) is not None:
        return None  # resolved on the loaded model (ratio_target)
    raise PrunelabError("a target is required: --target-channels, --target-params, --target-macs, "
                        "--target-latency-ms, --target-params-ratio or --target-macs-ratio")


def _ratio_of(args) -> tuple[str, float] | None:
    for kind in ("params", "macs"):
        value = getattr(args, f"target_{kind}_ratio", None)
        if value is not None:
            return kind, value
    return None


def ratio_target(cfg, args, model, inputs):
    """``cfg`` with the target of ``--target-params-ratio`` / ``--target-macs-ratio`` in real units:
    the fraction of ``model``'s dense count (params, or MACs at batch 1 on ``inputs``), rounded down."""
    from prunelab.prune.structured import Target
    from prunelab.prune.structured.cost import model_size

    given = _ratio_of(args)
    if given is None:
        return cfg
    kind, ratio = given
    params, macs = model_size(model, inputs)
    dense = params if kind == "params" else macs
    return replace(cfg, target=Target(kind, max(1, math.floor(ratio * dense))))


def structured_config(args):
    """The :class:`~prunelab.prune.structured.StructuredConfig` of the parsed flags."""
    from prunelab.prune.structured import StructuredConfig

    given = args.prune_every is not None and not isinstance(args.prune_every, _NotGiven)
    every = int(args.prune_every) if given else DEFAULT_PRUNE_EVERY
    return StructuredConfig(
        criterion=args.criterion, scope=args.scope, exclude=tuple(args.exclude or ()),
        schedule="oneshot" if args.oneshot else "iterative", prune_every=every,
        channels_per_prune=args.channels_per_prune, target=_target(args), fisher_beta=args.fisher_beta,
        fisher_cost=args.fisher_cost, round_to=args.round_to, finetune_steps=args.finetune_steps,
        checkpoint_every=args.checkpoint_every_prunes, seed=args.seed,
        min_channels=getattr(args, "min_channels", None)).validate()


def _acc(metrics: dict | None) -> float | None:
    return None if metrics is None else metrics.get("acc")


def _sizes(model, input_shape) -> dict[str, int]:
    from prunelab.prune.structured.cost import model_size

    params, macs = model_size(model, input_shape)
    return {"params": params, "macs": macs}


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
    from prunelab.checkpoint import is_checkpoint_path, model_or_checkpoint
    from prunelab.cli.common import (
        check_recorded_classes,
        check_tracker_args,
        data_from_args,
        data_meta,
        emit_json,
        fit_overrides,
        track_command,
        train_config_from_args,
    )
    from prunelab.io import atomic_write_json, check_writable
    from prunelab.prune.structured import StructuredPruner, save_pruned, spec_of_compressed
    from prunelab.train import Trainer, evaluate, resolve_device
    from prunelab.train.progress import stage

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

    check_tracker_args(args)
    data = data_from_args(args, seed=args.seed)
    torch.manual_seed(train_config.seed)
    is_checkpoint = is_checkpoint_path(args.model)
    loaded = model_or_checkpoint(args.model, **({} if is_checkpoint else fit_overrides(args.model, data)))
    model, spec = loaded.model, loaded.spec
    check_recorded_classes(loaded, data, args.model)
    from prunelab.prune.unstructured.masks import carries_masks

    if carries_masks(model.state_dict()):
        raise PrunelabError(f"{args.model} carries unstructured weight masks; structured pruning needs a dense or "
                            f"channel-pruned model")
    input_shape = tuple(data.input_shape)
    device = resolve_device(train_config.device)
    cfg = ratio_target(cfg, args, model, input_shape)
    pruner = StructuredPruner(model, cfg, input_shape, spec=spec, previous_plan=loaded.plan)

    pretrain = args.pretrain_epochs if args.pretrain_epochs is not None else (0 if is_checkpoint else
                                                                              train_config.epochs)
    print_coverage(pruner)
    summary: dict[str, Any] = {
        "model": args.model, "arch": spec.to_dict(), "data": args.data, "structured": cfg.to_dict(),
        "train": train_config.to_dict(), "pretrain_epochs": pretrain, "scope": cfg.scope,
        "skipped_groups": pruner.groups.skipped, "accuracy": {},
    }
    if pretrain > 0:
        pruner.detach()
        dense_config = replace(train_config, epochs=pretrain, checkpoint=None, resume=False)
        with stage(f"dense pre-training ({pretrain} epochs)"):
            Trainer(model, data, dense_config).fit()
        pruner.masks.attach()
    summary["accuracy"]["before"] = _acc(evaluate(model, data))
    before = pruner.initial

    written: list[str] = []

    def checkpoint(p) -> None:
        path = out.with_name(f"{out.stem}.prune{p.prunes}{out.suffix}")
        small = p.compress()
        save_pruned(path, small, p.plan(), meta={"prunes": p.prunes, "structured": cfg.to_dict(),
                                                 **data_meta(data)})
        written.append(str(path))

    steps = 0
    curves: list[dict] = []
    if cfg.schedule == "oneshot":
        model.to(device)
        pruner.prune_oneshot(data, batch_size=train_config.batch_size, device=device)
        small = pruner.compress()
        summary["accuracy"]["pruned"] = _acc(evaluate(small, data))
        pruner.detach()
        if train_config.epochs > 0:
            trainer = Trainer(small, data, train_config)
            with stage("fine-tuning the compressed model"):
                curves += trainer.fit().history
            steps = trainer.step
    else:
        callback = pruner.callback(checkpoint if cfg.checkpoint_every else None)
        trainer = Trainer(model, data, train_config, callbacks=[callback])
        with stage(f"fine-tuning and pruning {cfg.channels_per_prune} channel(s) every {cfg.prune_every} steps "
                   f"({cfg.criterion}) to {cfg.target.describe()}"):
            curves += trainer.fit().history
        steps = trainer.step
        small = pruner.compress()
        pruner.detach()
    small.eval()

    reached = pruner.reached() if cfg.target.kind != "latency_ms" else None
    after = {"channels": pruner.masks.remaining, **_sizes(small, input_shape)}
    if cfg.target.kind == "latency_ms":
        from prunelab.prune.structured.targets import measure_latency_ms

        after["latency_ms"] = measure_latency_ms(small, input_shape, cfg.target)
        reached = cfg.target.met(after["latency_ms"])
    summary["accuracy"]["after"] = _acc(evaluate(small, data))
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
    plan = pruner.plan()
    try:
        summary["compressed_spec"] = spec_of_compressed(plan).to_dict()
    except PrunelabError:
        summary["compressed_spec"] = None
    if not reached:
        sys.stderr.write(f"prunelab prune: warning: target {cfg.target.describe()} not reached "
                         f"(training ended after {steps} steps; raise --epochs or --max-steps)\n")
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
