"""Task kinds (method adapters) for studies.

Every module in this package is imported here, so a new adapter is one new file that calls
:func:`prunelab.study.tasks.register`. A module that fails to import does not take the others down:
its error is kept in ``IMPORT_ERRORS`` and shown when a study asks for one of its kinds.
"""

from __future__ import annotations

import importlib
import pkgutil

IMPORT_ERRORS: dict[str, str] = {}

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name.startswith("_"):
        continue
    try:
        importlib.import_module(f"{__name__}.{_info.name}")
    except ImportError as _exc:
        IMPORT_ERRORS[f"{__name__}.{_info.name}"] = f"{type(_exc).__name__}: {_exc}"
