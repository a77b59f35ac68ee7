"""Architecture protocols as study kinds, and what every method adapter shares.

Kinds:

* ``reduced``: a uniformly smaller version of the model (width, bottleneck or depth; Crowley et al.
  2018, sec. 4.1) at the run's parameter or MACs target, trained from scratch with the study's recipe.
* ``pfs``: Pruning from Scratch (Wang et al. 2020): channel gates learned on a random, frozen network,
  a structure selected at the run's MACs budget, then trained from scratch (protocol ``scratch-b``,
  the paper's budget training, or ``scratch-e``).
* ``pfs-trained``: the same gate learning started from the trained dense model of the run's seed, the
  paper's comparison (pre-training narrows the structures found).

The helpers below are shared by the unstructured and structured adapters: parameters checked with
one-line errors, fine-tuning settings layered on the run's training recipe, ratio targets turned
into counts, and the size metrics and per-layer rows of an architecture measured against the
unpruned model it came from.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.study.common import arch_spec, final_metrics, load_data, model_metrics
from prunelab.study.context import RunContext
from prunelab.study.run import RunConfig
from prunelab.study.tasks import RunOutput, register

# ------------------------------------------------------------------------------------ parameters


@dataclass(frozen=True)
class Param:
    """One parameter of a kind: its default, a check of a given value, and how to say what is valid."""

    default: Any
    check: Callable[[Any], bool] | None = None
    valid: str = ""


def schema_params(cls, names) -> dict[str, Param]:
    """Study parameters from a config dataclass's field declarations (:mod:`prunelab.schema`): the
    same names, defaults and checks as the config and its command-line flags, so a setting is
    declared once."""
    from prunelab.schema import specs, yaml_default

    table = specs(cls)
    return {name: Param(yaml_default(table[name][1]), table[name][0].accepts, table[name][0].describe())
            for name in names}


def is_int(lo: int | None = None, hi: int | None = None, optional: bool = False) -> Callable[[Any], bool]:
    def check(v: Any) -> bool:
        if v is None:
            return optional
        return isinstance(v, int) and not isinstance(v, bool) and (lo is None or v >= lo) and (hi is None or v <= hi)
    return check


def is_number(lo: float | None = None, hi: float | None = None, optional: bool = False, lo_open: bool = False,
              hi_open: bool = False) -> Callable[[Any], bool]:
    def check(v: Any) -> bool:
        if v is None:
            return optional
        if isinstance(v, bool) or not isinstance(v, int | float) or v != v:
            return False
        if lo is not None and (v <= lo if lo_open else v < lo):
            return False
        return hi is None or not (v >= hi if hi_open else v > hi)
    return check


def is_bool(v: Any) -> bool:
    return isinstance(v, bool)


def one_of(*choices: Any) -> Callable[[Any], bool]:
    return lambda v: v in choices


def is_names(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) and x for x in v)


def is_mapping(v: Any) -> bool:
    return isinstance(v, dict)


def resolve_params(run: RunConfig, table: Mapping[str, Param]) -> RunConfig:
    """Fill ``run.params`` with the defaults of ``table`` and check every value (one-line errors)."""
    unknown = sorted(set(run.params) - set(table))
    if unknown:
        raise PrunelabError(f"unknown parameter(s) {unknown} for kind {run.kind}; valid: {', '.join(table)}")
    params: dict[str, Any] = {}
    for name, p in table.items():
        value = copy.deepcopy(run.params[name]) if name in run.params else copy.deepcopy(p.default)
        if p.check is not None and not p.check(value):
            raise PrunelabError(f"parameter {name} must be {p.valid}, got {value!r}")
        params[name] = value
    run.params = params
    return run


FINETUNE_VALID = "a mapping of training settings (epochs, lr, schedule, ...) applied on top of the study's 'train'"


def check_finetune(run: RunConfig, defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The run's ``finetune`` overrides merged over ``defaults``, checked as a training config."""
    from prunelab.train.config import TrainConfig

    given = run.params.get("finetune") or {}
    if not isinstance(given, dict):
        raise PrunelabError(f"parameter finetune must be {FINETUNE_VALID}, got {given!r}")
    if "seed" in given:
        raise PrunelabError("finetune cannot set 'seed': seeds come from the study's 'seeds' axis")
    merged = {**(defaults or {}), **given}
    try:
        TrainConfig.from_dict({**run.train, **merged})
    except PrunelabError as exc:
        raise PrunelabError(f"finetune: {exc}") from None
    except TypeError as exc:
        raise PrunelabError(f"finetune: bad training setting: {exc}") from None
    return merged


