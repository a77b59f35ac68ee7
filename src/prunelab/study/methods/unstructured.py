"""Unstructured (weight-level) pruning as study kinds (Gupta et al. 2022 and its comparators).

Kinds, all aiming at a weight ``sparsity`` (or ShrinkBench's ``compression``, Blalock et al. 2020):

* ``global-magnitude``: Global MP, one magnitude threshold over every selected weight, optionally with
  Minimum Threshold (``mt`` weights per layer or ``mt_percent`` of all of them);
* ``layerwise-magnitude``: a threshold per layer, the same sparsity in every layer (or the sparsities
  ``layer_sparsity`` gives per glob pattern; unnamed layers take the target);
* ``random``: random weights removed (global ranking, or the same fraction per layer with ``uniform``);
* ``snip``: SNIP, |w * dL/dw| on one training batch (Lee et al. 2019), at initialisation by default;
* ``lowrank``: Global MP over the rank columns of low-rank factor pairs (FastGRNN, Gupta et al. sec. 3).

Schedules (``schedule``): ``oneshot`` prunes the trained dense model of the run's seed (the study's
cached one) once and fine-tunes it with the ``finetune`` settings; ``iterative`` does the same in
``rounds`` rounds; ``gradual`` trains from scratch with the study's recipe while the sparsity follows
the cubic schedule of Zhu & Gupta (2017) (``gradual: {start, end, every, unit, initial}``). Gradual
pruning is itself training from scratch, so its runs take no protocol (the protocols axis collapses).

Protocols: ``finetune`` (above), and, for one-shot masks, Liu et al.'s (2019, sec. 5) retraining of
the sparse architecture from scratch: the mask is kept, the weights are drawn afresh (``reinit:
fresh``; ``original`` rewinds to the dense model's own initial weights, the lottery-ticket setting of
Frankle & Carbin 2019), then trained with the study's recipe for the same epochs (``scratch-e``) or
for the same compute (``scratch-b``: epochs x dense MACs / sparse-aware MACs, optionally capped by
``budget_cap``). SNIP at initialisation (``at: init``) prunes the freshly initialised network and
trains it (``scratch-e`` / ``scratch-b``); ``at: trained`` scores the trained model like the others.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from prunelab.errors import PrunelabError
from prunelab.protocols.build import data_inputs
from prunelab.protocols.finetune import accuracy, fine_tune
from prunelab.protocols.unstructured import WeightPruning
from prunelab.prune.unstructured.pruner import PruneConfig
from prunelab.prune.unstructured.selection import LayerSelection
from prunelab.study.common import arch_spec, dense_model, final_metrics, layer_rows, load_data, model_metrics
from prunelab.study.context import RunContext
from prunelab.study.method_tools import (
    Param,
    check_finetune,
    finetune_config,
    is_bool,
    is_int,
    is_mapping,
    is_number,
    one_of,
    resolve_params,
    schema_params,
)
from prunelab.study.run import RunConfig
from prunelab.study.tasks import RunOutput, register

PROTOCOLS = ("finetune", "scratch-e", "scratch-b")
TARGETS = ("sparsity", "compression")
REINIT_SEED_OFFSET = 100_003  # a fresh draw for Scratch-E/B, distinct from the dense model's own initialisation

_GRADUAL_KEYS = {"start", "end", "every", "unit", "initial"}

_COMMON = {
    **schema_params(WeightPruning, ("schedule",)),
    "finetune": Param({}, is_mapping, "a mapping of training settings applied on top of the study's 'train'"),
    **schema_params(WeightPruning, ("rounds",)),
    "gradual": Param({}, lambda v: isinstance(v, dict) and set(v) <= _GRADUAL_KEYS,
                     f"a mapping with keys among {', '.join(sorted(_GRADUAL_KEYS))}"),
    **schema_params(LayerSelection, ("keep_first_dense", "keep_last_dense", "include_types", "include", "exclude")),
    "reinit": Param("fresh", one_of("fresh", "original"), "one of fresh, original"),
    "budget_cap": Param(None, is_number(1.0, optional=True), "null or a factor >= 1 capping Scratch-B's epochs"),
    "checkpoint": Param(True, is_bool, "true or false (keep the pruned model in the run folder)"),
}
_MT = schema_params(PruneConfig, ("mt", "mt_percent"))
_KIND_PARAMS: dict[str, dict[str, Param]] = {
    "global-magnitude": {**_COMMON, **_MT},
    "layerwise-magnitude": {**_COMMON, "layer_sparsity": Param(
        {}, lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v),
        "a mapping of layer name pattern -> sparsity")},
    "random": {**_COMMON, **_MT, "uniform": Param(False, is_bool, "true or false (same sparsity in every layer)")},
    "snip": {**_COMMON, **_MT, "at": Param("init", one_of("init", "trained"), "one of init, trained"),
             "batch_size": Param(None, is_int(1, optional=True), "null (the training batch size) or a batch size")},
}


def target_sparsity(target: Mapping[str, Any]) -> float:
    (key, value), = target.items()
    return float(value) if key == "sparsity" else 1.0 - 1.0 / float(value)


def prune_config(run: RunConfig, sparsity: float | None = None):
    """The :class:`~prunelab.prune.unstructured.PruneConfig` of a run (``sparsity`` overrides its target)."""
    from prunelab.prune.unstructured import LayerSelection, PruneConfig

    p = run.params
    selection = LayerSelection(tuple(p["include_types"]), tuple(p["include"]), tuple(p["exclude"]),
                               p["keep_first_dense"], p["keep_last_dense"])
    if run.kind == "global-magnitude":
        method = "global"
    elif run.kind == "layerwise-magnitude":
        method = "layerwise" if p["layer_sparsity"] else "uniform"
    elif run.kind == "random":
        method = "random-uniform" if p["uniform"] else "random"
    else:
        method = "snip"
    s = target_sparsity(run.target) if sparsity is None else sparsity
    return PruneConfig(method, s, dict(p.get("layer_sparsity") or {}), p.get("mt"), p.get("mt_percent"), selection,
                       seed=run.seed).validate()


def _resolve(run: RunConfig) -> RunConfig:
    run = resolve_params(run, _KIND_PARAMS[run.kind])
    p = run.params
    if p.get("mt") is not None and p.get("mt_percent") is not None:
        raise PrunelabError("give the minimum threshold either as a count (mt) or as a percent (mt_percent), not both")
    prune_config(run)  # method, sparsity and layer patterns
    if p["schedule"] == "gradual":
        if p["finetune"]:
            raise PrunelabError("gradual pruning trains from scratch with the study's 'train' recipe; 'finetune' "
                                "does not apply (set the recipe with the method's 'train:' instead)")
        from prunelab.prune.unstructured.schedules import GradualSchedule

        GradualSchedule(target_sparsity(run.target), **p["gradual"]).validate()
        run.protocol = None  # gradual pruning is itself training from scratch: it takes no protocol
        return run
    check_finetune(run)
    if run.protocol in ("scratch-e", "scratch-b") and p["schedule"] != "oneshot":
        raise PrunelabError(f"protocol {run.protocol} retrains a one-shot mask from scratch; schedule "
                            f"{p['schedule']!r} has none (use schedule: oneshot)")
    if run.kind == "snip" and p["at"] == "init" and run.protocol == "finetune":
        raise PrunelabError("SNIP at initialisation trains the pruned network from scratch: use protocol scratch-e "
                            "or scratch-b, or at: trained to prune the trained model and fine-tune it")
    return run


def _snip_size(run: RunConfig) -> int:
    """SNIP's batch: ``batch_size`` samples, default the training batch size."""
    return int(run.params.get("batch_size") or int(run.train.get("batch_size", 128)))


