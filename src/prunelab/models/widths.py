"""Reading, writing and scaling the widths of a zoo architecture, for the families' hooks.

A :class:`~prunelab.models.WidthUnit` names the constructor keyword (and list index) that sets its
width, so "this architecture with these unit widths" is always a new :class:`ArchSpec`, never a
modified module: reduced networks, copied profiles and Pruning from Scratch all produce specs. The
helpers below are what a family's ``scale_width`` hook is built from.

Widths are rounded to whole channels, half up, at least one channel (pytorch-prunes truncates with
``int()``, which biases every width down), or to a multiple of ``round_to`` (8 or 16 for
hardware-friendly widths, at least ``round_to``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import torch

from prunelab.errors import PrunelabError
from prunelab.models.registry import ArchSpec, WidthUnit, create, spec_from_units, width_units


def round_width(width: float, round_to: int = 1) -> int:
    """A channel count: ``width`` rounded half up to a multiple of ``round_to``, at least ``round_to``."""
    if round_to < 1:
        raise PrunelabError(f"channel rounding multiple must be >= 1, got {round_to}")
    if not math.isfinite(width / round_to):  # a multiplier of 1e308 times a width: no channel count
        raise PrunelabError(f"a scaled width of {width} channels is not a finite number; use a smaller multiplier")
    return max(round_to, int(math.floor(width / round_to + 0.5)) * round_to)


def units_of(spec: ArchSpec) -> list[WidthUnit]:
    """The width units of ``spec``'s model, read from a freshly built instance."""
    with torch.random.fork_rng(devices=[]):
        model = create(spec)
    return list(width_units(model, spec))


def with_unit_widths(spec: ArchSpec, widths: Mapping[str, int] | Sequence[int],
                     units: Sequence[WidthUnit] | None = None) -> ArchSpec:
    """``spec`` with the width of each unit set (by unit name, or in unit order).

    The widths are written into each unit's constructor keyword (and list index) by
    :func:`~prunelab.models.spec_from_units`.
    """
    units = list(units) if units is not None else units_of(spec)
    if isinstance(widths, Mapping):
        unknown = sorted(set(widths) - {u.name for u in units})
        if unknown:
            raise PrunelabError(f"unknown width unit(s) {unknown[:5]} for {spec.family}; "
                                f"valid: {', '.join(u.name for u in units[:8])}{' ...' if len(units) > 8 else ''}")
        new = {u.name: int(widths.get(u.name, u.width)) for u in units}
    else:
        if len(widths) != len(units):
            raise PrunelabError(f"{spec.family} has {len(units)} width units, got {len(widths)} widths")
        new = {u.name: int(w) for u, w in zip(units, widths)}
    bad = {n: w for n, w in new.items() if w < 1}
    if bad:
        raise PrunelabError(f"every width unit needs at least one channel; got {bad}")
    return spec_from_units(spec, [dataclasses.replace(u, width=new[u.name]) for u in units])


def scale_list(values: Sequence[float], mult: float, round_to: int = 1) -> list[int]:
    """Every width of ``values`` times ``mult``, rounded (:func:`round_width`)."""
    return [round_width(v * mult, round_to) for v in values]


def scale_units(spec: ArchSpec, mult: float, round_to: int = 1) -> ArchSpec:
    """Every width unit of ``spec`` times ``mult``, written back as explicit widths: the width rule of
    families whose units are all their widths (VGG ``cfg``, MobileNet-V1 ``widths``, the small
    MLP / CNNs), and everyone's bottleneck rule."""
    units = units_of(spec)
    return with_unit_widths(spec, [round_width(u.width * mult, round_to) for u in units], units)


def scale_explicit(spec: ArchSpec, new: ArchSpec, key: str, mult: float, round_to: int = 1) -> ArchSpec:
    """``new`` with ``spec``'s explicit width list ``key`` (absolute in the zoo's constructors, e.g.
    per-block ``block_widths``) scaled by ``mult`` too; unchanged when ``spec`` does not set it."""
    if spec.kwargs.get(key) is None:
        return new
    return new.with_kwargs(**{key: scale_list(spec.kwargs[key], mult, round_to)})
