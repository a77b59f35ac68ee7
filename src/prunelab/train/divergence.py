"""Non-finite training: a NaN or infinite loss, or weights that became NaN or infinite.

A run that diverges (too high a learning rate, an overflow) keeps training on NaN and ends with
meaningless weights and metrics; the trainer therefore checks at every epoch end, where the epoch's
losses are read back from the device anyway, so the check adds no host synchronisation to a step.
``TrainConfig.on_nonfinite`` says what happens: ``stop`` (default) raises :class:`TrainingDiverged`
(one line: where, what, the learning rate), before anything of the diverged run is evaluated or
checkpointed; ``warn`` emits one :class:`DivergenceWarning` and trains on.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from prunelab.errors import PrunelabError


class TrainingDiverged(PrunelabError):
    """Training produced a NaN or infinite loss, or NaN / infinite weights (``on_nonfinite='stop'``)."""

    def __init__(self, message: str, *, epoch: int, step: int, lr: float) -> None:
        super().__init__(message)
        self.epoch, self.step, self.lr = epoch, step, lr


class DivergenceWarning(RuntimeWarning):
    """Training went non-finite and continues (``on_nonfinite='warn'``)."""


def first_nonfinite_parameter(named_parameters: Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """The name of the first floating-point parameter holding a NaN or an infinity, or None.

    One reduction per tensor and a single read-back, so it is cheap enough for every epoch end."""
    named = [(name, p) for name, p in named_parameters if p.is_floating_point() and p.numel()]
    if not named:
        return None
    finite = torch.stack([torch.isfinite(p.detach()).all() for _, p in named])
    if bool(finite.all()):
        return None
    return named[int(torch.nonzero(~finite)[0])][0]


def divergence_message(epoch: int, step: int, what: str, lr: float, stop: bool = True) -> str:
    """``training diverged at epoch 2 step 37: loss is nan (lr 1e+30); ...`` (epoch counted from 1)."""
    then = ("lower the learning rate (--lr), or train on regardless with on_nonfinite: warn (--on-nonfinite warn)"
            if stop else "training on (on_nonfinite: warn); the metrics of this run are not meaningful")
    return f"training diverged at epoch {epoch} step {step}: {what} (lr {lr:.3g}); {then}"


def describe_loss(value: float) -> str:
    return "loss is nan" if math.isnan(value) else f"loss is {'-' if value < 0 else ''}inf"
