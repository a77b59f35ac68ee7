"""Unstructured (weight-level) pruning: Global Magnitude Pruning with Minimum Threshold (Gupta et
al. 2022), layer-wise and uniform magnitude, random and SNIP baselines, one-shot / gradual /
iterative schedules, low-rank column pruning for FastGRNN, and layer-collapse diagnostics.

Three lines of Python::

    from prunelab.prune.unstructured import prune_global
    report = prune_global(model, 0.9, mt_percent=0.05, input_shape=(3, 32, 32))
    print(report.format_table())
"""

from prunelab.prune.unstructured.allocation import (
    check_mt_feasible,
    kept_count,
    minimum_threshold,
    sigma_from_percent,
)
from prunelab.prune.unstructured.lowrank import LowRankPair, find_lowrank_pairs, prune_lowrank_columns
from prunelab.prune.unstructured.masks import (
    MaskCallback,
    apply_masks_,
    attach_masks_from_state_dict,
    get_mask,
    mask_counts,
    set_mask,
    strip,
)
from prunelab.prune.unstructured.pruner import (
    METHODS,
    PruneConfig,
    check_feasible,
    prune,
    prune_global,
    prune_layerwise,
    prune_random,
    prune_snip,
    prune_uniform,
)
from prunelab.prune.unstructured.report import (
    LayerCollapseWarning,
    LayerReport,
    PruneReport,
    RegrowWarning,
    outputs_connected,
)
from prunelab.prune.unstructured.schedules import (
    GradualPruning,
    GradualSchedule,
    WeightSnapshot,
    cubic_sparsity,
    iterative_sparsities,
    prune_iterative,
)
from prunelab.prune.unstructured.selection import LayerSelection, PrunableLayer, select_layers

__all__ = [
    "METHODS",
    "GradualPruning",
    "GradualSchedule",
    "LayerCollapseWarning",
    "LayerReport",
    "LayerSelection",
    "LowRankPair",
    "MaskCallback",
    "WeightSnapshot",
    "PrunableLayer",
    "PruneConfig",
    "PruneReport",
    "RegrowWarning",
    "apply_masks_",
    "attach_masks_from_state_dict",
    "check_feasible",
    "check_mt_feasible",
    "cubic_sparsity",
    "find_lowrank_pairs",
    "get_mask",
    "iterative_sparsities",
    "kept_count",
    "mask_counts",
    "minimum_threshold",
    "outputs_connected",
    "prune",
    "prune_global",
    "prune_iterative",
    "prune_layerwise",
    "prune_lowrank_columns",
    "prune_random",
    "prune_snip",
    "prune_uniform",
    "select_layers",
    "set_mask",
    "sigma_from_percent",
    "strip",
]
