"""The model zoo: plain ``nn.Module`` families built from explicit width specs, and a registry.

Each family lives in its own module, which registers its constructor, its hooks and its named
models with :func:`register_family` / :func:`register_model` when imported (the registry imports no
family). Every module of this package is imported here, so a new family is one new file; a user's
own family is registered the same way from any module (a study's ``plugins:``).
"""

from prunelab.autoload import import_modules
from prunelab.models.registry import (
    ArchSpec,
    ModelEntry,
    WidthUnit,
    create,
    fit_spec,
    get_entry,
    get_family,
    input_shape_of,
    input_spec_of,
    list_families,
    list_models,
    register_family,
    register_model,
    resolve,
    spec_from_units,
    width_units,
)

import_modules(__name__, __path__)

__all__ = [
    "ArchSpec",
    "ModelEntry",
    "WidthUnit",
    "create",
    "fit_spec",
    "get_entry",
    "get_family",
    "input_shape_of",
    "input_spec_of",
    "list_families",
    "list_models",
    "register_family",
    "register_model",
    "resolve",
    "spec_from_units",
    "width_units",
]
