"""Dataset names -> loaders.

A loader is a function ``loader(root, *, val_fraction, seed, **options) -> DataBundle``. Its keyword
parameters are its options; :func:`load` checks the options a caller passes against them, so a typo
is a one-line error listing the valid ones instead of a silent default.
"""

from __future__ import annotations

import inspect
import os
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prunelab.data.base import DataBundle
from prunelab.errors import PrunelabError, unknown_choice

Loader = Callable[..., DataBundle]


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    loader: Loader
    needs_root: bool
    doc: str

    def options(self) -> list[str]:
        params = inspect.signature(self.loader).parameters
        return [p.name for p in params.values()
                if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in ("val_fraction", "seed")]


_DATASETS: dict[str, DatasetEntry] = {}


def register_dataset(name: str, loader: Loader, *, needs_root: bool = False, doc: str = "") -> None:
    """Register ``loader`` under ``name``; ``needs_root`` datasets are read from a user path."""
    _DATASETS[name] = DatasetEntry(name, loader, needs_root, doc or (loader.__doc__ or "").strip().split("\n")[0])


def list_datasets() -> list[str]:
    """Names accepted by :func:`load`."""
    return sorted(_DATASETS)


def get_dataset_entry(name: str) -> DatasetEntry:
    if name not in _DATASETS:
        raise unknown_choice("dataset", name, _DATASETS)
    return _DATASETS[name]


def load(name: str, root: str | os.PathLike | None = None, *, val_fraction: float | None = None, seed: int = 0,
         **options: Any) -> DataBundle:
    """Load dataset ``name`` as an in-memory :class:`DataBundle` with fixed train / val / test splits.

    ``root`` is where a real-format dataset lives (CIFAR archive or folder, image folders, UCI-HAR);
    embedded and synthetic sets ignore it. ``val_fraction`` (``None`` = the dataset's default) is the
    stratified share of the training data held out for validation, drawn with ``seed``; the same
    arguments always give the same splits. ``options`` are dataset-specific (see each loader).
    Nothing is ever downloaded.
    """
    entry = get_dataset_entry(name)
    valid = entry.options()
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise PrunelabError(f"unknown option(s) {unknown} for dataset {name!r}; "
                            f"valid options: {', '.join(valid) if valid else 'none'}")
    _check_option_types(entry, options)
    if entry.needs_root and root is None:
        raise PrunelabError(f"dataset {name!r} is read from disk: pass root= (--data-root) pointing at it")
    kwargs: dict[str, Any] = dict(options)
    if val_fraction is not None:
        kwargs["val_fraction"] = val_fraction
    return entry.loader(root, seed=seed, **kwargs)


def _check_option_types(entry: DatasetEntry, options: dict[str, Any]) -> None:
    """Each option must have the type its loader declares (a string 'maybe' is not a bool, 'abc' not
    an int): one line naming the option, instead of a crash or a silent truthy value later."""
    try:
        hints = typing.get_type_hints(entry.loader)
    except Exception:  # a loader without resolvable annotations: nothing to check against
        return
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}
    for key, value in options.items():
        allowed = [t for t in typing.get_args(hints.get(key)) or (hints.get(key),) if t in names or t is type(None)]
        if not allowed or (value is None and type(None) in allowed):
            continue
        ok = any(isinstance(value, bool) if t is bool else
                 isinstance(value, int) and not isinstance(value, bool) if t is int else
                 isinstance(value, int | float) and not isinstance(value, bool) if t is float else
                 isinstance(value, str) if t is str else False for t in allowed)
        if not ok:
            expected = " or ".join(names[t] for t in allowed if t in names)
            raise PrunelabError(f"dataset {entry.name!r} option {key!r} must be {expected}, got {value!r}")
