"""Typed training configuration: every setting declared once (:func:`prunelab.schema.option`), so
its command-line flag (``prunelab.cli.common.add_train_arguments``), default and help come from here."""

from __future__ import annotations

import math
import numbers
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from prunelab.errors import PrunelabError
from prunelab.schema import option

OPTIMIZERS = ("sgd", "adam")
#: the largest float32: optimiser settings are applied to float32 weights
FLOAT32_MAX = 3.4028234663852886e38
#: seeds go from 0 to this: what torch's and NumPy's generators both take
MAX_SEED = 2**63 - 1
SCHEDULES = ("multistep", "cosine", "constant", "step", "linear")
LR_STEPS = ("iteration", "epoch")
AMP_DTYPES = ("bfloat16", "float16")
#: the default ``loss`` (see :mod:`prunelab.train.losses`)
DEFAULT_LOSS = "cross-entropy"
NONFINITE_ACTIONS = ("stop", "warn")  # what a NaN / infinite loss or weight does (prunelab.train.divergence)


class TrainSettingError(PrunelabError):
    """A bad training setting; ``key`` names it (spec parsers point at its line)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any, strict: bool) -> bool:
    if strict:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _type_ok(value: Any, tp: Any, strict: bool) -> bool:
    """Does ``value`` fit the declared type ``tp``? ``strict`` (settings read from a file) wants real
    bools for bool fields and real ints for int fields; otherwise (Python callers) any real number
    passes for a numeric field and bool / str fields are not checked."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, t, strict) for t in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            return False
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return not args or all(_type_ok(v, args[0], strict) for v in value)
    if tp is bool:
        return isinstance(value, bool) or not strict
    if tp is int:
        return _is_int(value) if strict else _is_number(value, strict)
    if tp is float:
        return _is_number(value, strict)
    if tp is str:
        return isinstance(value, str) or not strict
    return True


