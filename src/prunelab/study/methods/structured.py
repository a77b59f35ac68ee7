"""Structured channel pruning as study kinds (Crowley et al. 2018, after Theis et al. 2018).

Kinds, by channel criterion: ``fisher`` (the Fisher signal of the channel mask), ``l1`` (L1 norm of the
producing filter; ``signed: true`` is the reference code's signed sum), ``bn-scale`` (|gamma|, network
slimming) and ``random-channel``; and ``structured``, whose ``criterion`` parameter names any
registered criterion (:func:`prunelab.prune.structured.criterion_names`: ``taylor``, ``apoz``,
``l1-normalized``, a plugin's own...). Targets are sizes of the compressed model: ``params`` / ``macs``
counts, or ``params_ratio`` / ``macs_ratio`` of the dense model.

The prune is shared: for one (model, data, training recipe, seed, criterion, target, pruning
settings) it runs once, as a study artifact, and every protocol reads its result:

* ``finetune``: the pruned-and-fine-tuned network itself. With the seeds' ``iterative`` schedule the
  trained dense model is fine-tuned continuously (``finetune`` settings; default the reference's
  constant lr 8e-4) and ``channels_per_prune`` channels are removed every ``prune_every`` (K) steps
  until the target; ``finetune_epochs`` more epochs may follow (default 0: the reference evaluates
  the checkpoint at the target). The pruning phase runs until the target is met (its epoch count is
  only a bound), so its learning rate is best constant, as in the reference. With ``oneshot`` the
  channels go at once (Fisher accumulated over K batches) and ``finetune_epochs`` (default: the
  dense epochs) of fine-tuning follow.
* ``scratch-e`` / ``scratch-b``: the pruned architecture re-initialised for its actual sizes and trained
  with the dense recipe for the same epochs, or for the dense model's compute (Liu et al. 2019).
* ``copy-profile``: the width profile of one prune (at ``profile_target``, default the run's own
  target; the other protocols ignore it) scaled by one factor to the run's target and trained from
  scratch: "prune once, get a family" (Crowley et al. 2018). A block pruned to zero width keeps one
  channel in the copies.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from prunelab.errors import PrunelabError
from prunelab.protocols.build import data_inputs
from prunelab.study.common import dense_model, final_metrics, load_data, plan_fingerprint
from prunelab.study.context import RunContext
from prunelab.study.method_tools import (
    SIZE_TARGETS,
    Param,
    architecture_metrics,
    check_finetune,
    evaluate_final,
    finetune_config,
    fresh_model,
    is_bool,
    is_int,
    is_mapping,
    is_names,
    is_number,
    layers_against,
    one_of,
    resolve_params,
    size_target,
    sizes,
    trained_output,
)
from prunelab.study.run import RunConfig
from prunelab.study.targets import check_target
from prunelab.study.tasks import RunOutput, register

CRITERION_OF = {"fisher": "fisher", "l1": "l1", "bn-scale": "bn", "random-channel": "random"}
PROTOCOLS = ("finetune", "scratch-e", "scratch-b", "copy-profile")
FINETUNE_DEFAULTS = {"lr": 8e-4, "schedule": "constant"}  # pytorch-prunes prune.py: SGD at a constant 8e-4


def _is_size_target(v: Any) -> bool:
    if v is None:
        return True
    try:
        t = check_target(v)
    except PrunelabError:
        return False
    return t is not None and next(iter(t)) in SIZE_TARGETS


_COMMON = {
    "scope": Param("internal", one_of("internal", "all"), "one of internal, all"),
    "exclude": Param([], is_names, "a list of layer name or type patterns"),
    "schedule": Param("iterative", one_of("iterative", "oneshot"), "one of iterative, oneshot"),
    "prune_every": Param(100, is_int(1), "a number of steps K >= 1"),
    "channels_per_prune": Param(1, is_int(1), "a number of channels >= 1"),
    "round_to": Param(None, is_int(1, optional=True), "null or a channel multiple >= 1 (e.g. 8 or 16)"),
    "finetune": Param({}, is_mapping, "a mapping of training settings applied on top of the study's 'train'"),
    "finetune_epochs": Param(None, is_int(0, optional=True),
                             "null (0 iterative, the dense epochs one-shot) or a number of epochs >= 0"),
    "profile_target": Param(None, _is_size_target,
                            f"null (the run's own target) or a target with one of the keys {', '.join(SIZE_TARGETS)}"),
    "profile_round_to": Param(1, is_int(1), "a channel multiple >= 1"),
    "tol": Param(0.02, is_number(0.0, 1.0, lo_open=True, hi_open=True), "a relative tolerance in (0, 1)"),
    "checkpoint": Param(True, is_bool, "true or false (keep the trained model in the run folder)"),
    "min_channels": Param(None, lambda v: v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)
                                                         and v > 0 and (v < 1 or v == int(v))),
                          "null, a whole number of channels >= 1 or a fraction in (0, 1) of each group's width"),
}
_COST_TERM = {"fisher_beta": Param(0.0, is_number(0.0), "a cost weight >= 0 (0 = reference code)"),
              "fisher_cost": Param("macs", one_of("macs", "params"), "one of macs, params")}
_KIND_PARAMS = {
    "fisher": {**_COMMON, **_COST_TERM},
    "l1": {**_COMMON, "signed": Param(False, is_bool, "true or false (the reference code's signed filter sum)")},
    "bn-scale": dict(_COMMON),
    "random-channel": dict(_COMMON),
}


def _params(kind: str) -> dict[str, Param]:
    if kind != "structured":
        return _KIND_PARAMS[kind]
    from prunelab.prune.structured import criterion_names

    names = criterion_names()
    return {"criterion": Param("fisher", one_of(*names), f"one of {', '.join(names)}"), **_COMMON, **_COST_TERM}


def _resolve(run: RunConfig) -> RunConfig:
    run = resolve_params(run, _params(run.kind))
    p = run.params
    p["finetune"] = check_finetune(run, FINETUNE_DEFAULTS)
    if p["finetune_epochs"] is None:
        p["finetune_epochs"] = 0 if p["schedule"] == "iterative" else int(run.train["epochs"])
    if p["profile_target"] is not None:
        p["profile_target"] = check_target(p["profile_target"])
    if p["scope"] != "internal" and run.protocol == "copy-profile":
        raise PrunelabError("copy-profile scales block-internal widths: use scope internal")
    if p.get("min_channels") is None:  # absent unless given: the params (and ids) of earlier runs stay
        p.pop("min_channels", None)
    _structured_config(run, None)
    return run


def _criterion(run: RunConfig) -> str:
    if run.kind == "structured":
        return run.params["criterion"]
    crit = CRITERION_OF[run.kind]
    return "l1-signed" if crit == "l1" and run.params.get("signed") else crit


def _structured_config(run: RunConfig, target):
    from prunelab.prune.structured import StructuredConfig

    p = run.params
    return StructuredConfig(
        criterion=_criterion(run), scope=p["scope"], exclude=tuple(p["exclude"]), schedule=p["schedule"],
        prune_every=p["prune_every"], channels_per_prune=p["channels_per_prune"], target=target,
        fisher_beta=float(p.get("fisher_beta", 0.0)), fisher_cost=p.get("fisher_cost", "macs"),
        round_to=p["round_to"], finetune_steps=0, seed=run.seed, min_channels=p.get("min_channels")).validate()


# ------------------------------------------------------------------------------------ the shared prune

PRUNE_KEYS = ("scope", "exclude", "schedule", "prune_every", "channels_per_prune", "round_to", "finetune",
              "fisher_beta", "fisher_cost", "signed", "min_channels")


def _prune_key(run: RunConfig, spec, metric: str, value: int) -> dict[str, Any]:
    return {"what": "structured-prune", "arch": spec.to_dict(), "data": run.data, "train": run.train,
            "criterion": _criterion(run), "target": {metric: int(value)},
            "prune": {k: run.params[k] for k in PRUNE_KEYS if k in run.params}}


def _epoch_bound(data, config, channels: int, per_prune: int, every: int) -> int:
    """Epochs enough for every prune the target could need (training stops once it is reached)."""
    steps_per_epoch = max(1, len(data.train) // config.batch_size)
    prunes = math.ceil(channels / per_prune) + 1
    return math.ceil(prunes * every / steps_per_epoch) + 1


def shared_prune(ctx: RunContext, run: RunConfig, data, target: dict[str, Any]) -> Path:
    """The artifact folder of the prune of ``run``'s dense model to ``target``: ``model.pt`` (the
    compressed model, its plan and weights) and ``prune.json`` (history, accuracies, widths)."""
    from prunelab.prune.structured import StructuredPruner, Target, save_pruned
    from prunelab.train import Trainer, evaluate, resolve_device

    dense = dense_model(ctx, run, data)
    shape = data_inputs(data)
    metric, value = size_target(target, *sizes(dense.model, shape))
    key = _prune_key(run, dense.spec, metric, value)

    def produce(folder: Path) -> None:
        from prunelab.io import atomic_write_json

        model = dense.model
        cfg = _structured_config(run, Target(metric, float(value)))
        pruner = StructuredPruner(model, cfg, shape, spec=dense.spec)
        history: list[dict[str, Any]] = []
        steps = 0
        ctx.progress(phase=f"pruning to {metric} {value:,}")
        if cfg.schedule == "iterative":
            bound = _epoch_bound(data, run.train_config(), pruner.groups.total_channels, cfg.channels_per_prune,
                                 cfg.prune_every)
            # Training stops at the target; a max_steps of the dense recipe does not cut the prune short.
            overrides: dict[str, Any] = {"epochs": bound}
            if "max_steps" not in run.params["finetune"]:
                overrides["max_steps"] = None
            tcfg = finetune_config(run, **overrides)
            callback = pruner.callback()
            trainer = Trainer(model, data, tcfg, callbacks=[callback, ctx.callback("pruning")])
            result = trainer.fit()
            history, steps = list(result.history), int(trainer.step)
            if callback.reached_at is None:
                raise PrunelabError(f"pruning to {metric} {value:,} stopped after {steps} steps at "
                                    f"{pruner.measure(exact=True)[metric]:,} {metric}; raise finetune max_steps "
                                    f"or channels_per_prune")
        else:
            tcfg = finetune_config(run)
            pruner.prune_oneshot(data, batch_size=tcfg.batch_size, device=resolve_device(tcfg.device))
        small = pruner.compress()
        pruner.detach()
        plan = pruner.plan()
        save_pruned(folder / "model.pt", small, plan, meta={"structured": cfg.to_dict(), "dense_acc":
                                                            dense.final.get("test_acc")})
        small.eval()
        atomic_write_json(folder / "prune.json", {
            "acc_dense": dense.final.get("test_acc"), "acc_pruned": evaluate(small, data)["acc"],
            "history": history, "prunes": len(pruner.history), "steps": steps,
            "channels_before": pruner.initial["channels"], "channels_after": pruner.masks.remaining,
            "widths": pruner.widths(), "target": {metric: value}})

    return ctx.artifact(key, produce)


def _architecture(plan: dict):
    """The pruned architecture of ``plan`` for training from scratch. A block pruned to zero width has
    no constructor form (widths are >= 1), so the base model compressed by the plan is used then."""
    from prunelab.models import ArchSpec
    from prunelab.protocols import PrunedArchitecture, pruned_architecture

    arch = pruned_architecture(plan)
    if arch.plan is None:
        try:
            fresh_model(arch.spec)
        except PrunelabError:
            base = ArchSpec.from_dict(plan["base"])
            arch = PrunedArchitecture(base, plan, base, "plan")
    return arch


def _profile(plan: dict):
    """The width profile of ``plan`` (Crowley et al. 2018): kept / unpruned width per width unit. Read
    from the plan itself when a unit was pruned to zero width (its narrowed spec cannot be built); the
    scaled members keep at least one channel per unit."""
    from prunelab.models import ArchSpec
    from prunelab.protocols import read_profile
    from prunelab.protocols.profile import ProfileEntry, WidthProfile

    try:
        return read_profile(plan)
    except PrunelabError:
        groups = plan.get("groups") or []
        if plan.get("scope") != "internal" or not all(g.get("unit") for g in groups) or \
                all(g["kept"] for g in groups):
            raise
    base = ArchSpec.from_dict(plan["base"])
    return WidthProfile(base, base, [ProfileEntry(str(g["name"]), int(g["width"]), len(g["kept"])) for g in groups])


def _read(folder: Path):
    from prunelab.checkpoint import load_model

    return load_model(folder / "model.pt"), json.loads((folder / "prune.json").read_text())


# ------------------------------------------------------------------------------------ the protocols


def structured(run: RunConfig, ctx: RunContext) -> RunOutput:
    """One structured pruning run: the shared prune, then the run's protocol (see the module doc)."""
    data = load_data(run)
    dense = dense_model(ctx, run, data)
    base = fresh_model(dense.spec)
    folder = shared_prune(ctx, run, data, run.target)
    loaded, record = _read(folder)
    extra: dict[str, Any] = {k: record[k] for k in ("acc_dense", "acc_pruned", "prunes", "steps", "channels_before",
                                                    "channels_after")}
    (extra["target_metric"], extra["target_count"]), = record["target"].items()
    artifacts: dict[str, Any] = {"prune": ctx.relative(folder)}
    if run.protocol == "finetune":
        extra["prune_steps"] = record["steps"]  # fine-tuning steps taken while the channels were removed
        extra["mask_hash"] = plan_fingerprint(loaded.plan)
        return _fine_tuned(ctx, run, data, loaded, record, base, extra, artifacts)
    if run.protocol in ("scratch-e", "scratch-b"):
        extra["mask_hash"] = plan_fingerprint(loaded.plan)
        return _from_scratch(ctx, run, data, loaded.plan, base, extra, artifacts)
    return _copied(ctx, run, data, folder, base, extra, artifacts)


