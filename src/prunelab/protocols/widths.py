"""Reading and writing the widths of a zoo architecture's width units.

A :class:`~prunelab.models.WidthUnit` names the constructor keyword (and list index) that sets its
width, so "this architecture with these unit widths" is always a new :class:`ArchSpec`, never a
modified module: reduced networks, copied profiles and Pruning from Scratch all produce specs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import torch

from prunelab.errors import PrunelabError
from prunelab.models import ArchSpec, WidthUnit, create, spec_from_units, width_units


def units_of(spec: ArchSpec) -> list[WidthUnit]:
    """The width units of ``spec``'s model, read from a freshly built instance."""
    with torch.random.fork_rng(devices=[]):
        model = create(spec)
    return list(width_units(model, spec))


def with_unit_widths(spec: ArchSpec, widths: Mapping[str, int] | Sequence[int],
                     units: Sequence[WidthUnit] | None = None) -> ArchSpec:
    """``spec`` with the width of each unit set (by unit name, or in unit order).

    The widths are written into each unit's constructor keyword (and list index) by the zoo's
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