def _type_name(tp: Any) -> str:
    """'an integer', 'a number', 'true or false', 'a list of numbers', ... with ' or null' for Optional."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(t) for t in typing.get_args(tp) if t is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in typing.get_args(tp) else "")
    if origin in (list, tuple):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        inner = {"an integer": "integers", "a number": "numbers", "a string": "strings",
                 "true or false": "booleans"}.get(_type_name(args[0]), "values") if args else "values"
        return f"a list of {inner}"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


@dataclass
class TrainConfig:
    """Everything the trainer needs besides the model and the data.

    ``milestones`` are epochs (ints) or fractions of ``epochs`` (floats < 1), so a schedule moves with
    the epoch count as Scratch-B requires (Liu et al. 2019; PFS ``train_pruned.py`` uses 50% / 75%).
    ``step_size`` is used by the ``step`` schedule (StepLR). ``max_steps`` caps optimiser steps
    (useful for iterative pruning and smoke tests). ``device`` is ``auto`` (CUDA when available).
    ``amp`` only applies on CUDA. ``no_wd_bn_bias`` removes weight decay from BatchNorm parameters,
    biases and depthwise convolutions (PFS ImageNet recipe).

    ``lr_step`` says how often the learning rate moves: ``iteration`` (the schedule is a function of
    fractional epochs, updated after every optimiser step) or ``epoch`` (held constant within an
    epoch, as the reference codes' per-epoch ``scheduler.step()`` / cosine formula). ``amp_dtype`` is
    the autocast type on CUDA (float16 adds a GradScaler). ``drop_last`` drops the incomplete last
    batch of every epoch. ``checkpoint`` is a path for a resumable training state written every
    ``checkpoint_every`` epochs and when training stops; with ``resume`` an existing state there is
    loaded and training continues where it stopped. ``on_nonfinite`` is what a NaN or infinite loss
    (or weight) does, checked at every epoch end: ``stop`` raises a one-line error naming the epoch,
    the step and the learning rate; ``warn`` warns once and trains on. ``loss`` names a registered
    loss (:mod:`prunelab.train.losses`): ``cross-entropy`` (classification) or ``next-token``
    (causal language models).
    """

    epochs: int = option(10, "training epochs", lo=0)
    batch_size: int = option(128, "samples per optimiser step; under torchrun the global batch, split over the "
                             "processes (see --batch-scaling)", lo=1)
    eval_batch_size: int = option(512, "samples per evaluation batch", lo=1)
    optimizer: str = option("sgd", "the optimiser", choices=OPTIMIZERS)
    lr: float = option(0.1, "learning rate", lo=0.0, hi=FLOAT32_MAX)
    momentum: float = option(0.9, "SGD momentum (Adam: beta1)", lo=0.0, hi=1.0, hi_open=True)
    nesterov: bool = option(False, "Nesterov momentum (SGD; needs momentum > 0)")
    weight_decay: float = option(5e-4, "L2 weight decay", lo=0.0, hi=FLOAT32_MAX)
    no_wd_bn_bias: bool = option(False, "no weight decay on BatchNorm parameters, biases and depthwise "
                                 "convolutions")
    schedule: str = option("multistep", "learning-rate schedule", choices=SCHEDULES)
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])
    gamma: float = option(0.1, "learning-rate decay factor (multistep, step)", lo=0.0, lo_open=True,
                          hi=FLOAT32_MAX)
    step_size: int = option(30, "epochs between decays (step schedule)", lo=1)
    warmup_epochs: float = option(0.0, "epochs of linear learning-rate warm-up", lo=0.0)
    label_smoothing: float = option(0.0, "label smoothing of the cross-entropy", lo=0.0, hi=1.0, hi_open=True)
    augment: bool = option(True, "data augmentation of the training set (where the data set has one)")
    max_steps: int | None = option(None, "stop every training run after N optimiser steps (dense pre-training "
                                   "included)", kind=int, lo=0, optional=True, metavar="N")
    seed: int = option(0, "random seed", lo=0, hi=MAX_SEED)
    device: str = option("auto", "auto, cpu, cuda, cuda:N")
    channels_last: bool = option(False, "channels-last memory format (CUDA convolutions)")
    amp: bool = option(True, "automatic mixed precision on CUDA")
    progress: bool = option(False, "draw the training bar even when stderr is not a terminal (on a terminal it "
                            "is drawn unless --quiet)")
    eval_every: int = option(1, "evaluate on validation and test every N epochs (and at the end)", lo=1,
                             metavar="N")
    lr_step: str = option("iteration", "move the learning rate after every step, or once per epoch",
                          choices=LR_STEPS)
    amp_dtype: str = option("bfloat16", "autocast type on CUDA (float16 adds a gradient scaler)",
                            choices=AMP_DTYPES)
    drop_last: bool = option(False, "drop the incomplete last batch of every epoch")
    checkpoint: str | None = option(None, "write a resumable training state here (every --checkpoint-every "
                                    "epochs and on stop)", kind=str, optional=True, flag="--state",
                                    metavar="PATH")
    checkpoint_every: int = option(1, "epochs between training states", lo=1, metavar="N")
    resume: bool = option(False, "continue from the training state at --state if it exists")
    on_nonfinite: str = option("stop", "a NaN or infinite loss or weight (checked at every epoch end): stop with "
                               "one line (exit 2, nothing written), or warn and train on",
                               choices=NONFINITE_ACTIONS)
    loss: str = option(DEFAULT_LOSS, "the training loss: cross-entropy (classification) or next-token (causal "
                       "language models); default: next-token for --data tokens without labels, else "
                       "cross-entropy", metavar="NAME")

    def check_types(self, strict: bool = True) -> TrainConfig:
        """Check every field against its declared type (see :meth:`from_dict`); ``strict=False`` checks
        only what a comparison in :meth:`validate` would trip on (numbers and lists of numbers)."""
        hints = _field_types()
        for f in fields(self):
            value, tp = getattr(self, f.name), hints[f.name]
            if not _type_ok(value, tp, strict):
                raise TrainSettingError(f.name, f"training setting {f.name!r} must be {_type_name(tp)}, "
                                                f"got {value!r}")
        return self

    def validate(self) -> TrainConfig:
        self.check_types(strict=False)
        if not (isinstance(self.seed, int) and 0 <= self.seed <= MAX_SEED):
            raise TrainSettingError("seed", f"seed must be an integer from 0 to {MAX_SEED}, got {self.seed!r}")
        for f in fields(self):  # counts go to torch and NumPy as 64-bit integers
            value = getattr(self, f.name)
            if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
                raise TrainSettingError(f.name, f"training setting {f.name!r} is out of range: integers go from "
                                                f"{-(2**63)} to {2**63 - 1}, got {value}")
        if self.optimizer not in OPTIMIZERS:
            raise PrunelabError(f"unknown optimizer {self.optimizer!r}; valid choices: {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise PrunelabError(f"unknown schedule {self.schedule!r}; valid choices: {', '.join(SCHEDULES)}")
        for name in ("lr", "momentum", "weight_decay", "gamma", "warmup_epochs", "label_smoothing"):
            value = getattr(self, name)
            if isinstance(value, float) and not math.isfinite(value):
                raise PrunelabError(f"{name} must be a finite number, got {value}")
            if name in ("lr", "weight_decay", "gamma") and abs(value) > FLOAT32_MAX:
                raise TrainSettingError(name, f"{name} must be at most {FLOAT32_MAX:.3g} (the largest float32, "
                                              f"the type the optimiser applies it in), got {value}")
        if self.epochs < 0:
            raise PrunelabError(f"epochs must be >= 0, got {self.epochs}")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise PrunelabError(f"batch sizes must be >= 1, got {self.batch_size} / {self.eval_batch_size}")
        if self.lr < 0:
            raise PrunelabError(f"lr must be >= 0, got {self.lr}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise PrunelabError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.lr_step not in LR_STEPS:
            raise PrunelabError(f"unknown lr_step {self.lr_step!r}; valid choices: {', '.join(LR_STEPS)}")
        if self.on_nonfinite not in NONFINITE_ACTIONS:
            raise PrunelabError(f"unknown on_nonfinite {self.on_nonfinite!r}; valid choices: "
                                f"{', '.join(NONFINITE_ACTIONS)}")
        from prunelab.train.losses import get_loss

        try:
            get_loss(self.loss)
        except PrunelabError as exc:
            raise TrainSettingError("loss", str(exc)) from None
        if self.amp_dtype not in AMP_DTYPES:
            raise PrunelabError(f"unknown amp_dtype {self.amp_dtype!r}; valid choices: {', '.join(AMP_DTYPES)}")
        if self.max_steps is not None and self.max_steps < 0:
            raise PrunelabError(f"max_steps must be >= 0, got {self.max_steps}")
        if self.eval_every < 1 or self.checkpoint_every < 1:
            raise PrunelabError(f"eval_every and checkpoint_every must be >= 1, got {self.eval_every} / "
                                f"{self.checkpoint_every}")
        if self.warmup_epochs < 0 or self.momentum < 0 or self.weight_decay < 0:
            raise PrunelabError("warmup_epochs, momentum and weight_decay must be >= 0")
        if self.momentum >= 1:
            raise PrunelabError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.gamma <= 0:
            raise PrunelabError(f"gamma (learning-rate decay factor) must be > 0, got {self.gamma}")
        if self.resume and not self.checkpoint:
            raise PrunelabError("resume needs a training state path (--state PATH / checkpoint)")
        if self.schedule == "step" and self.step_size <= 0:
            raise PrunelabError(f"step_size must be > 0 for the step schedule, got {self.step_size}")
        if not all(math.isfinite(m) and abs(m) < 2**63 for m in self.milestones):
            raise TrainSettingError("milestones", f"milestones must be finite numbers below 2**63, got "
                                                  f"{self.milestones}")
        if any(m < 0 for m in self.milestones):
            raise PrunelabError(f"milestones must be >= 0 (epochs, or fractions of epochs when < 1), got "
                                f"{self.milestones}")
        if self.nesterov and self.optimizer == "sgd" and self.momentum <= 0:
            raise PrunelabError("nesterov needs momentum > 0")
        from prunelab.devices import check_device_name

        try:
            check_device_name(self.device)
        except PrunelabError as exc:
            raise TrainSettingError("device", str(exc)) from None
        return self

    def to_dict(self) -> dict[str, Any]:
        """Every setting; ``loss`` only when it is not the default, so the stored configs (and the
        run hashes of studies) written before losses existed stay the same."""
        d = asdict(self)
        if d.get("loss") == DEFAULT_LOSS:
            del d["loss"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> TrainConfig:
        """A checked config from a mapping (a spec's ``train:``, a stored run config).

        Each value must have its field's declared type: bool fields take true / false only, int
        fields integers (not bools or floats), float fields any number, ``X | None`` fields also
        null, list fields a list of such values. A wrong one is a one-line :class:`TrainSettingError`
        naming the setting, the value and the expected type."""
        d = dict(d or {})
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise TrainSettingError(unknown[0], f"unknown training setting(s) {unknown}; valid: "
                                                f"{', '.join(sorted(names))}")
        return cls(**d).check_types().validate()


_FIELD_TYPES: dict[str, Any] = {}


def _field_types() -> dict[str, Any]:
    """TrainConfig's field types, resolved from its (string) annotations once."""
    if not _FIELD_TYPES:
        _FIELD_TYPES.update(typing.get_type_hints(TrainConfig))
    return _FIELD_TYPES
