"""Registries filled by their extensions: every module of a package imported, so each registers what
it defines (timm's ``@register_model`` shape: the registry imports no entry, the package imports all).

The model families, the datasets, the structured criteria and the study kinds are loaded this way, so
a new one is one new file in its package.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable


def import_modules(package: str, path: Iterable[str], errors: dict[str, str] | None = None) -> None:
    """Import every module of ``package`` (its ``__name__`` and ``__path__``) in name order, leaving out
    ``_private`` ones. With ``errors``, a module that fails to import does not take the others down: its
    ``ImportError`` is kept there, one line under the module's name; without, it is raised."""
    for info in sorted(pkgutil.iter_modules(list(path)), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        name = f"{package}.{info.name}"
        if errors is None:
            importlib.import_module(name)
            continue
        try:
            importlib.import_module(name)
        except ImportError as exc:
            errors[name] = f"{type(exc).__name__}: {exc}"
