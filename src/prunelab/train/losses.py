"""Losses by name: what fine-tuning, evaluation and Fisher scoring minimise.

A :class:`Loss` maps ``(logits, targets)`` to a scalar and says how to count correct predictions,
so the trainer, :func:`prunelab.train.trainer.evaluate` and the Fisher criteria share one
definition. Registered losses (:func:`register_loss` adds more; a plugin module may call it):

* ``cross-entropy`` (the default): classification, logits ``(N, C)`` (or ``(N, C, ...)``) against
  int64 labels ``(N,)``; accuracy is ``argmax == label``.
* ``next-token``: causal language modelling, logits ``(N, T, V)`` against token ids ``(N, T)``
  (labels are the input ids): position ``t`` predicts token ``t + 1``, so logits drop the last step and
  labels the first; labels equal to ``-100`` are ignored (Hugging Face's
  ``ForCausalLMLoss``, ``transformers/loss/loss_utils.py``). Counts and accuracy are per predicted
  token.

Losses take the model's output through :func:`prunelab.models.inputs.logits_of`, so a tuple, a dict
or an HF ``ModelOutput`` works as well as a tensor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prunelab.errors import PrunelabError, unknown_choice
from prunelab.models.inputs import logits_of

#: the label value next-token losses ignore (PyTorch's and Hugging Face's default ``ignore_index``)
IGNORE_INDEX = -100


@dataclass(frozen=True)
class Loss:
    """A named loss. ``fn(logits, targets, reduction, label_smoothing) -> tensor``;
    ``predictions(logits, targets) -> (predicted, targets)`` flattened to the predicted positions;
    ``targets_of(targets)``: the targets that are predicted (all of them, or all but the first token)."""

    name: str
    fn: Callable[..., torch.Tensor]
    predictions: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    targets_of: Callable[[torch.Tensor], torch.Tensor] = lambda t: t
    doc: str = ""
    #: whether labels equal to :data:`IGNORE_INDEX` are skipped (and counts need a look at the labels)
    ignores: bool = False

    def __call__(self, output, targets: torch.Tensor, *, reduction: str = "mean",
                 label_smoothing: float = 0.0) -> torch.Tensor:
        """The loss of a model's ``output`` (tensor, tuple, dict or ModelOutput) against ``targets``."""
        return self.fn(logits_of(output), targets, reduction, label_smoothing)

    def correct(self, output, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | int]:
        """``(number of correct predictions, number of counted predictions)``, as tensors on the
        targets' device when labels may be ignored (no host sync per step), else the count as an int."""
        pred, tgt = self.predictions(logits_of(output).detach(), targets)
        if not self.ignores:
            return (pred == tgt).sum(), int(tgt.numel())
        keep = tgt != IGNORE_INDEX
        return ((pred == tgt) & keep).sum(), keep.sum()

    def count(self, targets: torch.Tensor) -> int:
        """How many predictions ``targets`` hold (samples, or tokens after the shift)."""
        tgt = self.targets_of(targets)
        return int((tgt != IGNORE_INDEX).sum()) if self.ignores else int(tgt.numel())


def _classification(logits: torch.Tensor, targets: torch.Tensor, reduction: str, smoothing: float) -> torch.Tensor:
    return F.cross_entropy(logits.float() if reduction == "sum" else logits, targets, reduction=reduction,
                           label_smoothing=smoothing)


def _classification_predictions(logits: torch.Tensor, targets: torch.Tensor):
    return logits.argmax(1), targets


def _shift(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if logits.dim() != 3 or targets.dim() != 2 or logits.shape[:2] != targets.shape:
        raise PrunelabError(f"next-token loss needs logits (N, T, V) and token labels (N, T), got logits "
                            f"{tuple(logits.shape)} and labels {tuple(targets.shape)}")
    return logits[:, :-1, :], targets[:, 1:]


def _next_token(logits: torch.Tensor, targets: torch.Tensor, reduction: str, smoothing: float) -> torch.Tensor:
    shifted, labels = _shift(logits, targets)
    flat = shifted.reshape(-1, shifted.shape[-1])
    return F.cross_entropy(flat.float(), labels.reshape(-1), reduction=reduction, ignore_index=IGNORE_INDEX,
                           label_smoothing=smoothing)


def _next_token_predictions(logits: torch.Tensor, targets: torch.Tensor):
    shifted, labels = _shift(logits, targets)
    return shifted.argmax(-1).reshape(-1), labels.reshape(-1)


_LOSSES: dict[str, Loss] = {}

#: the default loss (classification)
DEFAULT_LOSS = "cross-entropy"


def register_loss(loss: Loss) -> Loss:
    """Add (or replace) a loss under ``loss.name``."""
    _LOSSES[loss.name] = loss
    return loss


def get_loss(name: str | Loss | None) -> Loss:
    """A registered loss by name (None: :data:`DEFAULT_LOSS`); a :class:`Loss` is returned as is."""
    if isinstance(name, Loss):
        return name
    name = DEFAULT_LOSS if name is None else name
    if name not in _LOSSES:
        raise unknown_choice("loss", name, _LOSSES)
    return _LOSSES[name]


def list_losses() -> list[str]:
    return sorted(_LOSSES)


register_loss(Loss("cross-entropy", _classification, _classification_predictions, lambda t: t,
                   "classification cross-entropy on logits (N, C) against labels (N,)"))
register_loss(Loss("next-token", _next_token, _next_token_predictions,
                   lambda t: t[:, 1:],
                   "causal LM cross-entropy: logits (N, T, V) predict labels (N, T) shifted by one; -100 ignored",
                   ignores=True))