def _fine_tuned(ctx: RunContext, run: RunConfig, data, loaded, record: dict, base, extra: dict,
                artifacts: dict) -> RunOutput:
    """The pruned network itself, after ``finetune_epochs`` more epochs of fine-tuning."""
    from prunelab.prune.structured import save_pruned
    from prunelab.train import Trainer

    shape = data_inputs(data)
    model = loaded.model
    curves = [{**row, "phase": "pruning"} for row in record["history"]]
    epochs = int(run.params["finetune_epochs"])
    if epochs > 0:
        result = Trainer(model, data, finetune_config(run, epochs=epochs), callbacks=[ctx.callback("finetune")]).fit()
        offset = float(curves[-1]["epoch"]) if curves else 0.0
        curves += [{**row, "epoch": offset + float(row["epoch"]), "phase": "finetune"} for row in result.history]
        final = result.final
    else:
        final = evaluate_final(model, data)
    model.eval()
    metrics = final_metrics(final, data)
    metrics.update(architecture_metrics(model, base, shape, run))
    metrics.update(extra)
    if run.params["checkpoint"]:
        path = ctx.scratch_dir / "model.pt"
        save_pruned(path, model, loaded.plan, meta={"study_run": run.run_id, "protocol": run.protocol})
        artifacts["checkpoint"] = ctx.relative(path)
    return RunOutput(metrics=metrics, curves=curves, layers=layers_against(model, base, shape), artifacts=artifacts)


