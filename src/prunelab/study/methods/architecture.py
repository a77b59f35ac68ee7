"""Architecture protocols as study kinds.

* ``reduced``: a uniformly smaller version of the model (width, bottleneck or depth; Crowley et al.
  2018, sec. 4.1) at the run's parameter or MACs target, trained from scratch with the study's recipe.
* ``pfs``: Pruning from Scratch (Wang et al. 2020): channel gates learned on a random, frozen network,
  a structure selected at the run's MACs budget, then trained from scratch (protocol ``scratch-b``,
  the paper's budget training, or ``scratch-e``).
* ``pfs-trained``: the same gate learning started from the trained dense model of the run's seed, the
  paper's comparison (pre-training narrows the structures found).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import torch

from prunelab.errors import PrunelabError
from prunelab.protocols.build import data_inputs
from prunelab.study.common import load_data
from prunelab.study.context import RunContext
from prunelab.study.method_tools import (
    SIZE_TARGETS,
    Param,
    fitted_spec,
    fresh_model,
    is_bool,
    is_int,
    is_number,
    one_of,
    resolve_params,
    size_target,
    sizes,
    trained_output,
)
from prunelab.study.run import RunConfig
from prunelab.study.tasks import RunOutput, register

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
    metric, value = size_target(run.target, *sizes(base, data_inputs(data)))
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
    shape = data_inputs(data)
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
