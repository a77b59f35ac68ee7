"""The steps every prune-and-fine-tune pipeline shares: dense pre-training and fine-tuning.

Gupta et al. (2022, Algorithm 1) and Crowley et al. (2018) both start from a densely trained network
and fine-tune what pruning leaves. :func:`pretrain` and :func:`fine_tune` are those two steps, used by
the unstructured pipeline (:mod:`prunelab.protocols.unstructured`), the structured one
(:mod:`prunelab.protocols.structured`), the ``prunelab prune`` command and the study kinds alike, so
a model pruned from the command line and the same run of a study train exactly the same steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn


@dataclass
class Pretrained:
    """What :func:`pretrain` did: the trainer's final row and history (empty when ``epochs`` was 0) and
    the weights snapshot taken at ``rewind_epoch`` (for iterative pruning with rewinding)."""

    epochs: int
    final: dict[str, Any]
    history: list[dict[str, Any]]
    rewind_state: dict[str, torch.Tensor] | None = None


def pretrain(model: nn.Module, data, config, epochs: int | None = None, *, rewind_epoch: int | None = None,
             callbacks: Sequence[Any] = ()) -> Pretrained:
    """Train ``model`` densely in place with ``config`` for ``epochs`` (default ``config.epochs``; no
    resumable training state: the dense phase is one step of a pipeline). With ``rewind_epoch``, a
    :class:`~prunelab.prune.unstructured.schedules.WeightSnapshot` is taken at that epoch."""
    from prunelab.prune.unstructured.schedules import WeightSnapshot
    from prunelab.train import Trainer
    from prunelab.train.progress import stage

    epochs = config.epochs if epochs is None else int(epochs)
    if epochs <= 0:
        return Pretrained(0, {}, [])
    snapshot = WeightSnapshot(rewind_epoch) if rewind_epoch is not None else None
    dense = replace(config, epochs=epochs, checkpoint=None, resume=False)
    with stage(f"dense pre-training ({epochs} epochs)"):
        result = Trainer(model, data, dense, callbacks=[*callbacks, *([snapshot] if snapshot else [])]).fit()
    return Pretrained(epochs, dict(result.final), list(result.history), snapshot.state if snapshot else None)


def evaluate_final(model: nn.Module, data) -> dict[str, Any]:
    """Test and validation loss / accuracy of ``model``, shaped like a trainer's final row."""
    from prunelab.train import evaluate

    test, val = evaluate(model, data, "test"), evaluate(model, data, "val")
    return {"test_acc": test["acc"], "test_loss": test["loss"], "val_acc": val["acc"], "val_loss": val["loss"]}


def fine_tune(model: nn.Module, data, config, *, callbacks: Sequence[Any] = (),
              label: str = "fine-tuning") -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Train ``model`` in place with ``config`` (a masked model keeps its masks: the trainer holds
    them); returns the final row and the history. No training (0 epochs or 0 steps) evaluates only."""
    from prunelab.train import Trainer
    from prunelab.train.progress import stage

    if config.epochs == 0 or config.max_steps == 0:
        return evaluate_final(model, data), []
    with stage(label):
        result = Trainer(model, data, config, callbacks=list(callbacks)).fit()
    return dict(result.final), list(result.history)


def accuracy(model: nn.Module, data) -> float | None:
    """Test accuracy of ``model`` (eval mode, restored after)."""
    from prunelab.train import evaluate

    return evaluate(model, data)["acc"]
