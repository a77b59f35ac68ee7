"""``prunelab prune --hf DIR --structured ... --out OUT_DIR``: heads and MLP widths of a Hugging Face
folder's transformer, pruned, compressed and written back as a folder ``from_pretrained`` loads.

The steps, each the library's own:

1. load the folder (:func:`prunelab.cli.common.hf_from_args`; its inputs and its head's loss);
2. find the groups (:func:`prunelab.prune.structured.find_groups`: attention heads, key/value heads
   with their query groups, MLP widths) and leave out, with a note, those a config could not state
   once pruned (:func:`prunelab.export.hf_config.hf_unprunable`: heads where the head size is
   ``hidden / heads``, as in BERT and GPT-2; plain channel groups such as BERT's pooler);
3. prune *uniformly* (:class:`~prunelab.prune.structured.StructuredConfig` ``uniform=True``): every
   layer keeps the same number of heads and the same MLP width, as one config describes every layer
   alike; one-shot (``--oneshot``, data-free criteria without ``--data``), or iterative with
   fine-tuning on ``--data`` (Crowley et al. 2018);
4. compress (checked against the masked model), optionally fine-tune the compressed model, and write
   the folder (:func:`prunelab.export.hf.write_folder`): its config must rebuild the pruned shapes and
   the folder, loaded back before it is moved into place, must give the compressed model's logits
   within 1e-5.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from prunelab.errors import PrunelabError

#: flags of the zoo pipeline that have no meaning for a folder
_NOT_FOR_HF = (("pretrain_epochs", "--pretrain-epochs (the folder holds trained weights)"),
               ("checkpoint_every_prunes", "--checkpoint-every-prunes (the result is one folder)"))


def _check_args(args, cfg) -> None:
    for name, flag in _NOT_FOR_HF:
        if getattr(args, name, None):
            raise PrunelabError(f"{flag} does not apply to --hf")
    if args.out:
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise PrunelabError(f"--out {args.out} is a file; --hf writes a model folder")
        if out.suffix in (".pt", ".json"):
            raise PrunelabError(f"--out {args.out} looks like a file; --hf writes a model folder (e.g. --out pruned/)")


def _check_data_needs(args, cfg) -> None:
    """Without ``--data``: a data-free criterion and the one-shot schedule."""
    from prunelab.prune.structured import criterion_names, get_criterion

    if args.data is not None:
        return
    if "data" in get_criterion(cfg.criterion).needs:
        free = ", ".join(n for n in criterion_names() if "data" not in get_criterion(n).needs)
        raise PrunelabError(f"--criterion {cfg.criterion} needs data: give --data (e.g. --data tokens --data-path "
                            f"FILE), or a data-free criterion: {free}")
    if cfg.schedule != "oneshot":
        raise PrunelabError("iterative pruning fine-tunes between prunes and needs --data; without data add --oneshot")
    trains = [f for f in ("epochs", "max_steps") if f in (getattr(args, "given", None) or ())]
    if trains:
        raise PrunelabError(f"--{trains[0].replace('_', '-')} needs training data: give --data")


def _check_round_to(groups, round_to: int | None) -> None:
    """``--round-to K`` keeps head counts at multiples of K too: K must divide every heads group and
    leave it a smaller multiple (else its heads could never be pruned)."""
    if not round_to:
        return
    for g in groups:
        if g.kind == "heads" and (g.width % round_to or g.width <= round_to):
            unit = g.structure
            what = (f"{g.width} key/value heads (each with {unit.group_size} query heads)"
                    if unit.group_size > 1 else f"{g.width} heads")
            why = "does not divide" if g.width % round_to else "leaves no smaller multiple of itself for"
            attention = g.name.rpartition(":")[0].rpartition(".")[2]
            raise PrunelabError(f"--round-to {round_to} {why} the {what} of {g.name} (head counts are kept at "
                                f"multiples of it): give a smaller divisor of {g.width}, or keep the heads with "
                                f"--exclude '*{attention}*'")


def describable_groups(model, groups):
    """``groups`` without those a folder could not describe once pruned; they join ``skipped``
    with their reason (and so the coverage report)."""
    from prunelab.export.hf_config import hf_unprunable

    left_out = hf_unprunable(model, groups)
    if not left_out:
        return groups
    kept = [g for g in groups if g.name not in left_out]
    skipped = [*groups.skipped, *({"group": n, "reason": r} for n, r in left_out.items())]
    return replace(groups, groups=kept, skipped=skipped)


def run(args) -> int:
    from prunelab.cli.common import (
        check_hf_fits,
        check_tracker_args,
        data_from_args,
        emit_json,
        hf_from_args,
        track_command,
        train_config_from_args,
    )
    from prunelab.cli.prune_structured import print_coverage, print_summary, ratio_target, structured_config
    from prunelab.export.hf import write_folder
    from prunelab.prune.structured import StructuredPruner, find_groups
    from prunelab.prune.structured.cost import model_size
    from prunelab.train import Trainer, evaluate, resolve_device
    from prunelab.train.progress import stage

    cfg = replace(structured_config(args), uniform=True)
    _check_args(args, cfg)
    _check_data_needs(args, cfg)
    check_tracker_args(args)
    loaded = hf_from_args(args)
    if loaded.meta:
        raise PrunelabError(f"--hf {args.hf} carries unstructured weight masks; structured pruning needs a dense "
                            f"or structurally pruned folder")
    model, spec = loaded.model, loaded.inputs
    train_config = replace(train_config_from_args(args), loss=args.loss or loaded.loss)
    data = None
    if args.data is not None:
        data = data_from_args(args, seed=train_config.seed)
        check_hf_fits(data, loaded)
    measured = spec.shape if spec.is_plain else spec
    cfg = ratio_target(cfg, args, model, measured)
    groups = describable_groups(model, find_groups(model, measured, cfg.scope, cfg.exclude))
    _check_round_to(groups, cfg.round_to)
    pruner = StructuredPruner(model, cfg, spec, groups=groups)
    print_coverage(pruner)
    device = resolve_device(train_config.device)
    summary: dict[str, Any] = {"model": args.hf, "head": loaded.head, "loss": loaded.loss, "inputs": spec.to_dict(),
                               "data": args.data, "structured": cfg.to_dict(), "scope": cfg.scope,
                               "skipped_groups": pruner.groups.skipped, "accuracy": {}}
    if data is not None:
        summary["accuracy"]["before"] = evaluate(model, data, loss=loaded.loss).get("acc")
    before = pruner.initial
    curves: list[dict] = []
    steps = 0
    if cfg.schedule == "oneshot":
        model.to(device)
        pruner.prune_oneshot(data, batch_size=train_config.batch_size, device=device, loss=loaded.loss)
        small = pruner.compress()
        pruner.detach()
        if data is not None:
            summary["accuracy"]["pruned"] = evaluate(small, data, loss=loaded.loss).get("acc")
            if train_config.epochs > 0:
                trainer = Trainer(small, data, train_config)
                with stage("fine-tuning the compressed model"):
                    curves += trainer.fit().history
                steps = trainer.step
    else:
        trainer = Trainer(model, data, train_config, callbacks=[pruner.callback()])
        with stage(f"fine-tuning and pruning {cfg.channels_per_prune} channel(s) every {cfg.prune_every} steps "
                   f"({cfg.criterion}) to {cfg.target.describe()}"):
            curves += trainer.fit().history
        steps = trainer.step
        small = pruner.compress()
        pruner.detach()
    small.eval()
    reached = pruner.reached() if cfg.target.kind != "latency_ms" else None
    params, macs = model_size(small, measured)
    if cfg.target.kind == "latency_ms":
        from prunelab.prune.structured.targets import measure_latency_ms

        summary["latency_ms"] = measure_latency_ms(small, measured, cfg.target)
        reached = cfg.target.met(summary["latency_ms"])
    if data is not None:
        summary["accuracy"]["after"] = evaluate(small, data, loss=loaded.loss).get("acc")
    summary.update(target={**cfg.target.to_dict(), "reached": bool(reached)},
                   channels={"before": before["channels"], "after": pruner.masks.remaining},
                   params={"before": before["params"], "after": params},
                   macs={"before": before["macs"], "after": macs},
                   groups=pruner.widths(), prunes=len(pruner.history), steps=steps)
    if not reached:
        sys.stderr.write(f"prunelab prune: warning: target {cfg.target.describe()} not reached"
                         + (f" (training ended after {steps} steps; raise --epochs or --max-steps)\n"
                            if cfg.schedule != "oneshot" else "\n"))
    if args.out:
        record = {k: summary[k] for k in ("model", "head", "structured", "target", "groups", "params", "macs",
                                          "accuracy", "skipped_groups")}
        out = write_folder(small, args.out, check_inputs=spec, record=record)
        summary["out"] = str(out)
        summary["config"] = _pruned_config(small, out)
    track_command(args, Path(args.out).name if args.out else f"hf-{cfg.criterion}", summary, curves,
                  {"acc": summary["accuracy"].get("after"), "params": params, "base_params": before["params"],
                   "macs": macs, "base_macs": before["macs"]})
    if args.json:
        emit_json(summary)
    else:
        print_summary(summary)
        if args.out:
            fields = ", ".join(f"{k} {v}" for k, v in summary["config"].items())
            print(f"wrote {args.out}: Hugging Face folder ({fields}); "
                  f"{loaded_auto_class(loaded)}.from_pretrained({str(args.out)!r}) loads it")
    return 0


def _pruned_config(model, out: Path) -> dict[str, Any]:
    """The sizes the written config states (heads, key/value heads, head size, MLP width)."""
    import json

    from prunelab.export.hf_config import MLP_WIDTH_FIELDS
    from prunelab.prune.structured.transformer import HEAD_COUNT_ATTRS, KV_COUNT_ATTRS

    written = json.loads((out / "config.json").read_text())
    names = (*HEAD_COUNT_ATTRS, *KV_COUNT_ATTRS, "head_dim", *MLP_WIDTH_FIELDS)
    return {k: written[k] for k in names if isinstance(written.get(k), int)}


def loaded_auto_class(loaded) -> str:
    from prunelab.models.hf import HEADS

    return HEADS[loaded.head].auto_class