def _report_metrics(report) -> dict[str, Any]:
    d = report.details or {}
    return {"prune_sparsity": report.sparsity, "flops_pruned": report.flops_pruned,
            "collapsed_layers": len(report.collapsed), "outputs_connected": report.outputs_connected,
            "sigma": report.sigma, "mt_dense_layers": len(d.get("mt_dense", []) or []),
            "mt_pinned_layers": len(d.get("mt_pinned", []) or [])}


def _save(ctx: RunContext, run: RunConfig, model: nn.Module, spec, report, artifacts: dict[str, Any]) -> None:
    from prunelab.io import atomic_write_json, save_checkpoint

    if report is not None:
        path = ctx.scratch_dir / "prune_report.json"
        atomic_write_json(path, report.to_dict())
        artifacts["prune_report"] = ctx.relative(path)
    if run.params["checkpoint"]:
        path = ctx.scratch_dir / "model.pt"
        save_checkpoint(path, arch=spec.to_dict(), state_dict=model.state_dict(),
                        meta={"study_run": run.run_id, "method": run.method, "protocol": run.protocol,
                              "target": run.target})
        artifacts["checkpoint"] = ctx.relative(path)


def _output(ctx: RunContext, run: RunConfig, model: nn.Module, spec, data, final: dict, curves: list[dict],
            report, extra: dict[str, Any]) -> RunOutput:
    shape = data_inputs(data)
    model.eval()
    metrics = final_metrics(final, data)
    metrics.update(model_metrics(model, shape, run))
    metrics["target_sparsity"] = target_sparsity(run.target)
    if report is not None:
        metrics.update(_report_metrics(report))
    metrics.update(extra)
    artifacts: dict[str, Any] = {}
    _save(ctx, run, model, spec, report, artifacts)
    return RunOutput(metrics=metrics, curves=curves, layers=layer_rows(model, shape), artifacts=artifacts)


