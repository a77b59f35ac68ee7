"""The built-in channel criteria, one module each (see :mod:`prunelab.prune.structured.criterion`).

Every module in this package is imported here and registers its criteria, so a new criterion is
one new file holding a :class:`~prunelab.prune.structured.criterion.Criterion` subclass decorated
with :func:`~prunelab.prune.structured.criterion.register_criterion`. Modules load in name order;
``criterion_names()`` lists the criteria in that order.
"""

from __future__ import annotations

from prunelab.autoload import import_modules

import_modules(__name__, __path__)
