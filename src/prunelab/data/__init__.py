"""Datasets with fixed splits, in memory where they fit and streamed where they do not, and the
one batch feed every consumer reads them through.

``load(name, root=None, **options)`` is the entry point; ``list_datasets()`` names what it accepts:
embedded sets (``digits``, ``mnist1d``), real formats read from a user path (``cifar10``,
``cifar100``, ``imagefolder``, ``har``), streamed ImageNet-style folders and tar shards
(``imagefolder-stream``, ``tar-shards``) and a ``synthetic`` generator. Nothing is downloaded.
``from_dataset(train, val, test)`` wraps a user's own ``Dataset`` or ``DataLoader``; a plugin module
registers more names with ``register_dataset``.

Each loader module registers its names when imported (the registry imports no loader); every module
of this package is imported here, so a new format is one new file.
"""

from prunelab.autoload import import_modules
from prunelab.data.base import Augment, DataBundle, Split
from prunelab.data.feed import Feed, batches
from prunelab.data.pipeline import augment_batch
from prunelab.data.registry import get_dataset_entry, list_datasets, load, register_dataset
from prunelab.data.stream import StreamSplit, from_dataset

import_modules(__name__, __path__)

__all__ = [
    "Augment",
    "DataBundle",
    "Feed",
    "Split",
    "StreamSplit",
    "augment_batch",
    "batches",
    "from_dataset",
    "get_dataset_entry",
    "list_datasets",
    "load",
    "register_dataset",
]