def _scratch(ctx: RunContext, run: RunConfig, pruned: nn.Module, spec, data, init_model: nn.Module | None):
    """Liu et al. (2019) for a sparse architecture: ``pruned``'s masks on fresh weights, trained with the
    study's recipe (Scratch-E) or for the dense compute (Scratch-B)."""
    from prunelab.measure import count_macs
    from prunelab.protocols import build_model, scale_schedule
    from prunelab.protocols.scratch import scratch_b_factor
    from prunelab.prune.unstructured import apply_masks_, get_mask, set_mask

    shape = data_inputs(data)
    if init_model is None:
        seed = run.seed if run.params["reinit"] == "original" else run.seed + REINIT_SEED_OFFSET
        init_model = build_model(spec, seed=seed)
        for name, module in pruned.named_modules():
            mask = get_mask(module)
            if mask is not None:
                set_mask(init_model.get_submodule(name), mask)
    apply_masks_(init_model)
    config = run.train_config()
    factor = 1.0
    if run.protocol == "scratch-b":
        factor = scratch_b_factor(count_macs(init_model, shape), count_macs(init_model, shape, sparse=True))
        if run.params["budget_cap"] is not None:
            factor = min(factor, float(run.params["budget_cap"]))
        config = scale_schedule(config, factor)
    final, history = fine_tune(init_model, data, config, callbacks=[ctx.callback(run.protocol)])
    return init_model, final, history, {"budget_factor": factor, "epochs": config.epochs}


def _pruning(run: RunConfig, config):
    from prunelab.protocols.unstructured import WeightPruning
    from prunelab.prune.unstructured.schedules import GradualSchedule

    p = run.params
    gradual = GradualSchedule(config.sparsity, **p["gradual"]) if p["schedule"] == "gradual" else None
    return WeightPruning(config, p["schedule"], gradual, rounds=p["rounds"],
                         snip_batch=_snip_size(run)).validate()


def _pipeline_extra(result) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if result.gradual is not None:
        extra["gradual_updates"] = len(result.gradual["updates"])
    else:
        extra["acc_pruned"] = result.acc_pruned
    if result.rounds:
        extra.update(train_steps=result.train_steps, train_epochs=result.train_epochs)  # every round's
    return extra


def unstructured(run: RunConfig, ctx: RunContext) -> RunOutput:
    """One unstructured pruning run (see the module doc): the pipeline of
    :func:`prunelab.protocols.unstructured.prune_weights` on the study's dense model (or, gradual and
    SNIP at initialisation, on a fresh one), then the run's protocol."""
    from prunelab.protocols import build_model
    from prunelab.protocols.unstructured import prune_weights, snip_batch
    from prunelab.prune.unstructured import prune

    p = run.params
    data = load_data(run)
    shape = data_inputs(data)
    config = prune_config(run)
    pruning = _pruning(run, config)

    def phase(name: str) -> list:
        return [ctx.callback(name)]

    if p["schedule"] == "gradual":
        dense_spec = arch_spec(run, data)
        model = build_model(dense_spec, seed=run.seed)
        result = prune_weights(model, data, pruning, run.train_config(), callbacks=phase)
        return _output(ctx, run, model, dense_spec, data, result.final, result.curves, result.report,
                       _pipeline_extra(result))

    if run.kind == "snip" and p["at"] == "init":
        spec = arch_spec(run, data)
        model = build_model(spec, seed=run.seed)  # the dense model's own initial weights
        report = prune(model, config, batch=snip_batch(data, pruning.snip_batch, config.seed), input_shape=shape,
                       warn=False)
        model, final, history, extra = _scratch(ctx, run, model, spec, data, init_model=model)
        return _output(ctx, run, model, spec, data, final, history, report, extra)

    dense = dense_model(ctx, run, data)
    model, spec = dense.model, dense.spec
    extra: dict[str, Any] = {"acc_dense": dense.final.get("test_acc")}
    if run.protocol in ("scratch-e", "scratch-b"):
        batch = snip_batch(data, pruning.snip_batch, config.seed) if config.criterion == "snip" else None
        report = prune(model, config, batch=batch, input_shape=shape, warn=False)
        extra["acc_pruned"] = accuracy(model, data)
        model, final, history, more = _scratch(ctx, run, model, spec, data, init_model=None)
        extra.update(more)
        return _output(ctx, run, model, spec, data, final, history, report, extra)
    result = prune_weights(model, data, pruning, finetune_config(run), callbacks=phase)
    extra.update(_pipeline_extra(result))
    return _output(ctx, run, model, spec, data, result.final, result.curves, result.report, extra)


