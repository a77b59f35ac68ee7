"""The structured (channel) pruning pipeline: prune channels to a size target, compress, fine-tune.

Crowley et al. (2018, after Theis et al. 2018; reference code BayesWatch/pytorch-prunes, ``prune.py``):
a densely trained network is fine-tuned while ``channels_per_prune`` channels of the lowest score are
removed every ``prune_every`` steps until the target holds (``iterative``), or the channels go at once
and the compressed network is fine-tuned after (``oneshot``). :func:`prune_channels` is that step on a
:class:`~prunelab.prune.structured.StructuredPruner`; :func:`run_channel_pruning` adds the dense
pre-training, the fine-tuning of a one-shot prune and the measurements. ``prunelab prune --structured``
and the study kinds ``fisher``, ``l1``, ``bn-scale``, ``random-channel`` and ``structured`` call these,
so the same settings and seed give the same compressed network on both paths.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from prunelab.protocols.finetune import Pretrained, accuracy, fine_tune, pretrain


@dataclass
class ChannelPruning:
    """What :func:`prune_channels` did: the compressed ``model`` and its ``plan``, the test accuracy
    right after pruning (``acc_pruned``), the training rows and steps of an iterative prune, and
    whether the target was reached (``reached_at``: the step it was, iterative)."""

    model: nn.Module
    plan: dict[str, Any]
    acc_pruned: float | None
    history: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    reached_at: int | None = None


def prune_channels(pruner, data, train, *, callbacks: Sequence[Any] = (),
                   on_checkpoint: Callable[[Any], None] | None = None) -> ChannelPruning:
    """Prune ``pruner``'s model to its target and compress it (the pruner is detached after).

    Iterative: the model is fine-tuned with the ``train`` config while channels are removed, and
    training stops once the target is met (plus the config's ``finetune_steps``); ``on_checkpoint``
    receives the pruner every ``checkpoint_every`` prunes. One-shot: scores are accumulated over
    ``prune_every`` batches of ``train.batch_size`` and the channels removed at once.
    """
    from prunelab.train import Trainer, resolve_device
    from prunelab.train.progress import stage

    cfg = pruner.config
    if cfg.schedule == "oneshot":
        pruner.model.to(resolve_device(train.device))
        pruner.prune_oneshot(data, batch_size=train.batch_size, device=resolve_device(train.device))
        small = pruner.compress()
        acc_pruned = accuracy(small, data)
        pruner.detach()
        return ChannelPruning(small, pruner.plan(), acc_pruned)
    callback = pruner.callback(on_checkpoint)
    trainer = Trainer(pruner.model, data, train, callbacks=[callback, *callbacks])
    with stage(f"fine-tuning and pruning {cfg.channels_per_prune} channel(s) every {cfg.prune_every} steps "
               f"({cfg.criterion}) to {cfg.target.describe()}"):
        result = trainer.fit()
    small = pruner.compress()
    pruner.detach()
    return ChannelPruning(small, pruner.plan(), accuracy(small, data), list(result.history), int(trainer.step),
                          callback.reached_at)


@dataclass
class ChannelPruningRun:
    """:func:`run_channel_pruning`'s outcome: the dense pre-training and its accuracy, the prune,
    the fine-tuning of a one-shot prune (``final`` / ``curves``; the iterative prune's own rows
    otherwise), the compressed model's sizes and whether the target was reached."""

    pretrained: Pretrained
    acc_dense: float | None
    pruning: ChannelPruning
    curves: list[dict[str, Any]]
    steps: int
    acc: float | None
    before: dict[str, int]
    after: dict[str, Any]
    reached: bool

    @property
    def model(self) -> nn.Module:
        return self.pruning.model


def model_size(model: nn.Module, input_shape) -> dict[str, int]:
    """Parameters and MACs (batch 1) of a compressed model."""
    from prunelab.prune.structured.cost import model_size as size

    params, macs = size(model, input_shape)
    return {"params": params, "macs": macs}


def run_channel_pruning(pruner, data, train, *, pretrain_epochs: int = 0,
                        on_checkpoint: Callable[[Any], None] | None = None) -> ChannelPruningRun:
    """The whole structured pipeline on ``pruner``'s model: dense pre-training for ``pretrain_epochs``
    with ``train`` (the pruner's hooks detached meanwhile), :func:`prune_channels` with ``train``, and
    for a one-shot prune :func:`~prunelab.protocols.finetune.fine_tune` of the compressed model with
    ``train``. Sizes are measured on the compressed model; a latency target is measured there too."""
    cfg, shape = pruner.config, pruner.measured_inputs
    dense = Pretrained(0, {}, [])
    if pretrain_epochs > 0:
        pruner.detach()
        dense = pretrain(pruner.model, data, train, pretrain_epochs)
        pruner.masks.attach()
    acc_dense = accuracy(pruner.model, data)
    before = dict(pruner.initial)
    pruning = prune_channels(pruner, data, train, on_checkpoint=on_checkpoint)
    curves, steps = list(pruning.history), pruning.steps
    if cfg.schedule == "oneshot":
        final, history = fine_tune(pruning.model, data, train, label="fine-tuning the compressed model")
        curves += history
        steps = int(history[-1]["step"]) if history else 0
    pruning.model.eval()
    reached = pruner.reached() if cfg.target.kind != "latency_ms" else False
    after: dict[str, Any] = {"channels": pruner.masks.remaining, **model_size(pruning.model, shape)}
    if cfg.target.kind == "latency_ms":
        from prunelab.prune.structured.targets import measure_latency_ms

        after["latency_ms"] = measure_latency_ms(pruning.model, shape, cfg.target)
        reached = cfg.target.met(after["latency_ms"])
    return ChannelPruningRun(dense, acc_dense, pruning, curves, steps, accuracy(pruning.model, data), before, after,
                             bool(reached))
