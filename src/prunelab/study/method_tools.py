"""What every study method shares: parameter tables checked with one-line errors, fine-tuning settings
layered on the run's training recipe, ratio targets turned into counts, and the size metrics and
per-layer rows of an architecture measured against the unpruned model it came from.

The kinds themselves are one module each in :mod:`prunelab.study.methods`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.protocols.build import data_inputs
from prunelab.study.common import arch_spec, final_metrics, model_metrics
from prunelab.study.context import RunContext
from prunelab.study.run import RunConfig
from prunelab.study.tasks import RunOutput

# ------------------------------------------------------------------------------------ parameters


@dataclass(frozen=True)
class Param:
    """One parameter of a kind: its default, a check of a given value, and how to say what is valid."""

    default: Any
    check: Callable[[Any], bool] | None = None
    valid: str = ""


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

    return int(count_params(model).params), int(count_macs(model, input_shape))


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


def evaluate_final(model: nn.Module, data) -> dict[str, Any]:
    """Test and validation loss / accuracy of ``model``, shaped like a trainer's final row."""
    from prunelab.train import evaluate

    test, val = evaluate(model, data, "test"), evaluate(model, data, "val")
    return {"test_acc": test["acc"], "test_loss": test["loss"], "val_acc": val["acc"], "val_loss": val["loss"]}


def trained_output(ctx: RunContext, run: RunConfig, model: nn.Module, base: nn.Module, data, result,
                   extra: Mapping[str, Any] | None = None, artifacts: Mapping[str, Any] | None = None,
                   save: bool = True, spec=None, plan: dict | None = None) -> RunOutput:
    """The :class:`RunOutput` of an architecture trained from scratch: test metrics of the trainer's
    final row, sizes against ``base``, its history as curves, its layers against the base, and (with
    ``save``) its checkpoint in the run folder."""
    shape = data_inputs(data)
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
