"""The iterative schedule as a training callback (Crowley et al. 2018, sec. 3; pytorch-prunes ``prune.py``).

Fine-tuning never stops: every K optimiser steps the criterion (the Fisher signal accumulated over
those steps, or the current weights for L1 / BN, or a coin for random) ranks all live channels
globally and the n lowest are masked off; an accumulating criterion then starts afresh. When the
target is reached the callback stops training, or lets it continue for ``finetune_steps`` more
steps. Every ``checkpoint_every`` prunes it calls the checkpoint hook (the CLI writes the compressed
model and its plan there; the reference code keeps one every 100 prunes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prunelab.train.callbacks import Callback


class IterativePruning(Callback):
    """Remove ``channels_per_prune`` channels every ``prune_every`` steps until the target.

    ``pruner`` is the :class:`~prunelab.prune.structured.pruner.StructuredPruner` it drives (not
    imported here: the pruner builds this callback); ``on_checkpoint(pruner)`` is called every
    ``checkpoint_every`` prunes.
    """

    def __init__(self, pruner, on_checkpoint: Callable[[Any], None] | None = None):
        self.pruner = pruner
        self.on_checkpoint = on_checkpoint
        self.reached_at: int | None = None
        self.start_step = 0
        self.exhausted = False

    def on_fit_start(self, trainer) -> None:
        self.start_step = int(getattr(trainer, "step", 0) or 0)
        self.pruner.masks.attach()
        self.pruner.criterion.start()

    def on_after_backward(self, trainer) -> None:
        if self.pruner.criterion.accumulates:
            self.pruner.criterion.end_step(_loss_scale(trainer))

    def on_step_end(self, trainer) -> None:
        cfg = self.pruner.config
        if self.reached_at is not None or self.exhausted:
            if trainer.step - (self.reached_at or trainer.step) >= cfg.finetune_steps or self.exhausted:
                trainer.stop = True
            return
        if (trainer.step - self.start_step) % cfg.prune_every:
            return
        removed = self.pruner.prune_step(step=int(trainer.step))
        if removed and cfg.checkpoint_every and self.pruner.prunes % cfg.checkpoint_every == 0 \
                and self.on_checkpoint is not None:
            self.on_checkpoint(self.pruner)
        if self.pruner.reached():
            self.reached_at = int(trainer.step)
            if cfg.finetune_steps == 0:
                trainer.stop = True
        elif not removed and self.pruner.exhausted():
            self.exhausted = True
            trainer.stop = True

    def on_fit_end(self, trainer) -> None:
        self.pruner.criterion.stop()

    def state_dict(self) -> dict[str, Any]:
        return {"masks": self.pruner.masks.state_dict(), "criterion": self.pruner.criterion.state_dict(),
                "history": list(self.pruner.history), "prunes": self.pruner.prunes, "reached_at": self.reached_at}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pruner.masks.load_state_dict(state["masks"])
        # Resumable checkpoints written before criteria were objects kept the Fisher sums with the masks.
        self.pruner.criterion.load_state_dict(state.get("criterion", state["masks"].get("fisher", {})))
        self.pruner.history = list(state.get("history", []))
        self.pruner.prunes = int(state.get("prunes", 0))
        self.reached_at = state.get("reached_at")


def _loss_scale(trainer):
    """The AMP loss scale the gradients carry, as a tensor (no host sync), or None."""
    scaler = getattr(trainer, "scaler", None)
    if scaler is None or not getattr(scaler, "is_enabled", lambda: False)():
        return None
    get = getattr(scaler, "_get_scale_async", None)
    return get() if get is not None else scaler.get_scale()
