"""When to prune: one-shot, gradual (cubic schedule), iterative rounds with optional rewinding.

* One-shot (Gupta et al. 2022, Algorithm 1 with ``isGradual`` false): prune a trained model once to
  the target, then fine-tune; the trainer holds the masks (:mod:`prunelab.train.masks`).
* Gradual: start from an untrained model and raise the sparsity while training. The Global MP paper
  (v1) does not give its formula (it only spreads the budget over epochs); the default, an assumption
  marked as such, is the cubic
  schedule of Zhu & Gupta (2017, eq. 1)::

      s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t_end - t0)) ** 3,   t in {t0, t0 + dt, ..., t_end}

  with thresholds recomputed from the current weights at every update (:class:`GradualPruning`).
  Time ``t`` counts optimiser steps or epochs (Algorithm 1 prunes at the start of an epoch).
* Iterative: R rounds, each pruning the same fraction of the remaining weights (round r reaches
  ``1 - (1 - s) ** (r / R)``) followed by fine-tuning; optionally the surviving weights are rewound
  to an early snapshot before each retraining (Frankle et al. 2020, "Linear mode connectivity and
  the lottery ticket hypothesis", sec. 5).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from prunelab.errors import PrunelabError, check_choice
from prunelab.prune.unstructured.allocation import check_sparsity
from prunelab.prune.unstructured.masks import MaskCallback, apply_masks_, ensure_mask, masked_name
from prunelab.prune.unstructured.pruner import PruneConfig, check_feasible, prune
from prunelab.prune.unstructured.report import PruneReport
from prunelab.train.callbacks import Callback

UNITS = ("step", "epoch")


def cubic_sparsity(t: float, *, final: float, start: float, end: float, initial: float = 0.0) -> float:
    """Zhu & Gupta (2017) cubic sparsity at time ``t``: ``initial`` before ``start``, ``final`` after ``end``."""
    if t <= start:
        return float(initial) if end > start else float(final)
    if t >= end:
        return float(final)
    frac = (t - start) / (end - start)
    return float(final + (initial - final) * (1.0 - frac) ** 3)


@dataclass(frozen=True)
class GradualSchedule:
    """Cubic schedule from ``initial`` to ``final`` sparsity between ``start`` and ``end`` (inclusive),
    updating every ``every`` units (``unit``: ``step`` or ``epoch``). The last update is at ``end``
    even when ``end - start`` is not a multiple of ``every``. ``end=None`` is resolved when training
    starts to three quarters of the training length (the rest is fine-tuning at the final sparsity)."""

    final: float
    start: int = 0
    end: int | None = None
    every: int = 1
    initial: float = 0.0
    unit: str = "epoch"

    def validate(self) -> GradualSchedule:
        check_sparsity(self.final, "final sparsity")
        check_sparsity(self.initial, "initial sparsity")
        check_choice("pruning time unit", self.unit, UNITS)
        if self.initial > self.final:
            raise PrunelabError(f"initial sparsity {self.initial} exceeds final sparsity {self.final}")
        if self.start < 0 or (self.end is not None and self.end < self.start):
            raise PrunelabError(f"gradual pruning needs 0 <= start <= end, got start={self.start} end={self.end}")
        if self.every < 1:
            raise PrunelabError(f"gradual pruning frequency must be >= 1 {self.unit}, got {self.every}")
        return self

    def resolve(self, epochs: int, steps_per_epoch: int, max_steps: int | None = None) -> GradualSchedule:
        """Fix ``end`` for a run of ``epochs`` x ``steps_per_epoch`` steps and check the schedule fits it.

        Epoch units prune at the start of an epoch, so the last update must be before ``epochs``;
        step units prune after a step, so the last update must be at most the number of steps."""
        if self.unit == "epoch":
            length, last = epochs, epochs - 1
        else:
            length = epochs * steps_per_epoch if max_steps is None else min(max_steps, epochs * steps_per_epoch)
            last = length
        end = self.end
        if end is None:
            end = max(self.start, self.start + (3 * (length - self.start)) // 4)
        if end > last or self.start > last:
            raise PrunelabError(f"gradual pruning from {self.unit} {self.start} to {end} does not fit a run of "
                                f"{length} {self.unit}s (last possible update: {last})")
        return replace(self, end=end).validate()

    def _end(self) -> int:
        if self.end is None:
            raise PrunelabError("gradual schedule end is not resolved yet (call resolve())")
        return self.end

    def is_update(self, t: int) -> bool:
        end = self._end()
        return self.start <= t <= end and ((t - self.start) % self.every == 0 or t == end)

    def sparsity_at(self, t: int) -> float:
        return cubic_sparsity(t, final=self.final, start=self.start, end=self._end(), initial=self.initial)

    def updates(self) -> list[tuple[int, float]]:
        """Every (time, sparsity) at which the schedule prunes."""
        return [(t, self.sparsity_at(t)) for t in range(self.start, self._end() + 1) if self.is_update(t)]

    def to_dict(self) -> dict[str, Any]:
        return {"final": self.final, "initial": self.initial, "start": self.start, "end": self.end,
                "every": self.every, "unit": self.unit}


def _check_scheduled(config: PruneConfig) -> None:
    if config.layer_sparsity:
        raise PrunelabError("per-layer sparsities (method 'layerwise') cannot follow a sparsity schedule; "
                            "use them one-shot, or a global or uniform method")


class GradualPruning(MaskCallback):
    """Raise the sparsity during training along a :class:`GradualSchedule`; keep masks in between.

    At ``on_fit_start`` every selected layer gets an all-True mask (so the mask buffers exist from the
    first step and resume state is just the model's state_dict). At each update the masks are
    recomputed by ``config``'s method at the scheduled sparsity from the current weights, newly
    pruned weights and their optimiser state are zeroed, and the report is appended to ``history``.
    SNIP uses the most recent training batch.
    """

    def __init__(self, config: PruneConfig, schedule: GradualSchedule, *, loss_fn: Callable | None = None) -> None:
        super().__init__()
        _check_scheduled(config)
        self.config = config.with_sparsity(schedule.final).validate()
        self.schedule = schedule.validate()
        self.loss_fn = loss_fn
        self.history: list[dict[str, Any]] = []
        self.last_report: PruneReport | None = None
        self._batch: tuple[torch.Tensor, torch.Tensor] | None = None

    def on_fit_start(self, trainer) -> None:
        cfg = trainer.config
        self.schedule = self.schedule.resolve(cfg.epochs, trainer.steps_per_epoch, cfg.max_steps)
        layers = check_feasible(trainer.model, self.config)
        for layer in layers:
            ensure_mask(layer.module)
        super().on_fit_start(trainer)
        if self.schedule.unit == "step" and self.schedule.is_update(trainer.step):
            self._update(trainer, trainer.step)

    def on_batch_start(self, trainer, x, y) -> None:
        if self.config.criterion == "snip":
            self._batch = (x, y)

    def on_epoch_start(self, trainer) -> None:
        if self.schedule.unit == "epoch" and self.schedule.is_update(trainer.epoch):
            self._update(trainer, trainer.epoch)

    def on_step_end(self, trainer) -> None:
        super().on_step_end(trainer)
        if self.schedule.unit == "step" and self.schedule.is_update(trainer.step):
            self._update(trainer, trainer.step)

    def on_fit_end(self, trainer) -> None:
        if not self.history or self.history[-1]["time"] < self.schedule.end:
            reached = self.history[-1]["sparsity"] if self.history else 0.0
            warnings.warn(f"training ended before the gradual pruning end ({self.schedule.unit} {self.schedule.end}); "
                          f"sparsity reached {reached:.4f} of {self.schedule.final}", stacklevel=2)

    def _update(self, trainer, t: int) -> None:
        if self.history and self.history[-1]["time"] == t:
            return
        target = self.schedule.sparsity_at(t)
        if self.config.criterion == "snip" and self._batch is None:
            return  # no batch seen yet: SNIP prunes at the next update
        report = prune(trainer.model, self.config.with_sparsity(target), batch=self._batch, loss_fn=self.loss_fn,
                       warn=False)
        self.enforce(getattr(trainer, "optimizer", None))
        self.last_report = report
        self.history.append({"time": t, "unit": self.schedule.unit, "target": target, "sparsity": report.sparsity,
                             "collapsed": report.collapsed})

    def state_dict(self) -> dict[str, Any]:
        return {"history": copy.deepcopy(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = list(state.get("history", []))


class WeightSnapshot(Callback):
    """Copy the model's weights (not its masks) at the start of epoch ``epoch``, for rewinding."""

    def __init__(self, epoch: int) -> None:
        if epoch < 0:
            raise PrunelabError(f"rewind epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)
        self.state: dict[str, torch.Tensor] | None = None

    def on_epoch_start(self, trainer) -> None:
        if trainer.epoch == self.epoch and self.state is None:
            self.state = weights_state(trainer.model)


def weights_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the state_dict without mask buffers."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if masked_name(k) is None}


def rewind_(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Load ``state`` (weights and buffers, no masks) into ``model`` and re-apply its masks."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if masked_name(k) is None]
    if missing or unexpected:
        raise PrunelabError(f"rewind state does not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return apply_masks_(model)


def iterative_sparsities(final: float, rounds: int) -> list[float]:
    """Round targets pruning a constant fraction of the remaining weights; the last is ``final``."""
    check_sparsity(final)
    if rounds < 1:
        raise PrunelabError(f"iterative pruning needs at least 1 round, got {rounds}")
    return [1.0 - (1.0 - final) ** (r / rounds) for r in range(1, rounds)] + [float(final)]


@dataclass
class RoundResult:
    round: int
    target: float
    report: PruneReport
    pruned_metrics: dict[str, float] | None = None
    finetuned_metrics: dict[str, float] | None = None
    history: list[dict] = field(default_factory=list)


#: prune / fine-tune rounds of iterative pruning (Frankle & Carbin 2019 use up to about 30)
MAX_ROUNDS = 100


def prune_iterative(model: nn.Module, data, train_config, config: PruneConfig, *, rounds: int,
                    rewind_state: dict[str, torch.Tensor] | None = None, rewind_epoch: int | None = None,
                    batch: tuple[torch.Tensor, torch.Tensor] | None = None, input_shape: Sequence[int] | None = None,
                    callbacks: Sequence[Callback] = (), evaluate: bool = True) -> list[RoundResult]:
    """Prune to ``config.sparsity`` in ``rounds`` rounds, fine-tuning ``train_config`` after each.

    Rewinding: with ``rewind_state`` (e.g. a :class:`WeightSnapshot` of the dense pre-training) the
    surviving weights are reset to it before every retraining; with only ``rewind_epoch`` the
    snapshot is taken at that epoch of the first round's fine-tuning and used from round 2 on.
    Each round's fine-tuning runs the full ``train_config`` (LR schedule restarted).
    """
    from prunelab.train import Trainer

    if not 1 <= rounds <= MAX_ROUNDS:
        raise PrunelabError(f"rounds must be 1 to {MAX_ROUNDS}, got {rounds}")
    _check_scheduled(config)
    check_feasible(model, config)
    if rewind_epoch is not None and rewind_state is None and rewind_epoch >= max(1, train_config.epochs):
        raise PrunelabError(f"rewind epoch {rewind_epoch} must be < the fine-tuning epochs ({train_config.epochs})")
    results: list[RoundResult] = []
    snapshot = WeightSnapshot(rewind_epoch) if rewind_epoch is not None and rewind_state is None else None
    for r, target in enumerate(iterative_sparsities(config.sparsity, rounds), start=1):
        report = prune(model, config.with_sparsity(target), batch=batch,
                       input_shape=input_shape or None, warn=False)
        if rewind_state is not None:
            rewind_(model, rewind_state)
        result = RoundResult(r, target, report)
        trainer_callbacks = list(callbacks)
        if snapshot is not None and r == 1:
            trainer_callbacks.append(snapshot)
        trainer = Trainer(model, data, train_config, callbacks=trainer_callbacks)
        if evaluate:
            result.pruned_metrics = trainer.evaluate("test")
        fit = trainer.fit()
        result.history = list(fit.history)
        if evaluate:
            result.finetuned_metrics = trainer.evaluate("test")
        if snapshot is not None and r == 1:
            rewind_state = snapshot.state
        results.append(result)
    return results