def _from_scratch(ctx: RunContext, run: RunConfig, data, plan: dict, base, extra: dict, artifacts: dict) -> RunOutput:
    """Liu et al. (2019): the pruned architecture re-initialised, trained for the dense epochs (E) or compute (B)."""
    from prunelab.protocols import train_from_scratch

    budget = "B" if run.protocol == "scratch-b" else "E"
    res = train_from_scratch(_architecture(plan), data, run.train_config(), budget=budget,
                             callbacks=[ctx.callback(run.protocol)])
    extra.update(budget_factor=res.factor, epochs=res.epochs)
    return trained_output(ctx, run, res.model, base, data, res.result, extra, artifacts, save=run.params["checkpoint"],
                          spec=res.spec, plan=res.plan)


def _copied(ctx: RunContext, run: RunConfig, data, folder: Path, base, extra: dict, artifacts: dict) -> RunOutput:
    """Crowley et al. (2018): the profile of the prune at ``profile_target`` scaled to this run's target."""
    from prunelab.protocols import Target as SizeTarget
    from prunelab.protocols import build_and_train, copy_profile

    p = run.params
    source = folder
    if p["profile_target"] is not None:
        source = shared_prune(ctx, run, data, p["profile_target"])
        artifacts["profile_prune"] = ctx.relative(source)
    profile = _profile(_read(source)[0].plan)
    metric, value = size_target(run.target, *sizes(base, data_inputs(data)))
    member = copy_profile(profile, data, target=SizeTarget(metric, float(value)), round_to=p["profile_round_to"],
                          tol=p["tol"], train=False)
    model, result = build_and_train(member.spec, data, run.train_config(), callbacks=[ctx.callback("copy-profile")])
    extra.update(alpha=member.alpha, target_value=value, target_metric=metric, target_count=value)
    artifacts["arch"] = member.spec.to_dict()
    return trained_output(ctx, run, model, base, data, result, extra, artifacts, save=p["checkpoint"],
                          spec=member.spec)


for _kind, _doc in (("fisher", "Fisher channel pruning (Theis et al. 2018; Crowley et al. 2018)"),
                    ("l1", "L1-norm filter pruning (Li et al. 2017)"),
                    ("bn-scale", "BatchNorm-scale channel pruning (network slimming, Liu et al. 2017)"),
                    ("random-channel", "random channel pruning baseline"),
                    ("structured", "channel pruning with any registered criterion (parameter 'criterion')")):
    register(_kind, protocols=PROTOCOLS, targets=SIZE_TARGETS, resolve=_resolve,
             doc=f"{_doc}: fine-tuned, retrained from scratch (Scratch-E/B) or copied to the target",
             role={"l1": "magnitude", "random-channel": "random"}.get(_kind))(structured)
