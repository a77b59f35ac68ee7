"""The dataset bundle every trainer, criterion and study consumes.

Datasets that fit in memory are held as tensors (images as uint8 or float, sequences as float) with
fixed train / validation / test splits, so the trainer can move them to the device once and augment
whole batches with tensor ops (the airbench data path); this stays the default wherever the data fits.
A split may instead be a :class:`~prunelab.data.stream.StreamSplit` (a Dataset read by DataLoader
workers) for data that does not fit. Consumers never index a split's tensors: they go through
:class:`prunelab.data.feed.Feed` (and :func:`prunelab.data.batches`), which serves both kinds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from prunelab.errors import PrunelabError, check_choice

if TYPE_CHECKING:
    from prunelab.data.stream import StreamSplit


@dataclass(frozen=True)
class Augment:
    """Batched training augmentation: pad-and-crop by ``pad`` pixels and horizontal flip.

    ``pad_mode`` is ``"reflect"`` (WRN / pytorch-prunes) or ``"zeros"`` (PFS, torchvision default).
    Sequence and vector data use ``Augment.none()``. ``fill`` (one value per channel) is what a zero
    pixel of the raw image becomes after normalisation, so ``"zeros"`` padding of normalised data pads
    with black as torchvision's ``RandomCrop(padding=4)`` does on the raw image; ``None`` pads with 0.
    """

    pad: int = 0
    flip: bool = False
    pad_mode: str = "reflect"
    fill: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.pad, bool) or not isinstance(self.pad, int) or self.pad < 0:
            raise PrunelabError(f"augmentation pad must be a whole number of pixels >= 0, got {self.pad!r}")
        if not isinstance(self.flip, bool):
            raise PrunelabError(f"augmentation flip must be true or false, got {self.flip!r}")
        check_choice("augmentation pad_mode", self.pad_mode, ("reflect", "zeros"))

    @classmethod
    def none(cls) -> Augment:
        return cls(0, False)

    @property
    def active(self) -> bool:
        return self.pad > 0 or self.flip


@dataclass
class Split:
    """Inputs and integer labels of one split."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def labels(self) -> torch.Tensor:
        return self.y

    def select(self, indices: Sequence[int] | torch.Tensor, evaluation: bool = False) -> Split:
        """The samples at ``indices`` (copies); ``evaluation`` matters only for streamed splits."""
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        return Split(self.x[idx], self.y[idx])


@dataclass
class DataBundle:
    """A dataset with fixed splits, already normalised (float32 inputs, int64 labels; a streamed split
    yields such batches after its device transform).

    ``input_shape`` excludes the batch dimension: (C, H, W) for images, (T, F) for sequences,
    (F,) for vectors. ``val`` may be empty (zero rows) when a dataset has no held-out split.
    """

    name: str
    train: Split | StreamSplit
    val: Split | StreamSplit
    test: Split | StreamSplit
    num_classes: int
    input_shape: tuple[int, ...]
    task: str = "image"  # image | sequence | vector
    augment: Augment = field(default_factory=Augment.none)
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        aug, shape = self.augment, self.input_shape
        if aug.pad and aug.pad_mode == "reflect" and len(shape) == 3 and aug.pad >= min(shape[1:]):
            raise PrunelabError(f"augmentation pad {aug.pad} with reflect padding must be smaller than the "
                                f"{self.input_shape[1]}x{self.input_shape[2]} images")
        if aug.pad and len(shape) == 3 and aug.pad > max(shape[1:]):  # each batch is padded in memory
            raise PrunelabError(f"augmentation pad {aug.pad} must be at most the size of the "
                                f"{self.input_shape[1]}x{self.input_shape[2]} images")

    @property
    def streamed(self) -> bool:
        """True when any split is read through a DataLoader rather than held in memory."""
        return any(not isinstance(s, Split) for s in (self.train, self.val, self.test))

    def split(self, name: str) -> Split | StreamSplit:
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}; valid choices: train, val, test")
        return getattr(self, name)
