"""The one way batches reach a model: training epochs and ordered evaluation batches of a bundle,
whether its splits are in memory or streamed.

Every consumer (the trainer, :func:`prunelab.train.evaluate`, Fisher accumulation, PFS gate learning,
SNIP's calibration batch, the model-fits-the-data checks) reads data through a :class:`Feed`:

* **Order.** Epoch ``e`` visits this rank's share of one permutation drawn from a generator seeded by
  ``(seed, e)`` (:class:`EpochSampler`, a ``DistributedSampler`` with ``set_epoch``): rank ``r`` of
  ``w`` takes ``perm[r::w]``, truncated so every rank takes the same number of steps. Batch ``b`` is
  the ``b``-th run of ``batch_size`` positions, so a run resumed inside an epoch starts at batch ``b``.
* **In memory** (the default where the data fits; the airbench data path): the split lives on the
  device and a batch is one ``index_select``; pad-crop-flip augmentation is one batched op per batch
  with draws made per epoch from a generator seeded by ``(seed, rank, epoch)``.
* **Streamed** (:class:`~prunelab.data.stream.StreamSplit`): a ``DataLoader`` whose batch sampler
  yields exactly those batches; decoding runs in its worker processes (persistent across epochs),
  host memory is pinned when training on CUDA and each batch is copied to the device one batch
  ahead; the split's device transform then runs on the whole batch, and the same pad-crop-flip
  draws are applied. So a stream over the same samples gives the same numbers as the in-memory path.
  Per-sample random preprocessing (a random resized crop) is seeded by ``(seed, epoch, index)``, so it
  does not depend on the number of workers.

A streamed batch is checked as it arrives (input shape, label range); a sample a dataset could not
read (:class:`~prunelab.data.stream.Skipped`) stops the run with one line naming it, or is left out
of its batch and counted (image folders' ``corrupt=skip``), with one log line per epoch.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.utils.data import DistributedSampler

from prunelab.data.base import DataBundle, Split
from prunelab.data.pipeline import augment_batch, draw_augment_params
from prunelab.data.stream import Skipped, StreamBatch, StreamSplit, collate_samples
from prunelab.errors import PrunelabError

Batch = tuple[torch.Tensor, torch.Tensor]


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integer parts (boost's hash_combine), stable across runs and machines."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) + 0x632BE59BD9B4E019 + (h << 6) + (h >> 2))) & 0x7FFF_FFFF_FFFF_FFFF
    return h


def count_steps(n: int, batch_size: int, drop_last: bool = False) -> int:
    """Optimiser steps per epoch over ``n`` samples. A trailing batch of one sample is dropped too:
    BatchNorm cannot train on it."""
    if drop_last or n % batch_size == 1 and n > batch_size:
        return max(1, n // batch_size)
    return math.ceil(n / batch_size)


class EpochSampler(DistributedSampler):
    """This rank's sample order for an epoch: a permutation seeded by ``(seed, epoch)``, sharded
    ``perm[rank::world_size]`` and cut to ``n // world_size`` so every rank takes as many steps.

    A ``DistributedSampler`` (call :meth:`set_epoch` before each epoch); only the permutation's seed
    differs from torch's, so the in-memory path and every stream share one order.
    """

    def __init__(self, n: int, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        super().__init__(range(n), num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.n = int(n)
        self.per_rank = self.n // world_size

    def order(self, epoch: int | None = None) -> torch.Tensor:
        g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch if epoch is None else epoch, 2))
        perm = torch.randperm(self.n, generator=g)
        if self.num_replicas > 1:
            perm = perm[self.rank::self.num_replicas][: self.per_rank]
        return perm

    def __iter__(self):
        return iter(self.order().tolist())

    def __len__(self) -> int:
        return self.per_rank


class EpochBatches:
    """Batch sampler over :class:`EpochSampler`: batches ``start .. steps - 1`` of the epoch, as lists of
    indices, or of ``(index, sample_seed)`` keys for datasets that seed per-sample augmentation."""

    def __init__(self, sampler: EpochSampler, batch_size: int, steps: int, seeded: bool) -> None:
        self.sampler, self.batch_size, self.steps, self.seeded = sampler, int(batch_size), int(steps), seeded
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        order, bs, epoch, seed = self.sampler.order(), self.batch_size, self.sampler.epoch, self.sampler.seed
        for b in range(self.start, self.steps):
            idx = order[b * bs:(b + 1) * bs].tolist()
            yield [(i, mix_seed(seed, epoch, i, 5)) for i in idx] if self.seeded else idx

    def __len__(self) -> int:
        return max(0, self.steps - self.start)


def _loader_error(exc: BaseException, where: str) -> PrunelabError:
    """One line for an exception raised while reading or collating samples (in a worker or here)."""
    name = type(exc).__name__
    text = " ".join(str(exc).split())
    if "Original Traceback" in text:  # re-raised from a DataLoader worker: keep the original last line
        text = text.rsplit(f"{name}: ", 1)[-1]
    if isinstance(exc, RuntimeError) and "stack expects each tensor to be equal size" in text:
        return PrunelabError(f"{where}: samples of different shapes cannot form a batch ({text})")
    return PrunelabError(f"{where} cannot be read: {name}: {text}" if name != "PrunelabError" else f"{where}: {text}")


class Feed:
    """Batches of ``data`` on ``device`` (see the module docstring).

    ``batch_size``, ``seed``, ``rank`` / ``world_size``, ``augment`` (apply the bundle's pad-crop-flip
    and a stream's random device ops in training) and ``drop_last`` shape the training epochs;
    ``resident`` keeps in-memory splits on the device after first use (the trainer), else each batch
    is copied when it is served.
    """

    def __init__(self, data: DataBundle, device: torch.device | str | None = None, *, batch_size: int = 128,
                 seed: int = 0, rank: int = 0, world_size: int = 1, augment: bool = True, drop_last: bool = False,
                 resident: bool = False) -> None:
        self.data = data
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.batch_size, self.seed, self.rank, self.world_size = int(batch_size), int(seed), int(rank), int(world_size)
        self.resident = resident
        self.n_per_rank = len(data.train) // self.world_size
        self.steps_per_epoch = count_steps(self.n_per_rank, self.batch_size, drop_last) if self.n_per_rank else 0
        image = len(data.input_shape) == 3
        self.augment = data.augment if (augment and data.augment.active and image) else None
        self.random_ops = bool(augment)
        self.skipped = 0
        self._epoch_skips: list[Skipped] = []
        self._tensors: dict[str, Batch] = {}
        self._train_loader = None
        self._eval_loaders: dict[tuple, object] = {}
        self._generator: torch.Generator | None = None

    # ---------------------------------------------------------------------------------------- order
    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    def sampler(self) -> EpochSampler:
        return EpochSampler(len(self.data.train), self.seed, self.rank, self.world_size)

    def order(self, epoch: int) -> torch.Tensor:
        """This rank's sample order for ``epoch`` (indices into the training split, on the CPU)."""
        return self.sampler().order(epoch)

    def _gen(self) -> torch.Generator:
        if self._generator is None:
            self._generator = torch.Generator(device=self.device)
        return self._generator

    def augment_params(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Crop offsets and flips for every position of this rank's ``epoch``, drawn at once on the
        device from a generator seeded by ``(seed, rank, epoch)`` (a resumed run draws the same)."""
        g = self._gen()
        g.manual_seed(mix_seed(self.seed, self.rank, epoch, 3))
        return draw_augment_params(self.n_per_rank, self.augment, g, self.device)

    # ---------------------------------------------------------------------------------------- train
    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """Training batches ``start .. steps_per_epoch - 1`` of ``epoch``, augmented, on the device."""
        split, aug, bs = self.data.train, self.augment, self.batch_size
        params = self.augment_params(epoch) if aug is not None else None
        self._epoch_skips = []
        if isinstance(split, Split):
            x_all, y_all = self._split_tensors("train")
            order = self.order(epoch).to(self.device, non_blocking=True)
            for b in range(start, self.steps_per_epoch):
                sl = slice(b * bs, (b + 1) * bs)
                idx = order[sl]
                x, y = x_all.index_select(0, idx), y_all.index_select(0, idx)
                if params is not None:
                    x = augment_batch(x, aug, params=(params[0][sl], params[1][sl], params[2][sl]))
                yield x, y
            return
        loader = self._epoch_loader(split)
        loader.batch_sampler.set_epoch(epoch)
        loader.batch_sampler.start = start
        g = self._gen() if (split.transform is not None and self.random_ops) else None
        for b, (x, y, kept) in enumerate(self._stream(loader, split, "train"), start=start):
            if g is not None:
                g.manual_seed(mix_seed(self.seed, self.rank, epoch, b, 4))
            x = self._finish(split, x, g, "train")
            if params is not None:
                sl = slice(b * bs, (b + 1) * bs)
                p = (params[0][sl], params[1][sl], params[2][sl])
                if kept is not None:
                    keep = kept.to(self.device)
                    p = (p[0][keep], p[1][keep], p[2][keep])
                x = augment_batch(x, aug, params=p)
            yield x, y
        self._report_skips(f"epoch {epoch + 1}")

    def _epoch_loader(self, split: StreamSplit):
        if self._train_loader is None:
            if not self.random_ops and callable(getattr(split.dataset, "select", None)):
                # no augmentation: a dataset with an evaluation view (image crops) is read through it
                split = split.select(range(len(split)), evaluation=True)
            batches = EpochBatches(self.sampler(), self.batch_size, self.steps_per_epoch, split.seeded)
            self._train_loader = self._loader(split, batches, persistent=True)
        return self._train_loader

    # ----------------------------------------------------------------------------------- evaluation
    def evaluation(self, split: str, batch_size: int | None = None, rank: int | None = None,
                   world_size: int | None = None) -> Iterator[Batch]:
        """Batches of ``split`` in order, without augmentation: this rank's batches ``rank``, ``rank +
        world_size``, ... of ``batch_size`` samples (every batch in one process)."""
        s = self.data.split(split)
        bs = int(batch_size or self.batch_size)
        rank = self.rank if rank is None else rank
        world = self.world_size if world_size is None else world_size
        n = len(s)
        starts = range(rank * bs, n, bs * world)
        if isinstance(s, Split):
            x_all, y_all = self._split_tensors(split) if self.resident else (s.x, s.y)
            for start in starts:
                x, y = x_all[start:start + bs], y_all[start:start + bs]
                if x.device != self.device:
                    x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                yield x, y
            return
        key = (split, bs, rank, world)
        loader = self._eval_loaders.get(key)
        if loader is None:
            # The trainer evaluates every epoch: its feed keeps the workers (``resident``).
            loader = self._loader(s, [list(range(a, min(a + bs, n))) for a in starts], persistent=self.resident)
            if self.resident:
                self._eval_loaders[key] = loader
        for x, y, _ in self._stream(loader, s, split):
            yield self._finish(s, x, None, split), y
        self._report_skips(f"{split} evaluation")

    def take(self, split: str, indices) -> Batch:
        """The samples at ``indices`` of ``split`` as one batch on the device, without augmentation
        (SNIP's calibration batch, the check that a model fits the data)."""
        s = self.data.split(split)
        idx = [int(i) for i in torch.as_tensor(indices, dtype=torch.long).reshape(-1).tolist()]
        if isinstance(s, Split):
            return s.x[idx].to(self.device), s.y[idx].to(self.device)
        collate = s.collate or collate_samples
        dataset = s.dataset
        if callable(getattr(dataset, "select", None)):  # read with the evaluation preprocessing
            dataset, idx = s.select(idx, evaluation=True).dataset, list(range(len(idx)))
        try:
            raw = collate([dataset[i] for i in idx])
        except (RuntimeError, TypeError, ValueError, IndexError, KeyError, OSError) as exc:
            raise _loader_error(exc, self._where(split)) from None
        x, y, _ = self._checked(raw, s, split)
        return self._finish(s, x.to(self.device), None, split), y.to(self.device)

    # ---------------------------------------------------------------------------------------- plumbing
    def _where(self, split: str) -> str:
        return f"dataset {self.data.name!r} {split} split"

    def _split_tensors(self, split: str) -> Batch:
        if split not in self._tensors:
            s = self.data.split(split)
            self._tensors[split] = (s.x.to(self.device, non_blocking=True), s.y.to(self.device, non_blocking=True))
        return self._tensors[split]

    def _loader(self, split: StreamSplit, batch_sampler: Iterable, persistent: bool):
        from torch.utils.data import DataLoader

        pin = split.pin_memory if split.pin_memory is not None else self.device.type == "cuda"
        kwargs = {"batch_sampler": batch_sampler, "num_workers": split.workers,
                  "collate_fn": split.collate or collate_samples, "pin_memory": bool(pin)}
        if split.workers > 0:
            kwargs.update(prefetch_factor=split.prefetch, persistent_workers=persistent)
        return DataLoader(split.dataset, **kwargs)

    def _checked(self, raw, split: StreamSplit, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        if isinstance(raw, StreamBatch):
            x, y, kept, skipped = raw
        elif isinstance(raw, tuple | list) and len(raw) >= 2:
            x, y, kept, skipped = raw[0], raw[1], None, ()
        else:
            raise PrunelabError(f"{self._where(name)}: a batch must be (inputs, labels), got {type(raw).__name__}")
        for item in skipped:
            if item.stop:
                raise PrunelabError(f"{self._where(name)}: {item.where} cannot be read ({item.reason}); pass the "
                                    f"data option corrupt=skip to leave such samples out")
            self._epoch_skips.append(item)
            self.skipped += 1
        if skipped and y.numel() == 0:
            raise PrunelabError(f"{self._where(name)}: every sample of a batch is unreadable (first: "
                                f"{skipped[0].where}: {skipped[0].reason})")
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise PrunelabError(f"{self._where(name)}: a batch must hold tensors, got {type(x).__name__} and "
                                f"{type(y).__name__}")
        if y.dim() != 1 or y.shape[0] != x.shape[0] or y.dtype.is_floating_point:
            raise PrunelabError(f"{self._where(name)}: labels must be one class index per sample, got shape "
                                f"{tuple(y.shape)} ({y.dtype}) for {x.shape[0]} inputs")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.data.num_classes):
            raise PrunelabError(f"{self._where(name)}: labels must lie in 0..{self.data.num_classes - 1}, got "
                                f"{int(y.min())}..{int(y.max())}")
        return x, y.to(torch.int64), kept

    def _stream(self, loader, split: StreamSplit, name: str) -> Iterator[tuple[torch.Tensor, torch.Tensor, Any]]:
        """The loader's batches, checked and copied to the device one batch ahead of the consumer."""
        pending = None
        it = iter(loader)
        while True:
            try:
                raw = next(it)
            except StopIteration:
                break
            except PrunelabError:
                raise
            except (RuntimeError, TypeError, ValueError, IndexError, KeyError, OSError, AttributeError) as exc:
                raise _loader_error(exc, self._where(name)) from None
            x, y, kept = self._checked(raw, split, name)
            moved = (x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True), kept)
            if pending is not None:
                yield pending
            pending = moved
        if pending is not None:
            yield pending

    def _finish(self, split: StreamSplit, x: torch.Tensor, generator: torch.Generator | None,
                name: str) -> torch.Tensor:
        if split.transform is not None:
            x = split.transform(x, generator)
        if tuple(x.shape[1:]) != tuple(self.data.input_shape):
            raise PrunelabError(f"{self._where(name)} gives inputs of shape {tuple(x.shape[1:])}, expected "
                                f"{tuple(self.data.input_shape)}")
        return x

    def _report_skips(self, when: str) -> None:
        if self._epoch_skips and self.rank == 0:
            first = self._epoch_skips[0]
            sys.stderr.write(f"prunelab: skipped {len(self._epoch_skips)} unreadable sample(s) of dataset "
                             f"{self.data.name!r} in {when} (first: {first.where}: {first.reason})\n")
        self._epoch_skips = []

    def close(self) -> None:
        """Stop the loaders' worker processes (dropping a loader shuts them down); in-memory splits
        stay on the device for later evaluations."""
        self._train_loader = None
        self._eval_loaders.clear()


def batches(data: DataBundle, split: str = "test", batch_size: int = 512,
            device: torch.device | str | None = None) -> Iterator[Batch]:
    """Iterate ``(x, y)`` batches of a split in order, without augmentation, moved to ``device`` when
    given (in-memory splits: views of the stored tensors; streams: read through their DataLoader)."""
    s = data.split(split)
    if device is None and isinstance(s, Split):
        device = s.x.device  # views where the tensors are
    return Feed(data, device, batch_size=batch_size).evaluation(split, batch_size, 0, 1)
