"""Rank (column) pruning of low-rank factorised layers, as Gupta et al. (2022, sec. 4, HAR-2) do for
FastGRNN.

A low-rank matrix ``W = W1 W2`` (EdgeML: ``W1`` is ``[in, r]``, ``W2`` is ``[r, out]``) is held here as two
bias-free ``nn.Linear`` modules applied in sequence, ``first = Linear(in, r)`` and ``second =
Linear(r, out)``. Rank component ``j`` is column ``j`` of EdgeML's ``W1``, i.e. row ``j`` of
``first.weight`` and column ``j`` of ``second.weight``. The paper ranks the columns of the factors by
their absolute sum and removes the lowest ones (``9 - r_W`` of them for ``W``, ``80 - r_U`` for ``U``),
then fine-tunes with the masks re-applied. Here the removal is global magnitude over all factor pairs'
columns (exact count, ties to the earlier column), or given target ranks per pair; a removed component
masks its row of ``first`` and its column of ``second`` with the usual ``weight_mask`` buffers, so
the trainer keeps it removed during fine-tuning (:mod:`prunelab.train.masks`).

Pairs are found by tracing: a bias-free Linear whose input is the output tensor of another bias-free
Linear (two linear maps with nothing in between are one factorised matrix, full rank or not); pass
``pairs`` to name them yourself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.models.inputs import as_input_spec, call_model
from prunelab.prune.unstructured.allocation import check_sparsity, kept_count
from prunelab.prune.unstructured.masks import get_mask, set_mask
from prunelab.prune.unstructured.report import PruneReport, build_report
from prunelab.prune.unstructured.selection import PrunableLayer
from prunelab.prune.unstructured.topk import keep_largest


@dataclass(frozen=True)
class LowRankPair:
    """Two bias-free Linear modules applied in sequence: ``second(first(x))``."""

    first_name: str
    first: nn.Linear
    second_name: str
    second: nn.Linear

    @property
    def rank(self) -> int:
        return self.first.out_features

    def kept_components(self) -> torch.Tensor:
        """Boolean vector over rank components still alive (a row of ``first`` with any kept weight)."""
        mask = get_mask(self.first)
        if mask is None:
            return torch.ones(self.rank, dtype=torch.bool, device=self.first.weight.device)
        return mask.any(dim=1)

    def column_scores(self) -> torch.Tensor:
        """Absolute sum of each rank component's column of EdgeML's ``W1`` (``first.weight`` row);
        components already removed score ``-inf``."""
        s = self.first.weight.detach().abs().sum(dim=1).float()
        return s.masked_fill(~self.kept_components(), float("-inf"))


def _bias_free_linear(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear) and m.bias is None


def find_lowrank_pairs(model: nn.Module, input_shape: Sequence[int]) -> list[LowRankPair]:
    """Trace one forward pass (batch 2) and return every bias-free Linear fed directly by another
    bias-free Linear, as ``(first, second)`` pairs in module order."""
    names = {m: n for n, m in model.named_modules() if _bias_free_linear(m)}
    produced: dict[int, tuple[nn.Module, torch.Tensor]] = {}  # the tensor is held so its id is not reused
    found: dict[tuple[str, str], LowRankPair] = {}
    handles = []

    def post(module, _inp, out):
        produced[id(out)] = (module, out)

    def pre(module, inp):
        hit = produced.get(id(inp[0])) if inp else None
        if hit is not None and hit[1] is inp[0] and hit[0] is not module:
            first, second = hit[0], module
            key = (names[first], names[second])
            found.setdefault(key, LowRankPair(key[0], first, key[1], second))

    for m in names:
        handles.append(m.register_forward_hook(post))
        handles.append(m.register_forward_pre_hook(pre))
    param = next(model.parameters())
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            call_model(model, as_input_spec(input_shape).example(2, device=param.device, dtype=param.dtype,
                                                                 zeros=True))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return sorted(found.values(), key=lambda p: list(names.values()).index(p.first_name))


def prune_lowrank_columns(model: nn.Module, *, sparsity: float | None = None, ranks: Mapping[str, int] | None = None,
                          pairs: Sequence[LowRankPair] | None = None, input_shape: Sequence[int] | None = None,
                          warn: bool = True) -> PruneReport:
    """Remove rank components of low-rank factor pairs; returns the report.

    ``sparsity``: fraction of all rank components (over all pairs) removed by global magnitude of the
    absolute column sums, exactly ``round((1 - s) * R)`` kept, at least one per pair. ``ranks``: target
    rank per pair (>= 1), keyed by the first factor's module path (the paper's (r_W, r_U) settings),
    the lowest columns removed.
    ``pairs`` defaults to :func:`find_lowrank_pairs` (needs ``input_shape``).
    """
    if (sparsity is None) == (ranks is None):
        raise PrunelabError("give either a column sparsity or target ranks for low-rank pruning")
    if pairs is None:
        if input_shape is None:
            raise PrunelabError("finding low-rank factor pairs needs the input shape")
        pairs = find_lowrank_pairs(model, input_shape)
    if not pairs:
        raise PrunelabError(f"model {type(model).__name__} has no low-rank factor pair (two bias-free Linear in a row)")
    with torch.no_grad():
        keeps: list[torch.Tensor]
        if sparsity is not None:
            check_sparsity(sparsity, "column sparsity (fraction of rank columns removed)")
            scores = torch.cat([p.column_scores().cpu() for p in pairs])
            total = scores.numel()
            keep = kept_count(total, sparsity)
            if keep < len(pairs):
                raise PrunelabError(f"column sparsity {sparsity} keeps {keep} of {total} rank columns, fewer than one "
                                    f"per low-rank factor pair ({len(pairs)})")
            # Every pair keeps its strongest column (a rank-0 factor would cut the input off, the
            # layer collapse a Minimum Threshold prevents); the rest are ranked globally.
            reserved = torch.zeros(total, dtype=torch.bool)
            start = 0
            for p in pairs:
                reserved[start + int(scores[start:start + p.rank].argmax())] = True
                start += p.rank
            rest = scores.clone()
            rest[reserved] = -math.inf
            flat = reserved | keep_largest(rest, keep - len(pairs))
            keeps, start = [], 0
            for p in pairs:
                keeps.append(flat[start:start + p.rank])
                start += p.rank
            target = float(sparsity)
        else:
            by_name = {p.first_name: p for p in pairs}
            unknown = sorted(set(ranks) - set(by_name))
            if unknown:
                raise PrunelabError(f"unknown low-rank factor(s) {unknown}; valid: {', '.join(by_name)}")
            keeps = []
            for p in pairs:
                r = int(ranks.get(p.first_name, p.rank))
                if not 1 <= r <= p.rank:
                    raise PrunelabError(f"target rank for {p.first_name} must be in [1, {p.rank}], got {r}")
                keeps.append(keep_largest(p.column_scores().cpu(), r))
            total = sum(p.rank for p in pairs)
            target = 1.0 - sum(int(k.sum()) for k in keeps) / total
        details = {"criterion": "column-l1", "scope": "global" if sparsity is not None else "given", "ranks": {}}
        for p, keep in zip(pairs, keeps):
            keep = keep.to(p.first.weight.device)
            first_mask = keep.view(-1, 1).expand_as(p.first.weight)
            second_mask = keep.view(1, -1).expand_as(p.second.weight)
            old = get_mask(p.first)
            if old is not None:
                first_mask = first_mask & old
            old2 = get_mask(p.second)
            if old2 is not None:
                second_mask = second_mask & old2
            set_mask(p.first, first_mask)
            set_mask(p.second, second_mask)
            details["ranks"][p.first_name] = {"second": p.second_name, "rank": p.rank, "kept": int(keep.sum())}
    named = {n: m for p in pairs for n, m in ((p.first_name, p.first), (p.second_name, p.second))}
    layers = [PrunableLayer(n, m) for n, m in named.items()]
    report = build_report(model, layers, method="lowrank-columns", target_sparsity=target,
                          input_shape=input_shape or None, details=details, warn=warn)
    report.details["components_total"] = total
    report.details["components_kept"] = sum(d["kept"] for d in details["ranks"].values())
    return report
