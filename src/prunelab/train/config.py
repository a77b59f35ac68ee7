"""Typed training configuration."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from prunelab.errors import PrunelabError

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("multistep", "cosine", "constant", "step", "linear")


@dataclass
class TrainConfig:
    """Everything the trainer needs besides the model and the data.

    ``milestones`` are epochs (ints) or fractions of ``epochs`` (floats < 1), so a schedule moves with
    the epoch count as Scratch-B requires (Liu et al. 2019; PFS ``train_pruned.py`` uses 50% / 75%).
    ``step_size`` is used by the ``step`` schedule (StepLR). ``max_steps`` caps optimiser steps
    (useful for iterative pruning and smoke tests). ``device`` is ``auto`` (CUDA when available).
    ``amp`` only applies on CUDA. ``no_wd_bn_bias`` removes weight decay from BatchNorm parameters,
    biases and depthwise convolutions (PFS ImageNet recipe).
    """

    epochs: int = 10
    batch_size: int = 128
    eval_batch_size: int = 512
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    no_wd_bn_bias: bool = False
    schedule: str = "multistep"
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])
    gamma: float = 0.1
    step_size: int = 30
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    augment: bool = True
    max_steps: int | None = None
    seed: int = 0
    device: str = "auto"
    channels_last: bool = False
    amp: bool = True
    progress: bool = False
    eval_every: int = 1

    def validate(self) -> TrainConfig:
        if self.optimizer not in OPTIMIZERS:
            raise PrunelabError(f"unknown optimizer {self.optimizer!r}; valid choices: {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise PrunelabError(f"unknown schedule {self.schedule!r}; valid choices: {', '.join(SCHEDULES)}")
        if self.epochs < 0:
            raise PrunelabError(f"epochs must be >= 0, got {self.epochs}")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise PrunelabError(f"batch sizes must be >= 1, got {self.batch_size} / {self.eval_batch_size}")
        if self.lr < 0:
            raise PrunelabError(f"lr must be >= 0, got {self.lr}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise PrunelabError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> TrainConfig:
        d = dict(d or {})
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise PrunelabError(f"unknown training setting(s) {unknown}; valid: {', '.join(sorted(names))}")
        return cls(**d).validate()
