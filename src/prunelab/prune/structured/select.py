"""Global channel selection: which live channels go next.

Scores are compared across all groups with no per-layer normalisation (Crowley et al. 2018: one
global argmin every K steps). Channels already pruned are out of the ranking (score +inf in the
reference code). A group keeps at least one channel unless it may vanish (its block then reduces to
its shortcut, see :class:`~prunelab.prune.structured.groups.ChannelGroup`).

With ``round_to = r`` (hardware-friendly widths, Torch-Pruning's ``round_to``) widths stay multiples
of r: a group loses its r weakest live channels at once (first just enough to reach a multiple),
the unit's score being the sum of its channels' scores (the loss-increase estimates add up), and a
group that may not vanish keeps at least r channels.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

import torch

from prunelab.prune.structured.groups import GroupSet


def _min_width(vanishable: bool, round_to: int | None, width: int) -> int:
    if vanishable:
        return 0
    return min(width, round_to or 1)


def removal_order(scores: dict[str, torch.Tensor], alive: dict[str, torch.Tensor], groups: GroupSet,
                  round_to: int | None = None,
                  floors: dict[str, int] | None = None) -> Iterator[list[tuple[str, int]]]:
    """Yield removal units (lists of (group, channel)) in increasing score order, as long as any group
    can still lose channels. Scores are read once (static ranking). ``floors``: the fewest channels
    each group keeps (``--min-channels``)."""
    heap: list[tuple[float, int, str, list[int]]] = []
    state: dict[str, tuple[list[int], int]] = {}
    tie = 0
    r = round_to or 1
    for g in groups:
        live = torch.nonzero(alive[g.name]).flatten().tolist()
        s = scores[g.name].double()
        live.sort(key=lambda c: (float(s[c]), c))
        floor = max(_min_width(g.vanishable, round_to, len(live)), (floors or {}).get(g.name, 0))
        state[g.name] = (live, floor)
        unit = _next_unit(live, floor, r)
        if unit:
            heapq.heappush(heap, (float(sum(float(s[c]) for c in unit)), tie, g.name, unit))
            tie += 1
    while heap:
        _, _, name, unit = heapq.heappop(heap)
        live, floor = state[name]
        del live[:len(unit)]
        yield [(name, c) for c in unit]
        nxt = _next_unit(live, floor, r)
        if nxt:
            s = scores[name].double()
            heapq.heappush(heap, (float(sum(float(s[c]) for c in nxt)), tie, name, nxt))
            tie += 1


def _next_unit(live: list[int], floor: int, r: int) -> list[int]:
    n = len(live)
    if n <= floor:
        return []
    size = n % r or r
    if n - size < floor:
        return []
    return live[:size]


def select(scores: dict[str, torch.Tensor], alive: dict[str, torch.Tensor], groups: GroupSet, n: int,
           round_to: int | None = None, floors: dict[str, int] | None = None) -> list[tuple[str, int]]:
    """The ``n`` (or, with ``round_to``, at least ``n``) lowest-scoring live channels that may go."""
    chosen: list[tuple[str, int]] = []
    for unit in removal_order(scores, alive, groups, round_to, floors):
        if len(chosen) >= n:
            break
        chosen.extend(unit)
    return chosen
