"""The unstructured (weight) pruning pipeline: prune on a schedule, fine-tune, report.

Gupta et al. (2022, Algorithm 1, Global MP): a densely trained model (see
:func:`prunelab.protocols.finetune.pretrain`) is pruned to a weight sparsity and fine-tuned with its
masks held. :func:`prune_weights` runs that for every schedule:

* ``oneshot``: prune once (``prunelab.prune.unstructured.prune``), then fine-tune;
* ``gradual``: train while the sparsity follows the cubic schedule of Zhu & Gupta (2017)
  (:class:`~prunelab.prune.unstructured.schedules.GradualPruning`), normally from scratch;
* ``iterative``: prune and fine-tune in rounds (Han et al. 2015; with rewinding, Frankle & Carbin 2019);

and :func:`prune_lowrank` for the rank columns of low-rank factor pairs (FastGRNN, Gupta et al. sec. 3).
``prunelab prune`` and the study kinds ``global-magnitude``, ``layerwise-magnitude``, ``random``,
``snip`` and ``lowrank`` all call these functions, so the same settings and seed give the same masks,
weights and accuracies on both paths.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.protocols.build import data_inputs
from prunelab.protocols.finetune import Pretrained, accuracy, evaluate_final, fine_tune, pretrain
from prunelab.prune.unstructured.schedules import MAX_ROUNDS
from prunelab.schema import check_fields, option

SCHEDULES = ("oneshot", "gradual", "iterative")
#: methods that rank trained weights, so a zoo model is trained dense before it is pruned (the study's
#: dense model); gradual pruning, and SNIP at initialisation (Lee et al. 2019), start from scratch
TRAINED_WEIGHT_METHODS = ("global", "uniform", "layerwise", "random", "random-uniform", "lowrank")

#: a function giving the extra trainer callbacks of a phase ("finetune", "gradual", "iterative")
PhaseCallbacks = Callable[[str], Sequence[Any]]


def _no_callbacks(phase: str) -> Sequence[Any]:
    return ()


@dataclass(frozen=True)
class LowRank:
    """A low-rank column target: ``sparsity`` of all rank columns, or ``ranks`` (first factor's path ->
    rank), one of them."""

    sparsity: float | None = None
    ranks: Mapping[str, int] | None = None


@dataclass
class WeightPruning:
    """How a model's weights are pruned: a :class:`~prunelab.prune.unstructured.PruneConfig` (what
    goes, to which sparsity) and the schedule. ``gradual``: the
    :class:`~prunelab.prune.unstructured.schedules.GradualSchedule` (its ``final`` is the config's
    sparsity); ``rounds`` and ``rewind_epoch``: the iterative schedule's; ``snip_batch``: training
    samples SNIP scores (drawn by the config's seed)."""

    config: Any = None
    schedule: str = option("oneshot", "one-shot, gradual (while training from scratch, Zhu & Gupta 2017) or "
                           "iterative (prune/fine-tune rounds)", choices=SCHEDULES, flag="--prune-schedule",
                           dest="prune_schedule")
    gradual: Any = None
    rounds: int = option(3, "iterative: number of prune/fine-tune rounds (1 to 100)", lo=1, hi=MAX_ROUNDS,
                         valid=f"1 to {MAX_ROUNDS}")
    rewind_epoch: int | None = option(None, "iterative: rewind surviving weights to this epoch of the first "
                                      "training run", kind=int, lo=0, optional=True)
    snip_batch: int = option(128, "snip: number of training samples scored", lo=1, metavar="N")
    lowrank: LowRank | None = None

    @property
    def method(self) -> str:
        return "lowrank" if self.lowrank is not None else self.config.method

    def validate(self) -> WeightPruning:
        if (self.config is None) == (self.lowrank is None):
            raise PrunelabError("weight pruning takes a PruneConfig or a low-rank target, one of them")
        if self.lowrank is not None and self.schedule != "oneshot":
            raise PrunelabError("low-rank column pruning supports the oneshot schedule only")

        check_fields(self, ("schedule", "snip_batch", "rewind_epoch"))
        if self.schedule == "gradual" and self.gradual is None:
            raise PrunelabError("gradual pruning needs a GradualSchedule")
        if self.schedule == "iterative":
            check_fields(self, ("rounds",))
        return self


@dataclass
class WeightPruningResult:
    """What :func:`prune_weights` (or :func:`prune_lowrank`) did to the model (pruned in place).

    ``report``: the masks now on the model (per layer, MACs); ``acc_pruned``: test accuracy right after
    pruning, before fine-tuning (the last round's, iterative; None for gradual); ``final``: the last
    trainer row (or an evaluation when nothing was trained); ``curves``: training rows (iterative:
    epochs continue across rounds, each row with its ``round``); ``rounds``: the iterative rounds;
    ``gradual``: the sparsity updates of the gradual schedule.
    """

    report: Any
    acc_pruned: float | None
    final: dict[str, Any]
    curves: list[dict[str, Any]]
    rounds: list[Any] = field(default_factory=list)
    gradual: dict[str, Any] | None = None
    train_steps: int = 0
    train_epochs: float = 0.0

    @property
    def acc(self) -> float | None:
        return self.final.get("test_acc")


def snip_batch(data, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``size`` training samples drawn by ``seed``: the batch SNIP scores (Lee et al. 2019, one batch)."""
    from prunelab.data import Feed

    g = torch.Generator().manual_seed(int(seed))
    idx = torch.randperm(len(data.train), generator=g)[:size]
    return Feed(data).take("train", idx)


def prune_weights(model: nn.Module, data, pruning: WeightPruning, finetune, *,
                  rewind_state: Mapping[str, torch.Tensor] | None = None,
                  callbacks: PhaseCallbacks = _no_callbacks) -> WeightPruningResult:
    """Prune ``model`` in place as ``pruning`` says and fine-tune it with the ``finetune``
    :class:`~prunelab.train.config.TrainConfig` (gradual: the training run itself). ``rewind_state``:
    iterative rounds rewind the surviving weights to it (else to ``pruning.rewind_epoch`` of the first
    round's fine-tuning). ``callbacks(phase)``: extra trainer callbacks (a study's progress)."""
    from prunelab.prune.unstructured.pruner import prune
    from prunelab.prune.unstructured.report import build_report
    from prunelab.prune.unstructured.schedules import GradualPruning, prune_iterative
    from prunelab.prune.unstructured.selection import select_layers
    from prunelab.train import Trainer
    from prunelab.train.progress import stage

    pruning.validate()
    if pruning.lowrank is not None:
        return prune_lowrank(model, data, finetune, sparsity=pruning.lowrank.sparsity, ranks=pruning.lowrank.ranks,
                             callbacks=callbacks)
    config, shape = pruning.config, data_inputs(data)
    batch = snip_batch(data, pruning.snip_batch, config.seed) if config.criterion == "snip" else None

    if pruning.schedule == "gradual":
        gradual = GradualPruning(config, pruning.gradual)
        with stage("training with gradual pruning"):
            result = Trainer(model, data, finetune, callbacks=[gradual, *callbacks("gradual")]).fit()
        selected = select_layers(model, config.selection)
        report = build_report(model, selected, method=config.method, target_sparsity=config.sparsity,
                              input_shape=shape, sigma=config.sigma(sum(x.numel for x in selected)),
                              details=gradual.last_report.details if gradual.last_report else {}, warn=False)
        history = list(result.history)
        return WeightPruningResult(report, None, dict(result.final), history,
                                   gradual={"schedule": gradual.schedule.to_dict(), "updates": gradual.history},
                                   **_length(history))

    if pruning.schedule == "iterative":
        with stage(f"iterative pruning ({pruning.rounds} rounds)"):
            rounds = prune_iterative(model, data, finetune, config, rounds=pruning.rounds,
                                     rewind_state=dict(rewind_state) if rewind_state is not None else None,
                                     rewind_epoch=pruning.rewind_epoch if rewind_state is None else None,
                                     batch=batch, input_shape=shape, callbacks=list(callbacks("iterative")))
        curves: list[dict[str, Any]] = []
        offset, steps = 0.0, 0
        for r in rounds:
            curves += [{**row, "epoch": offset + float(row["epoch"]), "round": r.round} for row in r.history]
            offset += float(r.history[-1]["epoch"]) if r.history else 0.0
            steps += int(r.history[-1]["step"]) if r.history else 0
        last = rounds[-1]
        report = build_report(model, select_layers(model, config.selection), method=config.method,
                              target_sparsity=config.sparsity, input_shape=shape, sigma=last.report.sigma,
                              details=last.report.details, warn=False)
        return WeightPruningResult(report, (last.pruned_metrics or {}).get("acc"), evaluate_final(model, data),
                                   curves, rounds=rounds, train_steps=steps, train_epochs=offset)

    report = prune(model, config, batch=batch, input_shape=shape, warn=False)
    acc_pruned = accuracy(model, data)
    final, history = fine_tune(model, data, finetune, callbacks=callbacks("finetune"))
    return WeightPruningResult(report, acc_pruned, final, history, **_length(history))


def prune_lowrank(model: nn.Module, data, finetune, *, sparsity: float | None = None,
                  ranks: Mapping[str, int] | None = None,
                  callbacks: PhaseCallbacks = _no_callbacks) -> WeightPruningResult:
    """Gupta et al. (2022, sec. 3, FastGRNN): remove the rank columns of ``model``'s low-rank factor
    pairs by global magnitude (``sparsity`` of all columns) or to ``ranks`` (first factor's path ->
    rank), then fine-tune with the masks held."""
    from prunelab.prune.unstructured.lowrank import prune_lowrank_columns

    report = prune_lowrank_columns(model, sparsity=sparsity, ranks=ranks, input_shape=data_inputs(data),
                                   warn=False)
    acc_pruned = accuracy(model, data)
    final, history = fine_tune(model, data, finetune, callbacks=callbacks("finetune"))
    return WeightPruningResult(report, acc_pruned, final, history, **_length(history))


@dataclass
class WeightPruningRun:
    """:func:`run_weight_pruning`'s outcome: the dense pre-training, the dense model's test accuracy
    (before pruning) and the pruning."""

    pretrained: Pretrained
    acc_dense: float | None
    result: WeightPruningResult


def default_pretrain_epochs(method: str, schedule: str, epochs: int, from_checkpoint: bool) -> int:
    """Dense epochs before pruning when none are given: a zoo model ranked by trained weights
    (:data:`TRAINED_WEIGHT_METHODS`, one-shot or iterative) is trained for ``epochs`` first, the
    study's dense model; gradual pruning and SNIP start from scratch; a checkpoint is already trained."""
    if from_checkpoint or schedule == "gradual" or method not in TRAINED_WEIGHT_METHODS:
        return 0
    return int(epochs)


def run_weight_pruning(model: nn.Module, data, pruning: WeightPruning, train, *, pretrain_epochs: int = 0,
                       callbacks: PhaseCallbacks = _no_callbacks) -> WeightPruningRun:
    """The whole unstructured pipeline on ``model`` (in place): dense pre-training for
    ``pretrain_epochs`` with ``train`` (a snapshot at ``pruning.rewind_epoch`` when rewinding), then
    :func:`prune_weights` with ``train`` as the fine-tuning (or gradual training) recipe."""
    pruning.validate()
    if pruning.rewind_epoch is not None:
        limit = pretrain_epochs if pretrain_epochs > 0 else train.epochs
        if not 0 <= pruning.rewind_epoch < max(limit, 1):
            raise PrunelabError(f"rewind epoch {pruning.rewind_epoch} must be in [0, {limit}) "
                                f"(epochs of the first training run)")
    dense = pretrain(model, data, train, pretrain_epochs,
                     rewind_epoch=pruning.rewind_epoch if pretrain_epochs > 0 else None,
                     callbacks=callbacks("dense"))
    acc_dense = accuracy(model, data)
    result = prune_weights(model, data, pruning, train, rewind_state=dense.rewind_state, callbacks=callbacks)
    return WeightPruningRun(dense, acc_dense, result)


def _length(history: list[dict[str, Any]]) -> dict[str, Any]:
    last = history[-1] if history else {}
    return {"train_steps": int(last.get("step") or 0), "train_epochs": float(last.get("epoch") or 0)}
