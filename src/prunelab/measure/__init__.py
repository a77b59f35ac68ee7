"""Measuring models: parameter and MAC counts (dense and sparse-aware), with stated conventions."""

from prunelab.measure.counting import (
    LayerStats,
    MacCheck,
    MacCountWarning,
    ParamCounts,
    check_macs,
    count_macs,
    count_params,
    layer_table,
    warn_if_miscounted,
)

__all__ = ["LayerStats", "MacCheck", "MacCountWarning", "ParamCounts", "check_macs", "count_macs", "count_params",
           "layer_table", "warn_if_miscounted"]