def finetune_config(run: RunConfig, **overrides: Any):
    """The fine-tuning :class:`~prunelab.train.config.TrainConfig`: the run's recipe, its ``finetune``
    overrides, then ``overrides``."""
    return run.train_config(**{**(run.params.get("finetune") or {}), **overrides})


# ------------------------------------------------------------------------------------ sizes and targets

SIZE_TARGETS = ("params", "macs", "params_ratio", "macs_ratio")


def fitted_spec(run: RunConfig, data):
    """The run's architecture fitted to the data (classes, input channels), as every protocol builds it."""
    return arch_spec(run, data)


def fresh_model(spec) -> nn.Module:
    """A model of ``spec`` built without touching the global random state (for counting)."""
    from prunelab.models import create

    with torch.random.fork_rng(devices=[]):
        return create(spec)


def sizes(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """(parameters, MACs at batch 1) by :mod:`prunelab.measure` conventions."""
    from prunelab.measure import count_macs, count_params

    return int(count_params(model).params), int(count_macs(model, tuple(input_shape)))


def size_target(target: Mapping[str, Any], base_params: int, base_macs: int) -> tuple[str, int]:
    """``(metric, count)`` of a size target: ratios are taken of the unpruned model's counts."""
    (key, value), = target.items()
    if key == "params":
        return "params", int(value)
    if key == "macs":
        return "macs", int(value)
    if key == "params_ratio":
        return "params", int(round(float(value) * base_params))
    if key == "macs_ratio":
        return "macs", int(round(float(value) * base_macs))
    raise PrunelabError(f"target {key!r} is not a size; valid: {', '.join(SIZE_TARGETS)}")


def architecture_metrics(model: nn.Module, base: nn.Module, input_shape: tuple[int, ...],
                         run: RunConfig) -> dict[str, Any]:
    """Size metrics of a (physically smaller) architecture against its unpruned ``base``.

    ``params`` / ``macs`` are the model's own counts; ``sparsity`` is the fraction of the base's
    Conv/Linear weights the architecture no longer has (negative when it is wider somewhere), so
    ``sparsity_kind`` is ``architecture``: weights removed, not zeroed.
    """
    from prunelab.measure import count_params

    metrics = model_metrics(model, input_shape, run, base=base)
    base_weights = count_params(base).conv_linear_weights
    metrics["sparsity"] = 1.0 - count_params(model).conv_linear_weights / max(1, base_weights)
    metrics["sparsity_kind"] = "architecture"
    return metrics


def layers_against(model: nn.Module, base: nn.Module, input_shape: tuple[int, ...]) -> list[dict[str, Any]]:
    """Per-layer rows of ``model`` against ``base``: one row per weighted layer of the base, matched by
    name, with ``weight_numel`` the base's size, ``nonzero`` what the model keeps there, and
    ``sparsity`` the fraction removed (1 for a layer the model no longer has, e.g. a block pruned to
    its shortcut or removed by a depth reduction)."""
    from prunelab.measure import layer_table

    now = {row.name: row for row in layer_table(model, input_shape)}
    rows = []
    for row in layer_table(base, input_shape):
        if row.weight_numel == 0:
            continue
        mine = now.get(row.name)
        kept = mine.nonzero if mine is not None else 0
        rows.append({"name": row.name, "kind": row.kind, "weight_numel": row.weight_numel, "nonzero": kept,
                     "sparsity": 1.0 - kept / row.weight_numel, "macs_dense": row.macs_dense,
                     "macs_sparse": mine.macs_sparse if mine is not None else 0})
    return rows


def trained_output(ctx: RunContext, run: RunConfig, model: nn.Module, base: nn.Module, data, result,
                   extra: Mapping[str, Any] | None = None, artifacts: Mapping[str, Any] | None = None,
                   save: bool = True, spec=None, plan: dict | None = None) -> RunOutput:
    """The :class:`RunOutput` of an architecture trained from scratch: test metrics of the trainer's
    final row, sizes against ``base``, its history as curves, its layers against the base, and (with
    ``save``) its checkpoint in the run folder."""
    shape = tuple(data.input_shape)
    model.eval()
    metrics = final_metrics(result.final, data)
    metrics.update(architecture_metrics(model, base, shape, run))
    metrics.update(extra or {})
    out_artifacts = dict(artifacts or {})
    if save and spec is not None:
        from prunelab.io import save_checkpoint

        path = ctx.scratch_dir / "model.pt"
        save_checkpoint(path, arch=(plan or {}).get("base") or spec.to_dict(), state_dict=model.state_dict(),
                        plan=plan, meta={"study_run": run.run_id, "method": run.method, "protocol": run.protocol})
        out_artifacts["checkpoint"] = ctx.relative(path)
    return RunOutput(metrics=metrics, curves=list(result.history), layers=layers_against(model, base, shape),
                     artifacts=out_artifacts)


# ------------------------------------------------------------------------------------ reduced networks

_REDUCED = {
    "mode": Param("width", one_of("width", "bottleneck", "depth"), "one of width, bottleneck, depth"),
    "round_to": Param(1, is_int(1), "a channel multiple >= 1 (8 or 16 for hardware-friendly widths)"),
    "tol": Param(0.02, is_number(0.0, 1.0, lo_open=True, hi_open=True), "a relative tolerance in (0, 1)"),
    "max_multiplier": Param(1.0, is_number(0.0, lo_open=True), "a multiplier > 0"),
    "checkpoint": Param(True, is_bool, "true or false (keep the trained model in the run folder)"),
}


def _resolve_reduced(run: RunConfig) -> RunConfig:
    return resolve_params(run, _REDUCED)


@register("reduced", protocols=(), targets=SIZE_TARGETS, resolve=_resolve_reduced, role="reduced",
          doc="a uniformly reduced network (width, bottleneck or depth) at the target, trained from scratch")
def reduced(run: RunConfig, ctx: RunContext) -> RunOutput:
    """Crowley et al. (2018, sec. 4.1): the model shrunk uniformly to the run's parameter or MACs target
    (bisection on the multiplier, within ``tol``; nearest legal depth for ``depth``), then trained
    from scratch with the study's training recipe, like the dense model."""
    from prunelab.protocols import Target as SizeTarget
    from prunelab.protocols import build_and_train, reduced_network

    p = run.params
    data = load_data(run)
    spec = fitted_spec(run, data)
    base = fresh_model(spec)
    metric, value = size_target(run.target, *sizes(base, tuple(data.input_shape)))
    found = reduced_network(spec, data, mode=p["mode"], target=SizeTarget(metric, float(value)),
                            round_to=p["round_to"], tol=p["tol"], max_multiplier=p["max_multiplier"], train=False)
    ctx.progress(phase="reduced", multiplier=found.value)
    model, result = build_and_train(found.spec, data, run.train_config(), callbacks=[ctx.callback("train")])
    extra = {"multiplier": found.value, "target_value": value, "target_metric": metric, "target_count": value,
             "target_error": found.search.rel_error if found.search is not None else None}
    return trained_output(ctx, run, model, base, data, result, extra, {"arch": found.spec.to_dict()},
                          save=p["checkpoint"], spec=found.spec)


# ------------------------------------------------------------------------------------ Pruning from Scratch

_PFS = {
    "lam": Param(0.5, is_number(0.0), "a penalty weight >= 0 (lambda)"),
    "ratio": Param(0.2, is_number(0.0, 1.0, lo_open=True), "the target mean gate r in (0, 1]"),
    "gate_epochs": Param(10, is_int(1), "a number of gate-learning epochs >= 1"),
    "gate_lr": Param(0.01, is_number(0.0, lo_open=True), "a learning rate > 0"),
    "gate_batch_size": Param(128, is_int(1), "a batch size >= 1"),
    "holdout": Param(0.1, is_number(0.0, 1.0, hi_open=True), "a fraction of the training split in [0, 1)"),
    "expansion": Param(1.0, is_number(0.0, lo_open=True), "a width factor > 0"),
    "expansion_mode": Param("auto", one_of("auto", "width", "bottleneck"), "one of auto, width, bottleneck"),
    "tol": Param(0.01, is_number(0.0, 1.0, lo_open=True, hi_open=True), "a relative tolerance in (0, 1)"),
    "checkpoint": Param(True, is_bool, "true or false (keep the trained model in the run folder)"),
}


def _pfs_config(params: Mapping[str, Any]):
    from prunelab.protocols import PFSConfig

    return PFSConfig(lam=params["lam"], ratio=params["ratio"], epochs=params["gate_epochs"], lr=params["gate_lr"],
                     batch_size=params["gate_batch_size"], holdout=params["holdout"], expansion=params["expansion"],
                     expansion_mode=params["expansion_mode"], tol=params["tol"]).validate()


def _resolve_pfs(run: RunConfig) -> RunConfig:
    run = resolve_params(run, _PFS)
    _pfs_config(run.params)
    return run


def _resolve_pfs_trained(run: RunConfig) -> RunConfig:
    run = _resolve_pfs(run)
    if run.params["expansion"] != 1.0:
        raise PrunelabError(f"pfs-trained learns gates on the trained dense model, which is not expanded; "
                            f"expansion must be 1.0, got {run.params['expansion']}")
    return run


def _pfs_gates(ctx: RunContext, run: RunConfig, data, default, cfg, init_from: str | None) -> dict[str, Any]:
    """Stage 1 of PFS, shared by every budget of one (model, data, recipe, seed, gate settings): the gates
    do not depend on the budget (the reference learns them once, then picks a structure per ratio)."""
    import json

    from prunelab.io import atomic_write_json
    from prunelab.protocols import learn_gates
    from prunelab.protocols.pfs import holdout_split

    settings = {k: v for k, v in cfg.to_dict().items() if k != "tol"}  # tol only matters to the selection
    key = {"what": "pfs-gates", "arch": default.to_dict(), "data": run.data, "train": run.train, "pfs": settings,
           "init_from": "dense" if init_from is not None else None}

    def produce(folder) -> None:
        ctx.progress(phase="learning gates", epochs=cfg.epochs)
        learning, _ = learn_gates(default, data, cfg, run.train_config(), init_from=init_from)
        held = len(holdout_split(data, cfg.holdout, run.seed).val) if cfg.holdout > 0 else len(data.val)
        atomic_write_json(folder / "gates.json", {
            "learning": learning.to_dict(), "gates": {name: g.tolist() for name, g in learning.gates.items()},
            "selection_split": "held-out part of the training split" if cfg.holdout > 0 else "validation split",
            "selection_samples": held})

    return json.loads((ctx.artifact(key, produce) / "gates.json").read_text())


def _pfs_run(run: RunConfig, ctx: RunContext, trained: bool) -> RunOutput:
    from prunelab.models import ArchSpec, width_units
    from prunelab.protocols import PrunedArchitecture, select_structure, train_from_scratch
    from prunelab.protocols.pfs import budget_macs
    from prunelab.study.common import dense_model

    data = load_data(run)
    shape = tuple(data.input_shape)
    default = fitted_spec(run, data)
    base = fresh_model(default)
    cfg = _pfs_config(run.params)
    (key, value), = run.target.items()
    budget = {"macs_ratio": float(value)} if key == "macs_ratio" else {"macs": float(value)}
    init_from = str(dense_model(ctx, run, data).checkpoint) if trained else None
    record = _pfs_gates(ctx, run, data, default, cfg, init_from)
    gates = record["learning"]
    learned = ArchSpec.from_dict(gates["arch"])
    units = list(width_units(fresh_model(learned), learned))
    target, reference = budget_macs(default, shape, **budget)
    chosen = select_structure(learned, units, {k: torch.tensor(v) for k, v in record["gates"].items()}, target,
                              reference, shape, tol=cfg.tol)
    arch = PrunedArchitecture(chosen.spec, None, default, "pfs")
    scratch = train_from_scratch(arch, data, run.train_config(), budget="B" if run.protocol == "scratch-b" else "E",
                                 callbacks=[ctx.callback(run.protocol or "train")])
    extra = {"macs_ratio": chosen.macs_ratio, "budget_macs": chosen.budget_macs, "target_metric": "macs",
             "target_count": chosen.budget_macs, "kept_gates": chosen.kept, "total_gates": chosen.total,
             "gates_selected_by": gates["selected_by"], "gates_selected_epoch": gates["selected_epoch"],
             "gates_nonzero_fraction": gates["nonzero_fraction"], "budget_factor": scratch.factor,
             "epochs": scratch.epochs,
             "model_selection": f"last epoch; gates by accuracy on the {record['selection_split']} "
                                f"({record['selection_samples']} samples)"}
    return trained_output(ctx, run, scratch.model, base, data, scratch.result, extra,
                          {"arch": chosen.spec.to_dict(), "widths": chosen.widths},
                          save=run.params["checkpoint"], spec=chosen.spec)


@register("pfs", protocols=("scratch-b", "scratch-e"), targets=("macs", "macs_ratio"), resolve=_resolve_pfs,
          doc="Pruning from Scratch: gates on a random frozen network, structure at the MACs budget, Scratch-B")
def pfs(run: RunConfig, ctx: RunContext) -> RunOutput:
    """Wang et al. (2020): learn gates on a randomly initialised, frozen network (lambda, r, Adam lr
    0.01), pick the structure meeting the MACs budget (global top-k, bisection, against the
    unexpanded model), train it from scratch for the budget (``scratch-b``) or the dense epochs."""
    return _pfs_run(run, ctx, trained=False)


@register("pfs-trained", protocols=("scratch-b", "scratch-e"), targets=("macs", "macs_ratio"),
          resolve=_resolve_pfs_trained,
          doc="PFS gate learning started from the trained dense model (the paper's comparison)")
def pfs_trained(run: RunConfig, ctx: RunContext) -> RunOutput:
    """Wang et al. (2020), the comparison: the same gate learning and structure selection, but on the
    trained dense model of this seed instead of a random one; the structure is then trained from scratch."""
    return _pfs_run(run, ctx, trained=True)
