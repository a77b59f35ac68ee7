"""Training callbacks: how pruning methods hook into the one training loop.

Pruning interleaves with training in every seed paper: masks re-applied after each optimiser step
(Gupta et al.), a channel removed every K steps with Fisher scores accumulated in between
(Crowley et al.), gates clamped after each step (Wang et al.). Weight masks are held by the trainer
itself (:mod:`prunelab.train.masks`), so no path can forget them; the rest is a :class:`Callback`.
The trainer calls the hooks in this order for every batch::

    on_batch_start -> forward -> loss -> backward -> on_after_backward -> optimizer.step()
    -> masks re-applied -> scheduler.step() -> on_step_end

and around them ``on_fit_start`` (before a checkpoint is resumed), ``on_epoch_start`` /
``on_epoch_end(trainer, history_row)`` for every complete epoch, and ``on_fit_end``.

``trainer.step`` counts optimiser steps taken so far (it is already incremented in
``on_step_end``); ``trainer.epoch`` is the current epoch (0-based). Setting ``trainer.stop = True``
ends training after the current step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from prunelab.train.trainer import Trainer


class Callback:
    """Base class: override the hooks you need; all default to no-ops."""

    def on_fit_start(self, trainer: Trainer) -> None:
        pass

    def on_epoch_start(self, trainer: Trainer) -> None:
        pass

    def on_batch_start(self, trainer: Trainer, x: torch.Tensor, y: torch.Tensor) -> None:
        pass

    def on_after_backward(self, trainer: Trainer) -> None:
        pass

    def on_step_end(self, trainer: Trainer) -> None:
        pass

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        pass

    def on_fit_end(self, trainer: Trainer) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        """State to store in a resumable checkpoint (tensors and plain containers only)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
