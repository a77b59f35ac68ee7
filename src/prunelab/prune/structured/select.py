"""Global channel selection: which live channels go next.

Scores are compared across all groups with no per-layer normalisation (Crowley et al. 2018: one
global argmin every K steps). Channels already pruned are out of the ranking (score +inf in the
reference code). A group keeps at least one channel unless it may vanish (its block then reduces to
its shortcut, see :class:`~prunelab.prune.structured.groups.ChannelGroup`).

With ``round_to = r`` (hardware-friendly widths, Torch-Pruning's ``round_to``) widths stay multiples
of r: a group loses its r weakest live channels at once (first just enough to reach a multiple),
the unit's score being the sum of its channels' scores (the loss-increase estimates add up), and a
group that may not vanish keeps at least r channels.

*Uniform* pruning (``ties``, :func:`uniform_ties`) ranks a set of groups as one: every layer loses its
weakest head (or MLP unit) together, so all layers keep the same widths, as a Hugging Face config
requires.
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
                  round_to: int | None = None, floors: dict[str, int] | None = None,
                  ties: list[list[str]] | None = None) -> Iterator[list[tuple[str, int]]]:
    """Yield removal units (lists of (group, channel)) in increasing score order, as long as any group
    can still lose channels. Scores are read once (static ranking). ``floors``: the fewest channels
    each group keeps (``--min-channels``). ``ties``: sets of groups that keep equal widths (see
    :func:`uniform_ties`): a unit of a set takes the weakest live channel(s) of every member at once,
    its score the sum of theirs; groups in no set are ranked alone."""
    heap: list[tuple[float, int, int]] = []
    sets = _tie_sets(groups, ties)
    state: list[tuple[list[tuple[str, list[int], torch.Tensor]], int]] = []
    tie = 0
    r = round_to or 1
    for members in sets:
        lives = []
        floor = 0
        for g in members:
            live = torch.nonzero(alive[g.name]).flatten().tolist()
            s = scores[g.name].double()
            live.sort(key=lambda c, s=s: (float(s[c]), c))
            floor = max(floor, _min_width(g.vanishable, round_to, len(live)), (floors or {}).get(g.name, 0))
            lives.append((g.name, live, s))
        state.append((lives, floor))
        score = _set_score(lives, floor, r)
        if score is not None:
            heapq.heappush(heap, (score, tie, len(state) - 1))
            tie += 1
    while heap:
        _, _, i = heapq.heappop(heap)
        lives, floor = state[i]
        unit = []
        for name, live, _ in lives:
            part = _next_unit(live, floor, r)
            del live[:len(part)]
            unit.extend((name, c) for c in part)
        yield unit
        score = _set_score(lives, floor, r)
        if score is not None:
            heapq.heappush(heap, (score, tie, i))
            tie += 1


def _tie_sets(groups: GroupSet, ties: list[list[str]] | None) -> list[list]:
    """Every group once, in group order: each tie set where its first member stands, the others alone."""
    by_name = {g.name: g for g in groups}
    set_of: dict[str, int] = {}
    for i, names in enumerate(ties or ()):
        for n in names:
            if n in by_name:
                set_of[n] = i
    sets: list[list] = []
    placed: set[int] = set()
    for g in groups:
        i = set_of.get(g.name)
        if i is None:
            sets.append([g])
        elif i not in placed:
            placed.add(i)
            sets.append([by_name[n] for n in ties[i] if n in by_name])
    return sets


def _set_score(lives, floor: int, r: int) -> float | None:
    """The summed score of a set's next unit; None when any member cannot lose that many channels
    (tied members have equal live counts, so all or none can)."""
    total = 0.0
    sizes = set()
    for _, live, s in lives:
        part = _next_unit(live, floor, r)
        if not part:
            return None
        sizes.add(len(part))
        total += sum(float(s[c]) for c in part)
    return total if len(sizes) == 1 else None


def uniform_ties(groups: GroupSet) -> list[list[str]]:
    """The tie sets of ``uniform`` pruning: every transformer layer's heads group with the others of
    its width and head geometry, every MLP group with the others of its width (so each layer keeps
    the same number of heads and the same MLP width, which one Hugging Face config can describe;
    Torch-Pruning's ``global_pruning=False`` likewise gives every layer the same ratio). Channel
    groups are not tied."""
    sets: dict[tuple, list[str]] = {}
    for g in groups:
        if g.kind in ("heads", "mlp"):
            unit = g.structure
            geometry = (getattr(unit, "group_size", None), getattr(unit, "head_dim", None))
            sets.setdefault((g.kind, g.width, geometry), []).append(g.name)
    return [names for names in sets.values() if len(names) > 1]


def _next_unit(live: list[int], floor: int, r: int) -> list[int]:
    n = len(live)
    if n <= floor:
        return []
    size = n % r or r
    if n - size < floor:
        return []
    return live[:size]


def select(scores: dict[str, torch.Tensor], alive: dict[str, torch.Tensor], groups: GroupSet, n: int,
           round_to: int | None = None, floors: dict[str, int] | None = None,
           ties: list[list[str]] | None = None) -> list[tuple[str, int]]:
    """The ``n`` (or, with ``round_to``, at least ``n``) lowest-scoring live channels that may go."""
    chosen: list[tuple[str, int]] = []
    for unit in removal_order(scores, alive, groups, round_to, floors, ties):
        if len(chosen) >= n:
            break
        chosen.extend(unit)
    return chosen
