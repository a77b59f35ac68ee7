"""The model zoo: plain ``nn.Module`` families built from explicit width specs, and a registry."""

from prunelab.models.registry import (
    ArchSpec,
    ModelEntry,
    WidthUnit,
    create,
    fit_spec,
    get_entry,
    get_family,
    input_shape_of,
    list_families,
    list_models,
    register_family,
    register_model,
    resolve,
    spec_from_units,
    width_units,
)

__all__ = [
    "ArchSpec",
    "ModelEntry",
    "WidthUnit",
    "create",
    "fit_spec",
    "get_entry",
    "get_family",
    "input_shape_of",
    "list_families",
    "list_models",
    "register_family",
    "register_model",
    "resolve",
    "spec_from_units",
    "width_units",
]
