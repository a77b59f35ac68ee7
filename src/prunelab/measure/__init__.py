"""Measuring models: parameter and MAC counts (dense and sparse-aware), with stated conventions."""

from prunelab.measure.counting import LayerStats, ParamCounts, count_macs, count_params, layer_table

__all__ = ["LayerStats", "ParamCounts", "count_macs", "count_params", "layer_table"]
