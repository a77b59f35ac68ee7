"""Unstructured pruning in one call: criterion x scope x (optional) Minimum Threshold.

=================  ===========  ==========  ===================================================
method             criterion    scope       paper
=================  ===========  ==========  ===================================================
``global``         magnitude    global      Global MP, Gupta et al. (2022), sec. 3
``uniform``        magnitude    uniform     uniform layer-wise MP, the contrast of sec. 3
``layerwise``      magnitude    given       layer-wise MP with per-layer sparsities
``random``         random       global      random baseline (Gupta et al.; ShrinkBench)
``random-uniform`` random       uniform     random baseline, same sparsity per layer
``snip``           SNIP |w*g|   global      Lee et al. (2019), at initialisation
=================  ===========  ==========  ===================================================

Global scope keeps exactly ``round((1 - s) * N)`` of the ``N`` selected weights (ties broken by
position). Uniform and given scopes keep ``round((1 - s_l) * n_l)`` in each layer. Minimum
Threshold (``mt`` weights per layer, or ``mt_percent`` of ``N``) applies to global scopes and
redistributes the per-layer counts as :func:`prunelab.prune.unstructured.allocation.minimum_threshold`
describes, then prunes each layer to its count by the same criterion.

Weights already pruned (mask False) rank below every surviving weight, so pruning again at a
higher sparsity only removes more (nested masks, as gradual and iterative schedules need) and
pruning again at the same sparsity changes nothing. Pruning again at a *lower* sparsity than the
model already has would revive pruned weights (as zeros that then train); by default they stay
pruned instead: the old mask is a constraint, the result is as sparse as it already was, and the
report warns how many weights the target would have revived (``details["kept_pruned"]``).
``allow_regrow=True`` (``--allow-regrow``) makes revival the explicit choice (``details["regrown"]``).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.prune.unstructured.allocation import (
    check_mt_feasible,
    check_sigma,
    check_sparsity,
    kept_count,
    minimum_threshold,
    sigma_from_percent,
)
from prunelab.prune.unstructured.masks import get_mask, set_mask
from prunelab.prune.unstructured.report import PruneReport, build_report
from prunelab.prune.unstructured.scores import criterion, score_buffer
from prunelab.prune.unstructured.selection import DEFAULT_SELECTION, LayerSelection, PrunableLayer, select_layers
from prunelab.prune.unstructured.topk import keep_largest, keep_largest_segments
from prunelab.schema import check_fields, option

#: method -> (criterion, scope)
METHODS: dict[str, tuple[str, str]] = {
    "global": ("magnitude", "global"),
    "uniform": ("magnitude", "uniform"),
    "layerwise": ("magnitude", "given"),
    "random": ("random", "global"),
    "random-uniform": ("random", "uniform"),
    "snip": ("snip", "global"),
}


@dataclass(frozen=True)
class PruneConfig:
    """Everything that decides a mask, except the weights and (for SNIP) the batch.

    ``sparsity``: target fraction of the selected weights removed, in [0, 1); for ``layerwise`` it
    is the sparsity of layers no ``layer_sparsity`` pattern names. ``layer_sparsity``: glob pattern
    on module path -> sparsity (the last matching pattern wins). ``mt``: Minimum Threshold as an
    absolute count of weights per layer; ``mt_percent``: the same as a percentage of all selected
    weights (the paper's convention). ``seed``: for the random criteria. ``allow_regrow``: let a
    target below the model's present sparsity revive already-pruned weights (default: they stay pruned).
    """

    method: str = option("global", "global magnitude (Global MP), uniform / layerwise magnitude, random (global "
                         "or uniform) or snip", choices=lambda: tuple(METHODS))
    sparsity: float = option(0.0, "fraction of the selected weights removed, in [0, 1)", kind=float, lo=0.0,
                             hi=1.0, hi_open=True, valid="in [0, 1) (fraction of weights removed)")
    layer_sparsity: Mapping[str, float] = field(default_factory=dict)
    mt: int | None = option(None, "Minimum Threshold: every layer keeps at least SIGMA weights (layers <= SIGMA "
                            "stay dense)", kind=int, lo=0, optional=True, metavar="SIGMA",
                            valid="a number of weights per layer >= 0")
    mt_percent: float | None = option(None, "Minimum Threshold as P percent of all selected weights (the paper's "
                                      "convention)", kind=float, lo=0.0, hi=100.0, hi_open=True, optional=True,
                                      metavar="P", valid="a percentage of all prunable weights in [0, 100)")
    selection: LayerSelection = DEFAULT_SELECTION
    seed: int = option(0, "seed of the random criteria", kind=int)
    allow_regrow: bool = option(False, "let a sparsity below the model's present one revive already-pruned "
                                "weights (default: they stay pruned, the sparsity stays where it was, and a "
                                "warning says how many)")

    def validate(self) -> PruneConfig:
        check_fields(self)
        for pattern, value in self.layer_sparsity.items():
            check_sparsity(value, f"sparsity of layer pattern {pattern!r}")
        if self.layer_sparsity and self.method != "layerwise":
            raise PrunelabError(f"per-layer sparsities need method 'layerwise', not {self.method!r}")
        if self.mt is not None and self.mt_percent is not None:
            raise PrunelabError("give the minimum threshold either as a count (mt) or as a percent, not both")
        if self.uses_mt and self.scope != "global":
            raise PrunelabError(f"minimum threshold applies to global methods (global, random, snip), "
                                f"not {self.method!r}")
        return self

    @property
    def criterion(self) -> str:
        return METHODS[self.method][0]

    @property
    def scope(self) -> str:
        return METHODS[self.method][1]

    @property
    def uses_mt(self) -> bool:
        return self.mt is not None or self.mt_percent is not None

    def sigma(self, total: int) -> int | None:
        """Absolute MT for ``total`` selected weights (None without MT)."""
        if self.mt is not None:
            return check_sigma(self.mt)
        if self.mt_percent is not None:
            return sigma_from_percent(total, self.mt_percent)
        return None

    def with_sparsity(self, sparsity: float) -> PruneConfig:
        return replace(self, sparsity=float(sparsity))

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "sparsity": self.sparsity,
            "layer_sparsity": dict(self.layer_sparsity),
            "mt": self.mt,
            "mt_percent": self.mt_percent,
            "selection": self.selection.to_dict(),
            "seed": self.seed,
            "allow_regrow": self.allow_regrow,
        }


def layer_sparsities(layers: list[PrunableLayer], default: float, patterns: Mapping[str, float]) -> list[float]:
    """Per-layer sparsity from glob patterns (last match wins) with ``default`` for the rest."""
    out = [float(default)] * len(layers)
    for pattern, value in patterns.items():
        hit = False
        for i, layer in enumerate(layers):
            if fnmatch.fnmatchcase(layer.name, pattern):
                out[i] = float(value)
                hit = True
        if not hit:
            shown = ", ".join(layer.name for layer in layers[:8]) + (", ..." if len(layers) > 8 else "")
            raise PrunelabError(f"layer sparsity pattern {pattern!r} matches no selected layer; layers are: {shown}")
    return out


def check_feasible(model: nn.Module, config: PruneConfig) -> list[PrunableLayer]:
    """Validate ``config`` against ``model`` without touching it: selection, patterns, and whether the
    target is reachable under Minimum Threshold. Returns the selected layers."""
    config.validate()
    layers = select_layers(model, config.selection)
    if config.method == "layerwise":
        layer_sparsities(layers, config.sparsity, config.layer_sparsity)
    sizes = [layer.numel for layer in layers]
    sigma = config.sigma(sum(sizes))
    if sigma is not None:
        check_mt_feasible(sizes, config.sparsity, sigma)
    return layers


def prune(model: nn.Module, config: PruneConfig, *, batch: tuple[torch.Tensor, torch.Tensor] | None = None,
          loss_fn: Callable | None = None, input_shape: tuple[int, ...] | None = None,
          warn: bool = True) -> PruneReport:
    """Prune ``model`` in place as ``config`` says; attach ``weight_mask`` buffers; return the report.

    ``batch`` (inputs, labels) is needed by SNIP. ``input_shape`` (without batch) adds MACs and the
    input-to-output path check to the report.
    """
    layers = check_feasible(model, config)
    sizes = [layer.numel for layer in layers]
    total = sum(sizes)
    sigma = config.sigma(total)
    before = [get_mask(layer.module) for layer in layers]
    pruned_before = sum(n - int(torch.count_nonzero(m)) for n, m in zip(sizes, before) if m is not None)
    score = criterion(config.criterion, seed=config.seed, model=model, layers=layers, batch=batch, loss_fn=loss_fn)
    with torch.no_grad():
        buf, offsets = score_buffer(layers, score)
        details: dict[str, Any] = {"criterion": config.criterion, "scope": config.scope}
        if config.scope == "global":
            keep_total = kept_count(total, config.sparsity)
            masks = keep_largest_segments(buf, keep_total, offsets)
            if sigma is not None:
                global_pruned = [n - int(torch.count_nonzero(m)) for n, m in zip(sizes, masks)]
                mt = minimum_threshold(sizes, global_pruned, sigma, total - keep_total, [x.name for x in layers])
                for i, (a, b) in enumerate(zip(offsets, offsets[1:])):
                    if mt.pruned[i] != global_pruned[i]:
                        masks[i] = keep_largest(buf[a:b], sizes[i] - mt.pruned[i])
                kept = [n - p for n, p in zip(sizes, mt.pruned)]
                details.update(sigma=sigma, mt_factor=float(mt.factor),
                               mt_dense=[layers[i].name for i in mt.dense],
                               mt_pinned=[layers[i].name for i in mt.pinned],
                               global_mp_kept=[n - p for n, p in zip(sizes, global_pruned)])
            else:
                kept = None
            target = config.sparsity
        else:
            per_layer = ([config.sparsity] * len(layers) if config.scope == "uniform"
                         else layer_sparsities(layers, config.sparsity, config.layer_sparsity))
            kept = [kept_count(n, s) for n, s in zip(sizes, per_layer)]
            masks = [keep_largest(buf[a:b], k) for a, b, k in zip(offsets, offsets[1:], kept)]
            target = 1.0 - sum(kept) / total
            if config.scope == "given":
                details["layer_sparsity"] = {x.name: s for x, s in zip(layers, per_layer)}
        del buf
        if pruned_before:
            masks, revived = _constrain(masks, before, config.allow_regrow)
            details["pruned_before"] = pruned_before
            details["regrown" if config.allow_regrow else "kept_pruned"] = revived
            if revived and not config.allow_regrow:
                kept = None  # fewer kept than allocated: the report counts the masks
        for layer, mask in zip(layers, masks):
            set_mask(layer.module, mask, copy=False)
    known = None if kept is None else {x.name: k for x, k in zip(layers, kept)}
    return build_report(model, layers, method=config.method, target_sparsity=target, input_shape=input_shape,
                        sigma=sigma, details=details, warn=warn, kept=known)


def _constrain(masks: list[torch.Tensor], before: list[torch.Tensor | None],
               allow_regrow: bool) -> tuple[list[torch.Tensor], int]:
    """The new masks, with every weight pruned ``before`` kept pruned unless ``allow_regrow``; and the
    number of weights the new masks revive (or would have revived)."""
    out, revived = [], 0
    for mask, old in zip(masks, before):
        if old is not None:
            old = old.reshape(-1)
            revived += int(torch.count_nonzero(mask & ~old))
            if not allow_regrow:
                mask = mask & old
        out.append(mask)
    return out, revived


def prune_global(model: nn.Module, sparsity: float, *, mt: int | None = None, mt_percent: float | None = None,
                 selection: LayerSelection | None = None, input_shape: tuple[int, ...] | None = None,
                 allow_regrow: bool = False) -> PruneReport:
    """Global Magnitude Pruning (Gupta et al. 2022): one magnitude threshold across all selected
    weights, optionally with Minimum Threshold ``mt`` (count) or ``mt_percent`` (% of weights)."""
    cfg = PruneConfig("global", sparsity, mt=mt, mt_percent=mt_percent, selection=selection or DEFAULT_SELECTION,
                      allow_regrow=allow_regrow)
    return prune(model, cfg, input_shape=input_shape)


def prune_uniform(model: nn.Module, sparsity: float, *, selection: LayerSelection | None = None,
                  input_shape: tuple[int, ...] | None = None, allow_regrow: bool = False) -> PruneReport:
    """Layer-wise magnitude pruning with the same sparsity in every selected layer."""
    return prune(model, PruneConfig("uniform", sparsity, selection=selection or DEFAULT_SELECTION,
                                    allow_regrow=allow_regrow), input_shape=input_shape)


def prune_layerwise(model: nn.Module, layer_sparsity: Mapping[str, float], *, default: float = 0.0,
                    selection: LayerSelection | None = None, input_shape: tuple[int, ...] | None = None,
                    allow_regrow: bool = False) -> PruneReport:
    """Layer-wise magnitude pruning with given sparsities (glob pattern -> sparsity; others ``default``)."""
    cfg = PruneConfig("layerwise", default, layer_sparsity=dict(layer_sparsity),
                      selection=selection or DEFAULT_SELECTION, allow_regrow=allow_regrow)
    return prune(model, cfg, input_shape=input_shape)


def prune_random(model: nn.Module, sparsity: float, *, uniform: bool = False, seed: int = 0,
                 mt: int | None = None, mt_percent: float | None = None, selection: LayerSelection | None = None,
                 input_shape: tuple[int, ...] | None = None, allow_regrow: bool = False) -> PruneReport:
    """Random pruning baseline: global (one random ranking) or uniform (same sparsity per layer)."""
    cfg = PruneConfig("random-uniform" if uniform else "random", sparsity, mt=mt, mt_percent=mt_percent,
                      selection=selection or DEFAULT_SELECTION, seed=seed, allow_regrow=allow_regrow)
    return prune(model, cfg, input_shape=input_shape)


def prune_snip(model: nn.Module, sparsity: float, batch: tuple[torch.Tensor, torch.Tensor], *,
               loss_fn: Callable | None = None, mt: int | None = None, mt_percent: float | None = None,
               selection: LayerSelection | None = None, input_shape: tuple[int, ...] | None = None,
               allow_regrow: bool = False) -> PruneReport:
    """SNIP (Lee et al. 2019): keep the weights with the largest ``|w * dL/dw|`` on ``batch``."""
    cfg = PruneConfig("snip", sparsity, mt=mt, mt_percent=mt_percent, selection=selection or DEFAULT_SELECTION,
                      allow_regrow=allow_regrow)
    return prune(model, cfg, batch=batch, loss_fn=loss_fn, input_shape=input_shape)
