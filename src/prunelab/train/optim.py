"""Optimisers, parameter groups and learning-rate schedules of the seed papers' recipes.

One schedule function covers every recipe (pytorch-prunes' multi-step, PFS's ``train_pruned.py``,
Global MP's warm-up + cosine): the learning rate is
``lr * warmup(t) * shape(t)`` where ``t`` is training progress in epochs.

* ``lr_step="iteration"``: ``t = step / steps_per_epoch`` (fractional), updated after every step.
* ``lr_step="epoch"``: ``t = step // steps_per_epoch``, constant within an epoch, as the reference
  codes that call ``scheduler.step()`` once per epoch or evaluate the cosine formula per epoch.

Shapes: ``constant``; ``multistep`` (x ``gamma`` at each milestone; milestones < 1 are fractions of
``epochs``, pytorch-prunes / PFS / Scratch-B); ``step`` (x ``gamma`` every ``step_size`` epochs,
StepLR, Global MP WRN-22-8 / MobileNet-V2); ``cosine`` (``0.5 (1 + cos(pi (t - w) / (E - w)))``, Global
MP / PFS MobileNets); ``linear`` (``1 - (t - w) / (E - w)``, Global MP's alternative README). Warm-up
over ``w = warmup_epochs`` ramps linearly: ``min(1, (t + u) / w)`` with ``u`` one step (iteration) or
one epoch (epoch), the Goyal et al. / NVIDIA DeepLearningExamples rule used by the Global MP ResNet-50
recipe. Cosine and linear start after the warm-up; milestones are absolute epochs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.train.config import TrainConfig

_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def no_decay_parameter_ids(model: nn.Module) -> set[int]:
    """Ids of parameters exempt from weight decay under ``no_wd_bn_bias``.

    BatchNorm / GroupNorm / LayerNorm parameters, every bias (any parameter whose name starts with
    ``bias``, including recurrent ``bias_ih``), and depthwise convolution weights (one input channel
    per group), as PFS's ImageNet ``train_pruned_imagenet.py``.
    """
    ids: set[int] = set()
    for module in model.modules():
        own = list(module.named_parameters(recurse=False))
        if isinstance(module, _NORM_TYPES):
            ids.update(id(p) for _, p in own)
            continue
        ids.update(id(p) for name, p in own if name.startswith("bias"))
        if isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1 and module.weight.shape[1] == 1:
            ids.add(id(module.weight))
    return ids


def parameter_groups(model: nn.Module, config: TrainConfig,
                     params: Iterable[nn.Parameter] | None = None) -> list[dict]:
    """The optimiser's parameter groups: ``params`` (default: the model's trainable parameters), split
    into decayed and non-decayed groups when ``config.no_wd_bn_bias``. Parameters outside ``params``
    get no optimiser state at all."""
    seen: set[int] = set()
    selected = []
    source = model.parameters() if params is None else params
    for p in source:
        if not isinstance(p, torch.Tensor):
            raise PrunelabError(f"params must be tensors (parameters), got {type(p).__name__}")
        if id(p) in seen or (params is None and not p.requires_grad):
            continue
        seen.add(id(p))
        selected.append(p)
    if not selected:
        raise PrunelabError("nothing to train: the model has no trainable parameters in the given params")
    if not config.no_wd_bn_bias or config.weight_decay == 0:
        return [{"params": selected}]
    exempt = no_decay_parameter_ids(model)
    decay = [p for p in selected if id(p) not in exempt]
    no_decay = [p for p in selected if id(p) in exempt]
    groups = []
    if decay:
        groups.append({"params": decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, config: TrainConfig,
                    params: Iterable[nn.Parameter] | None = None) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or Adam over :func:`parameter_groups`."""
    groups = parameter_groups(model, config, params)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                               weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)
    raise PrunelabError(f"unknown optimizer {config.optimizer!r}; valid choices: adam, sgd")


def milestone_epochs(config: TrainConfig) -> list[float]:
    """Milestones in epochs: values < 1 are fractions of ``config.epochs``."""
    return sorted(float(m) * config.epochs if float(m) < 1 else float(m) for m in config.milestones)


def lr_factor(step: int, steps_per_epoch: int, config: TrainConfig) -> float:
    """Multiplier of ``config.lr`` for the optimiser step with index ``step`` (0-based)."""
    spe = max(1, int(steps_per_epoch))
    if config.lr_step == "epoch":
        t, unit = float(step // spe), 1.0
    else:
        t, unit = step / spe, 1.0 / spe
    w = float(config.warmup_epochs)
    warm = min(1.0, (t + unit) / w) if w > 0 and t < w else 1.0
    kind = config.schedule
    if kind == "constant":
        shape = 1.0
    elif kind == "multistep":
        shape = config.gamma ** sum(1 for m in milestone_epochs(config) if t >= m)
    elif kind == "step":
        shape = config.gamma ** math.floor(t / config.step_size)
    elif kind in ("cosine", "linear"):
        span = max(float(config.epochs) - w, 1e-12)
        p = min(max((t - w) / span, 0.0), 1.0)
        shape = 0.5 * (1.0 + math.cos(math.pi * p)) if kind == "cosine" else 1.0 - p
    else:
        raise PrunelabError(f"unknown schedule {kind!r}")
    return warm * shape


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` stepped after every optimiser step; see the module docstring for the rule."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, steps_per_epoch, config))
