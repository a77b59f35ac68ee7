"""Task kinds (method adapters) for studies.

Every module in this package is imported here, so a new adapter is one new file that calls
:func:`prunelab.study.tasks.register`. A module that fails to import does not take the others down:
its error is kept in ``IMPORT_ERRORS`` and shown when a study asks for one of its kinds.
"""

from __future__ import annotations

from prunelab.autoload import import_modules

IMPORT_ERRORS: dict[str, str] = {}

import_modules(__name__, __path__, IMPORT_ERRORS)
