"""Datasets as in-memory tensors with fixed splits, and the batched augmentation pipeline.

``load(name, root=None, **options)`` is the entry point; ``list_datasets()`` names what it accepts:
embedded sets (``digits``, ``mnist1d``), real formats read from a user path (``cifar10``,
``cifar100``, ``imagefolder``, ``har``) and a ``synthetic`` generator. Nothing is downloaded.
"""

from prunelab.data.base import Augment, DataBundle, Split
from prunelab.data.pipeline import augment_batch, batches
from prunelab.data.registry import get_dataset_entry, list_datasets, load, register_dataset

__all__ = [
    "Augment",
    "DataBundle",
    "Split",
    "augment_batch",
    "batches",
    "get_dataset_entry",
    "list_datasets",
    "load",
    "register_dataset",
]