_ROLES = {"global-magnitude": "magnitude", "layerwise-magnitude": "magnitude", "random": "random"}
for _kind, _doc in (
        ("global-magnitude", "Global MP (Gupta et al. 2022), optional Minimum Threshold; one-shot, gradual or "
                             "iterative"),
        ("layerwise-magnitude", "layer-wise magnitude pruning: one threshold per layer (uniform or given "
                                "sparsities)"),
        ("random", "random weight pruning baseline (global or uniform per layer)"),
        ("snip", "SNIP (Lee et al. 2019): |w * grad| on one batch, at initialisation or on the trained model")):
    register(_kind, protocols=("scratch-e", "finetune", "scratch-b") if _kind == "snip" else PROTOCOLS,
             targets=TARGETS, resolve=_resolve, doc=_doc, role=_ROLES.get(_kind))(unstructured)


# ------------------------------------------------------------------------------------ low-rank columns

_LOWRANK = {
    "ranks": Param(None, lambda v: v is None or (isinstance(v, dict) and all(
        isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in v.values())),
        "null or a mapping of first-factor layer path -> rank >= 1"),
    "finetune": Param({}, is_mapping, "a mapping of training settings applied on top of the study's 'train'"),
    "checkpoint": Param(True, is_bool, "true or false (keep the pruned model in the run folder)"),
}


def _resolve_lowrank(run: RunConfig) -> RunConfig:
    run = resolve_params(run, _LOWRANK)
    if run.params["ranks"] is not None and run.target is not None:
        raise PrunelabError("give the low-rank target either as a column sparsity target or as 'ranks', not both")
    if run.params["ranks"] is None and run.target is None:
        raise PrunelabError("low-rank pruning needs a column sparsity target or 'ranks'")
    if run.target is not None and next(iter(run.target)) != "sparsity":
        raise PrunelabError(f"low-rank pruning aims at a column sparsity, not {next(iter(run.target))!r}")
    check_finetune(run)
    return run


@register("lowrank", protocols=("finetune",), targets=None, resolve=_resolve_lowrank,
          doc="Global MP over the rank columns of low-rank factors (FastGRNN, Gupta et al. 2022), then fine-tune")
def lowrank(run: RunConfig, ctx: RunContext) -> RunOutput:
    """Gupta et al. (2022, sec. 3, FastGRNN on HAR-2): rank the columns of the low-rank factors by
    absolute sum, keep the top ones globally (``sparsity`` over all rank columns) or to given ``ranks``,
    then fine-tune the trained model with its masks held."""
    from prunelab.protocols.unstructured import prune_lowrank
    from prunelab.prune.unstructured.lowrank import find_lowrank_pairs

    data = load_data(run)
    shape = data_inputs(data)
    dense = dense_model(ctx, run, data)
    model = dense.model
    sparsity = None if run.target is None else float(run.target["sparsity"])
    result = prune_lowrank(model, data, finetune_config(run), sparsity=sparsity, ranks=run.params["ranks"],
                           callbacks=lambda phase: [ctx.callback(phase)])
    report, final, history = result.report, result.final, result.curves
    pairs = find_lowrank_pairs(model, shape)
    kept = {pair.first_name: int(pair.kept_components().sum()) for pair in pairs}
    total = sum(pair.rank for pair in pairs)
    extra = {"acc_dense": dense.final.get("test_acc"), "acc_pruned": result.acc_pruned,
             "prune_sparsity": report.sparsity, "flops_pruned": report.flops_pruned,
             "rank_sparsity": 1.0 - sum(kept.values()) / max(1, total),
             **{f"rank_{name}": k for name, k in kept.items()}}
    model.eval()
    metrics = final_metrics(final, data)
    metrics.update(model_metrics(model, shape, run))
    metrics.update(extra)
    artifacts: dict[str, Any] = {}
    _save(ctx, run, model, dense.spec, report, artifacts)
    return RunOutput(metrics=metrics, curves=history, layers=layer_rows(model, shape), artifacts=artifacts)
