"""Data read while training instead of held in memory: a user's ``Dataset`` or ``DataLoader``, image
folders and tar shards too large for memory.

A :class:`StreamSplit` is one split of a :class:`~prunelab.data.base.DataBundle` given as a map-style
``torch.utils.data.Dataset`` whose items are ``(input, label)``, plus how to batch it: DataLoader worker
processes (decoding happens there), pinned host memory and prefetch depth, a collate function, and a
:class:`BatchTransform` that runs on the training device on whole batches (for image folders: uint8 ->
float, colour jitter and PCA lighting in training, normalisation), because a batched tensor op on the
device is far cheaper than the same op per sample in a worker (the airbench argument).

The batch order is never the DataLoader's: :class:`prunelab.data.feed.Feed` draws the same seeded
permutation for a stream as for an in-memory split, so both paths give the same numbers on the same
samples and seeds (``tests/test_stream.py`` checks it).

:func:`from_dataset` turns a user's ``Dataset`` / ``DataLoader`` into a bundle every trainer,
criterion and study accepts; a data plugin registers a loader that returns one
(:func:`prunelab.data.register_dataset`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import torch

from prunelab.errors import PrunelabError


class BatchTransform(Protocol):
    """A device-side op on a collated input batch. ``generator`` is given in training (random ops may
    draw from it) and ``None`` for evaluation (deterministic ops only)."""

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor: ...


class Skipped(NamedTuple):
    """What a dataset returns instead of a sample it could not read (a corrupt image), so the batch
    goes on without it; the feed counts them (``corrupt=skip``) or stops with this line (``stop``)."""

    where: str
    reason: str
    stop: bool


class StreamBatch(NamedTuple):
    """A collated batch that may have lost samples: ``kept`` marks which batch positions survived."""

    x: torch.Tensor
    y: torch.Tensor
    kept: torch.Tensor | None
    skipped: tuple[Skipped, ...]


def collate_samples(items: list) -> StreamBatch:
    """Stack ``(x, y)`` items, leaving out :class:`Skipped` ones (module level: workers pickle it)."""
    from torch.utils.data import default_collate

    skipped = tuple(it for it in items if isinstance(it, Skipped))
    good = [it for it in items if not isinstance(it, Skipped)]
    kept = None
    if skipped:
        kept = torch.tensor([not isinstance(it, Skipped) for it in items], dtype=torch.bool)
    if not good:
        return StreamBatch(torch.zeros(0), torch.zeros(0, dtype=torch.int64), kept, skipped)
    x, y = default_collate(good)
    return StreamBatch(x, torch.as_tensor(y, dtype=torch.int64), kept, skipped)


@dataclass
class StreamSplit:
    """One split read through a DataLoader (see the module docstring).

    ``workers`` DataLoader processes (0 = in this process); ``pin_memory`` (``None``: when training on
    CUDA); ``prefetch`` batches loaded ahead per worker; ``collate`` (default: stacking, dropping
    :class:`Skipped` items); ``transform`` a :class:`BatchTransform` on the device; ``targets`` the
    int64 labels where they are known without reading samples (stratified splits, PFS hold-outs);
    ``seeded``: the dataset takes ``(index, seed)`` keys, so per-sample random augmentation depends on
    the sample and epoch only, never on which worker reads it.
    """

    dataset: Any
    workers: int = 0
    pin_memory: bool | None = None
    prefetch: int = 2
    collate: Callable[[list], Any] | None = None
    transform: BatchTransform | None = None
    targets: torch.Tensor | None = None
    seeded: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise PrunelabError(f"data workers must be a whole number >= 0, got {self.workers!r}")
        if isinstance(self.prefetch, bool) or not isinstance(self.prefetch, int) or self.prefetch < 1:
            raise PrunelabError(f"data prefetch must be a whole number >= 1, got {self.prefetch!r}")

    def __len__(self) -> int:
        return len(self.dataset)

    def labels(self) -> torch.Tensor:
        """All labels as int64: ``targets``, the dataset's own ``targets`` attribute (torchvision's
        convention), or else read sample by sample (every sample decoded once)."""
        if self.targets is not None:
            return self.targets
        own = getattr(self.dataset, "targets", None)
        if own is not None:
            return torch.as_tensor(own, dtype=torch.int64).reshape(-1)
        return torch.tensor([int(self.dataset[i][1]) for i in range(len(self.dataset))], dtype=torch.int64)

    def select(self, indices: Sequence[int] | torch.Tensor, evaluation: bool = False) -> StreamSplit:
        """The samples at ``indices``. A dataset with its own ``select(indices, evaluation)`` (image
        folders) builds the subset itself, with its evaluation preprocessing when ``evaluation``
        (a hold-out carved from training data is read like test data); others get a ``Subset``."""
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        own = getattr(self.dataset, "select", None)
        if callable(own):
            dataset = own(idx.tolist(), evaluation)
        else:
            from torch.utils.data import Subset

            dataset = Subset(self.dataset, idx.tolist())
        targets = None if self.targets is None else self.targets[idx]
        return dataclasses.replace(self, dataset=dataset, targets=targets)


def is_stream(split: Any) -> bool:
    return isinstance(split, StreamSplit)


@dataclass
class _Source:
    dataset: Any
    options: dict[str, Any] = field(default_factory=dict)


def _source(obj: Any, what: str) -> _Source:
    """A Dataset as is; a DataLoader's dataset with its workers, collate function, pinning and prefetch
    (its sampler and batch size are not used: order and batch size come from the training config, so
    runs stay repeatable and resumable)."""
    from torch.utils.data import DataLoader, Dataset, IterableDataset

    if isinstance(obj, DataLoader):
        options: dict[str, Any] = {"workers": int(obj.num_workers), "pin_memory": bool(obj.pin_memory) or None}
        if obj.num_workers and obj.prefetch_factor:
            options["prefetch"] = int(obj.prefetch_factor)
        from torch.utils.data import default_collate

        if obj.collate_fn is not default_collate:
            options["collate"] = obj.collate_fn
        obj = obj.dataset
    else:
        options = {}
    if isinstance(obj, IterableDataset):
        raise PrunelabError(f"{what} is an IterableDataset; prunelab needs a map-style Dataset (with __len__ and "
                            f"__getitem__) so every epoch's order is a seeded permutation")
    if not isinstance(obj, Dataset) and not (hasattr(obj, "__getitem__") and hasattr(obj, "__len__")):
        raise PrunelabError(f"{what} must be a torch.utils.data.Dataset or DataLoader, got {type(obj).__name__}")
    return _Source(obj, options)


def check_item(item: Any, where: str, input_shape: tuple[int, ...] | None,
               num_classes: int | None) -> tuple[tuple[int, ...], int]:
    """The input shape and label of one ``(x, y)`` item, or a one-line error naming what is wrong."""
    if isinstance(item, Skipped):
        raise PrunelabError(f"{where}: {item.where} cannot be read ({item.reason})")
    if not isinstance(item, tuple | list) or len(item) < 2:
        raise PrunelabError(f"{where} must return (input, label) pairs, got {type(item).__name__}")
    x, y = item[0], item[1]
    shape = tuple(int(d) for d in getattr(x, "shape", ()))
    if not hasattr(x, "shape") or not shape:
        raise PrunelabError(f"{where} returned an input of type {type(x).__name__}; expected a tensor or array "
                            f"of shape (C, H, W), (T, F) or (F,)")
    if input_shape is not None and shape != tuple(input_shape):
        raise PrunelabError(f"{where} returned an input of shape {shape}, expected {tuple(input_shape)}")
    try:
        label = int(y)
    except (TypeError, ValueError, RuntimeError):
        raise PrunelabError(f"{where} returned label {y!r}; expected a class index") from None
    if num_classes is not None and not 0 <= label < num_classes:
        raise PrunelabError(f"{where} returned label {label}, outside 0..{num_classes - 1}")
    return shape, label


def from_dataset(train: Any, val: Any = None, test: Any = None, *, num_classes: int | None = None,
                 name: str = "custom", input_shape: Sequence[int] | None = None, augment=None,
                 transform: BatchTransform | None = None, workers: int | None = None, pin_memory: bool | None = None,
                 prefetch: int | None = None, task: str | None = None, info: dict | None = None):
    """A :class:`~prunelab.data.base.DataBundle` over a user's datasets, streamed through DataLoaders.

    ``train`` / ``val`` / ``test`` are map-style ``Dataset`` objects (items ``(input, label)``) or
    ``DataLoader`` objects (their dataset, workers, collate function and pinning are used; order and
    batch size come from the training config). ``val`` and ``test`` may be omitted (an empty split).
    ``num_classes`` defaults to ``len(train.classes)`` or the largest training label + 1 (which reads
    every label). ``input_shape`` defaults to the first sample's shape (after ``transform``, which
    must keep it). ``augment`` (:class:`~prunelab.data.base.Augment`) adds the batched pad-crop-flip of
    the in-memory path; ``workers`` / ``pin_memory`` / ``prefetch`` override the loaders' settings.
    The first sample of every split is checked (shape, label range): a plugin that returns the wrong
    shapes fails here with one line, and every batch is checked again as it is read.
    """
    from prunelab.data.base import Augment, DataBundle, Split

    sources = {"train": _source(train, f"dataset {name!r} train split")}
    for split, obj in (("val", val), ("test", test)):
        if obj is not None:
            sources[split] = _source(obj, f"dataset {name!r} {split} split")
    if len(sources["train"].dataset) == 0:
        raise PrunelabError(f"dataset {name!r} has an empty training split")
    first = sources["train"].dataset[0]
    shape, _ = check_item(first, f"dataset {name!r} train split", None, None)
    if input_shape is not None:
        shape = tuple(int(d) for d in input_shape)
    if num_classes is None:
        classes = getattr(sources["train"].dataset, "classes", None)
        if classes is not None:
            num_classes = len(classes)
        else:
            probe = StreamSplit(sources["train"].dataset)
            num_classes = int(probe.labels().max()) + 1
    num_classes = int(num_classes)
    if num_classes < 2:
        raise PrunelabError(f"dataset {name!r} needs at least 2 classes, got {num_classes}")
    splits: dict[str, Any] = {}
    for split, src in sources.items():
        opts = dict(src.options)
        for key, value in (("workers", workers), ("pin_memory", pin_memory), ("prefetch", prefetch)):
            if value is not None:
                opts[key] = value
        stream = StreamSplit(src.dataset, transform=transform, **opts)
        if len(stream):
            item = stream.dataset[0]
            check_item(item, f"dataset {name!r} {split} split", None if transform is not None else shape,
                       num_classes)
        splits[split] = stream
    empty = Split(torch.zeros(0, *shape), torch.zeros(0, dtype=torch.int64))
    if task is None:
        task = {3: "image", 2: "sequence", 1: "vector"}.get(len(shape), "vector")
    return DataBundle(name=name, train=splits["train"], val=splits.get("val", empty), test=splits.get("test", empty),
                      num_classes=num_classes, input_shape=shape, task=task,
                      augment=augment if augment is not None else Augment.none(), info=dict(info or {}))
