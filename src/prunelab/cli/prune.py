"""``prunelab prune``: prune a model (unstructured weights by default, channels with ``--structured``).

Unstructured pipeline (Gupta et al. 2022, Algorithm 1): load MODEL (a zoo name, trained dense first
for ``--pretrain-epochs``, or a checkpoint), prune with ``--method`` to ``--sparsity`` (optionally with
Minimum Threshold ``--mt`` / ``--mt-percent``) one-shot, gradually while training from scratch, or in
iterative rounds, fine-tune with the masks held, then print the per-layer table and write the
checkpoint (``--out``) with its JSON summary beside it.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from prunelab.cli.common import (
    add_data_arguments,
    add_tracker_arguments,
    add_train_arguments,
    data_meta,
    emit_json,
    load_model_and_data,
    print_written,
    track_command,
    train_config_from_args,
)
from prunelab.errors import PrunelabError
from prunelab.io import check_writable


def _structured_module():
    try:
        return importlib.import_module("prunelab.cli.prune_structured")
    except ModuleNotFoundError as exc:
        if exc.name != "prunelab.cli.prune_structured":
            raise
        return None


def add_arguments(parser) -> None:
    from prunelab.cli.common import add_hf_arguments
    from prunelab.protocols.unstructured import WeightPruning
    from prunelab.prune.unstructured.pruner import PruneConfig
    from prunelab.prune.unstructured.schedules import UNITS
    from prunelab.prune.unstructured.selection import LayerSelection
    from prunelab.schema import add_flags

    parser.add_argument("model", metavar="MODEL", nargs="?", default=None,
                        help="zoo name (see `prunelab models`) or checkpoint path (or --hf FOLDER)")
    add_hf_arguments(parser)
    add_data_arguments(parser, required=False)
    parser.add_argument("--out", metavar="PATH", default=None,
                        help="write the pruned checkpoint here and its JSON summary to PATH with suffix .json")
    parser.add_argument("--json", action="store_true", help="print the JSON summary instead of tables")
    parser.add_argument("--pretrain-epochs", type=int, default=None, metavar="N",
                        help="train a zoo model dense for N epochs before pruning (default: --epochs for one-shot "
                             "and iterative magnitude pruning, 0 for gradual, random and SNIP, which start from "
                             "scratch; checkpoints are never pretrained)")
    parser.add_argument("--structured", action="store_true", help="structured (channel) pruning instead")
    add_tracker_arguments(parser)

    g = parser.add_argument_group("unstructured pruning")
    add_flags(g, PruneConfig, ["method", "sparsity"], defaults={"sparsity": None},
              more_choices={"method": ("lowrank",)},
              notes={"method": "; lowrank: FastGRNN rank columns", "sparsity": " (lowrank: fraction of rank columns)"})
    g.add_argument("--layer-sparsity", nargs="+", default=[], metavar="PATTERN=S",
                   help="layerwise: sparsity of the layers whose path matches PATTERN (glob); others get --sparsity")
    g.add_argument("--ranks", nargs="+", default=[], metavar="FACTOR=R",
                   help="lowrank: target rank per low-rank factor (module path of its first Linear)")
    add_flags(g, PruneConfig, ["mt", "mt_percent"])
    add_flags(g, WeightPruning, ["schedule"])
    g.add_argument("--prune-unit", choices=UNITS, default="epoch", help="gradual: time unit of start/end/every")
    g.add_argument("--prune-start", type=int, default=0, help="gradual: first update (epoch or step)")
    g.add_argument("--prune-end", type=int, default=None,
                   help="gradual: last update, reaching --sparsity (default: 3/4 of the training length)")
    g.add_argument("--prune-every", type=int, default=1, help="gradual: update frequency")
    g.add_argument("--initial-sparsity", type=float, default=0.0, help="gradual: sparsity at the first update")
    add_flags(g, WeightPruning, ["rounds", "rewind_epoch", "snip_batch"], defaults={"snip_batch": None},
              notes={"snip_batch": " (default: --batch-size, as a study's snip batch_size)"})
    add_flags(g, PruneConfig, ["allow_regrow"])
    add_flags(g, LayerSelection, ["keep_first_dense", "keep_last_dense", "include_types", "include_embeddings",
                                  "include"])
    g.add_argument("--exclude", nargs="+", default=[], metavar="PATTERN",
                   help="leave layers whose module path matches one of these globs dense")
    add_train_arguments(parser)
    structured = _structured_module()
    s = None
    if structured is not None:
        s = parser.add_argument_group("structured pruning (with --structured)")
        structured.add_arguments(s)
    # Flags of one mode are refused in the other (rather than silently ignored); --exclude and
    # --prune-every serve both.
    shared = {"exclude", "prune_every"}
    parser.set_defaults(_mode_flags={
        "unstructured": _group_flags(g, shared),
        "structured": _group_flags(s, shared) if s is not None else {},
    })


def _group_flags(group, skip: set[str]) -> dict[str, tuple[str, Any]]:
    """``dest -> (flag, default)`` of the options in an argument group."""
    return {a.dest: (a.option_strings[-1], a.default) for a in group._group_actions
            if a.option_strings and a.dest not in skip}


def _given(args, dest: str, default: Any) -> bool:
    """Was the option written on the command line (the CLI records that), else: is it off its default."""
    given = getattr(args, "given", None)
    return dest in given if given is not None else getattr(args, dest, default) != default


def _check_mode_flags(args) -> None:
    """Refuse unstructured-only flags with ``--structured`` and structured-only flags without it, and
    schedule-only flags under another schedule: a flag that would be ignored is an error."""
    flags = getattr(args, "_mode_flags", None) or {}
    other = "unstructured" if args.structured else "structured"
    for dest, (flag, default) in flags.get(other, {}).items():
        if _given(args, dest, default):
            hint = "drop --structured" if args.structured else "add --structured"
            raise PrunelabError(f"{flag} applies to {other} pruning only ({hint})")
    if args.structured or getattr(args, "given", None) is None:
        return
    for schedule, dests in _SCHEDULE_FLAGS.items():
        if args.prune_schedule != schedule:
            for dest in dests:
                if _given(args, dest, None):
                    raise PrunelabError(f"--{dest.replace('_', '-')} applies to --prune-schedule {schedule} only")


#: unstructured flags that only one pruning schedule reads
_SCHEDULE_FLAGS = {
    "gradual": ("prune_unit", "prune_start", "prune_end", "prune_every", "initial_sparsity"),
    "iterative": ("rounds",),
}


def _pairs(items: list[str], flag: str, convert) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.rpartition("=")
        if not sep or not key:
            raise PrunelabError(f"{flag} expects NAME=VALUE, got {item!r}")
        try:
            out[key] = convert(value)
        except ValueError:
            raise PrunelabError(f"{flag} {item!r}: {value!r} is not a valid number") from None
    return out


def _prune_config(args):
    from prunelab.prune.unstructured.pruner import PruneConfig
    from prunelab.prune.unstructured.selection import LayerSelection

    selection = LayerSelection(tuple(args.include_types), tuple(args.include), tuple(args.exclude),
                               args.keep_first_dense, args.keep_last_dense,
                               include_embeddings=bool(getattr(args, "include_embeddings", False)))
    layer_sparsity = _pairs(args.layer_sparsity, "--layer-sparsity", float)
    if args.method != "lowrank" and args.sparsity is None and not (args.method == "layerwise" and layer_sparsity):
        raise PrunelabError("--sparsity is required (a fraction in [0, 1), e.g. 0.9)")
    if args.method == "lowrank":
        return None, selection
    return PruneConfig(args.method, args.sparsity if args.sparsity is not None else 0.0, layer_sparsity,
                       args.mt, args.mt_percent, selection, seed=args.seed,
                       allow_regrow=args.allow_regrow).validate(), selection


def _check_args(args, train_config) -> None:
    if args.out is not None and Path(args.out).suffix == ".json":
        raise PrunelabError(f"--out {args.out} must not end in .json (the summary goes to PATH with suffix .json)")
    if args.out is not None:
        check_writable(Path(args.out).with_suffix(".json"))  # the summary beside it, refused before any work
    if args.pretrain_epochs is not None and args.pretrain_epochs < 0:
        raise PrunelabError(f"--pretrain-epochs must be >= 0, got {args.pretrain_epochs}")
    if args.method == "lowrank":
        if args.prune_schedule != "oneshot":
            raise PrunelabError("--method lowrank supports --prune-schedule oneshot only")
        if args.sparsity is not None and args.ranks:
            raise PrunelabError("--method lowrank takes --sparsity (fraction of rank columns) or --ranks, not both")
        if args.sparsity is None and not args.ranks:
            raise PrunelabError("--method lowrank needs either --sparsity (fraction of rank columns) or --ranks")
        if args.mt is not None or args.mt_percent is not None or args.layer_sparsity:
            raise PrunelabError("--mt, --mt-percent and --layer-sparsity do not apply to --method lowrank")
        if args.allow_regrow:
            raise PrunelabError("--allow-regrow does not apply to --method lowrank (removed rank columns never return)")
    elif args.ranks:
        raise PrunelabError("--ranks applies to --method lowrank only")
    if args.method == "layerwise" and args.prune_schedule != "oneshot":
        raise PrunelabError("--method layerwise (given per-layer sparsities) supports --prune-schedule oneshot only")
    from prunelab.protocols.unstructured import WeightPruning
    from prunelab.schema import specs

    table = specs(WeightPruning)  # the config's own rules, said with the flags' names
    if args.prune_schedule == "iterative":
        table["rounds"][0].check("--rounds", args.rounds)
    elif args.rewind_epoch is not None:
        raise PrunelabError("--rewind-epoch applies to --prune-schedule iterative only")
    table["rewind_epoch"][0].check("--rewind-epoch", args.rewind_epoch)
    if args.snip_batch is not None:
        table["snip_batch"][0].check("--snip-batch", args.snip_batch)


def _run_hf(args) -> int:
    """``prune --hf FOLDER ... [--out OUT_DIR]``: unstructured one-shot pruning of a Hugging Face
    folder's model, fine-tuned with the head's loss when ``--data`` is given, written as a folder
    (zeros in the weights, the mask record beside them: :mod:`prunelab.export.hf`)."""
    from prunelab.cli.common import (
        check_hf_fits,
        data_from_args,
        emit_json,
        hf_from_args,
        train_config_from_args,
    )
    from prunelab.export.hf import write_folder
    from prunelab.protocols.unstructured import snip_batch
    from prunelab.prune.unstructured.pruner import check_feasible, prune
    from prunelab.train import Trainer, evaluate
    from prunelab.train.progress import stage

    if args.method == "lowrank" or args.prune_schedule != "oneshot":
        raise PrunelabError("--hf folders prune with --prune-schedule oneshot and a magnitude, random or snip "
                            f"method; got --method {args.method} --prune-schedule {args.prune_schedule}")
    if args.pretrain_epochs:
        raise PrunelabError("--pretrain-epochs does not apply to --hf (the folder holds trained weights)")
    prune_config, _ = _prune_config(args)
    loaded = hf_from_args(args)
    model, spec = loaded.model, loaded.inputs
    check_feasible(model, prune_config)
    train_config = None
    data = None
    if args.data is not None:
        train_config = replace(train_config_from_args(args), loss=args.loss or loaded.loss)
        data = data_from_args(args, seed=train_config.seed)
        check_hf_fits(data, loaded)
    else:
        trains = [f for f in ("epochs", "max_steps") if f in (getattr(args, "given", None) or ())]
        if trains or args.method == "snip":
            raise PrunelabError(f"{'--method snip' if args.method == 'snip' else '--' + trains[0].replace('_', '-')} "
                                f"needs training data: give --data (e.g. --data tokens --data-path FILE)")
    summary: dict[str, Any] = {"model": args.hf, "head": loaded.head, "loss": loaded.loss, "inputs": spec.to_dict(),
                               "prune": prune_config.to_dict(), "schedule": "oneshot", "accuracy": {}}
    if data is not None:
        summary["accuracy"]["before"] = _acc(evaluate(model, data, loss=loaded.loss))
    batch = None
    if args.method == "snip":
        batch = snip_batch(data, args.snip_batch or train_config.batch_size, train_config.seed)
    report = prune(model, prune_config, batch=batch, loss_fn=loaded.loss, input_shape=spec, warn=False)
    if data is not None:
        summary["accuracy"]["pruned"] = _acc(evaluate(model, data, loss=loaded.loss))
        if train_config.epochs > 0:
            summary["train"] = train_config.to_dict()
            with stage("fine-tuning"):
                Trainer(model, data, train_config).fit()
        summary["accuracy"]["after"] = _acc(evaluate(model, data, loss=loaded.loss))
    summary["report"] = report.to_dict()
    summary.update(sparsity=report.sparsity, macs_dense=report.macs_dense, macs_sparse=report.macs_sparse)
    for message in report.warnings:
        sys.stderr.write(f"prunelab prune: warning: {message}\n")
    if args.out:
        write_folder(model, args.out, summary={k: summary[k] for k in ("model", "prune", "sparsity", "accuracy")})
    if args.json:
        emit_json(summary)
    else:
        print(report.format_table())
        acc = summary["accuracy"]
        if acc:
            print("accuracy: " + ", ".join(f"{k} {v:.4f}" for k, v in acc.items() if v is not None))
        if args.out:
            print(f"wrote {args.out} (Hugging Face folder; AutoModel.from_pretrained loads it)")
    return 0


def _acc(metrics: dict | None) -> float | None:
    return None if metrics is None else metrics.get("acc")


def run(args) -> int:
    _check_mode_flags(args)
    if args.hf is None:
        if args.model is None:
            raise PrunelabError("missing MODEL: give a zoo name (see 'prunelab models'), a checkpoint path or "
                                "--hf FOLDER")
        if args.data is None:
            raise PrunelabError("missing --data NAME: the data set to train and evaluate on (e.g. digits, cifar10)")
    if args.structured:
        structured = _structured_module()
        if structured is None:
            raise PrunelabError("structured pruning (--structured) is not available in this installation")
        if args.hf is not None:
            from prunelab.cli.prune_hf import run as run_folder  # heads and MLP widths of an HF folder

            return run_folder(args)
        return structured.run(args)
    if args.hf is not None:
        return _run_hf(args)

    from prunelab.io import atomic_write_json, save_checkpoint
    from prunelab.protocols.unstructured import LowRank, WeightPruning, default_pretrain_epochs, run_weight_pruning
    from prunelab.prune.unstructured.pruner import check_feasible
    from prunelab.prune.unstructured.schedules import GradualSchedule
    from prunelab.prune.unstructured.selection import select_layers

    train_config = train_config_from_args(args)
    _check_args(args, train_config)
    prune_config, selection = _prune_config(args)
    schedule = None
    if args.prune_schedule == "gradual":
        schedule = GradualSchedule(args.sparsity, args.prune_start, args.prune_end, args.prune_every,
                                   args.initial_sparsity, args.prune_unit).validate()
    ranks = _pairs(args.ranks, "--ranks", int) if args.ranks else None
    pruning = WeightPruning(prune_config, args.prune_schedule, schedule, rounds=args.rounds,
                            rewind_epoch=args.rewind_epoch,
                            snip_batch=args.snip_batch if args.snip_batch is not None else train_config.batch_size,
                            lowrank=LowRank(args.sparsity, ranks) if args.method == "lowrank" else None).validate()

    loaded, data, is_checkpoint = load_model_and_data(args, train_config.seed)
    model, spec = loaded.model, loaded.spec
    if prune_config is not None:
        check_feasible(model, prune_config)
    else:
        select_layers(model, selection)

    pretrain = args.pretrain_epochs
    if pretrain is None:
        pretrain = default_pretrain_epochs(args.method, args.prune_schedule, train_config.epochs, is_checkpoint)
    outcome = run_weight_pruning(model, data, pruning, train_config, pretrain_epochs=pretrain)
    result, report = outcome.result, outcome.result.report
    summary: dict[str, Any] = {
        "model": args.model,
        "arch": spec.to_dict(),
        "data": args.data,
        "schedule": args.prune_schedule,
        "prune": prune_config.to_dict() if prune_config is not None else
        {"method": "lowrank", "sparsity": args.sparsity, "ranks": ranks, "selection": selection.to_dict()},
        "train": train_config.to_dict(),
        "pretrain_epochs": pretrain,
        "accuracy": {"before": outcome.acc_dense},
    }
    curves = result.curves
    if result.gradual is not None:
        summary["gradual"] = result.gradual
    else:
        summary["accuracy"]["pruned"] = result.acc_pruned
    if result.rounds:
        summary["rounds"] = [{"round": r.round, "target": r.target, "sparsity": r.report.sparsity,
                              "acc_pruned": _acc(r.pruned_metrics), "acc_finetuned": _acc(r.finetuned_metrics)}
                             for r in result.rounds]
    summary["accuracy"]["after"] = result.acc
    summary["report"] = report.to_dict()
    summary.update(sparsity=report.sparsity, macs_dense=report.macs_dense, macs_sparse=report.macs_sparse,
                   flops_pruned=report.flops_pruned)

    for message in report.warnings:
        sys.stderr.write(f"prunelab prune: warning: {message}\n")
    if args.json:
        emit_json(summary)
    else:
        print(report.format_table())
        acc = summary["accuracy"]
        print("accuracy: " + ", ".join(f"{k} {v:.4f}" for k, v in acc.items() if v is not None))
    if args.out:
        out = Path(args.out)
        save_checkpoint(out, arch=spec.to_dict(), state_dict=model.state_dict(), plan=loaded.plan,
                        meta={"prune": {k: summary[k] for k in ("schedule", "prune", "sparsity", "accuracy")},
                              **data_meta(data)})
        atomic_write_json(out.with_suffix(".json"), summary)
        print_written("prune", out, out.with_suffix(".json"))
    from prunelab.measure import count_params

    counts = count_params(model)
    acc = summary["accuracy"]
    track_command(args, Path(args.out).stem if args.out else f"{args.model}-{args.method}", summary, curves,
                  {"acc": acc.get("after"), "acc_pruned": acc.get("pruned"), "acc_dense": acc.get("before"),
                   "params": counts.nonzero, "base_params": counts.params, "macs": report.macs_sparse,
                   "base_macs": report.macs_dense, "sparsity": report.sparsity})
    return 0
