"""Training: one loop with callbacks, in-memory batched data, schedules, checkpoints and DDP.

``Trainer(model, data, config, callbacks=(), params=None).fit() -> TrainResult``;
``train(model, data, config)`` does the same in one call; ``evaluate(model, data, split)`` measures
loss and accuracy; ``batches(data, split, batch_size)`` iterates a split in order. The trainer holds
every weight mask on the model (:mod:`prunelab.train.masks`) and stops a run whose loss or weights go
NaN or infinite with :class:`TrainingDiverged` (:mod:`prunelab.train.divergence`).
"""

from prunelab.data.feed import batches
from prunelab.train.callbacks import Callback
from prunelab.train.config import TrainConfig
from prunelab.train.divergence import DivergenceWarning, TrainingDiverged
from prunelab.train.trainer import Trainer, TrainResult, evaluate, resolve_device, train

__all__ = ["Callback", "DivergenceWarning", "TrainConfig", "TrainResult", "Trainer", "TrainingDiverged", "batches",
           "evaluate", "resolve_device", "train"]
