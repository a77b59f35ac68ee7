"""Errors the user can fix.

Every problem caused by input (a name that does not exist, a width rule that fails, a corrupt file)
is raised as :class:`PrunelabError`. The command line prints its message as one line and exits with
status 2; the Python API lets it propagate. Messages name the problem and, where there is a finite
set of valid answers, list them.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from types import ModuleType


class PrunelabError(ValueError):
    """Bad input: the message is one line that says what is wrong and what would be valid."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class MissingExtra(PrunelabError):
    """An optional dependency is not installed: the message names the extra that installs it."""


def require(module: str, what: str, extra: str, package: str | None = None) -> ModuleType:
    """Import ``module`` for ``what``, or raise :class:`MissingExtra`, one line naming the extra:
    ``digits needs scikit-learn: pip install 'prunelab[data]'``. The core install (torch, NumPy,
    PyYAML, tqdm, torch-pruning) prunes, trains and counts; everything else is an extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        name = package or module.split(".")[0]
        raise MissingExtra(f"{what} needs {name}: pip install 'prunelab[{extra}]'") from None


class PrunelabWarning(UserWarning):
    """Something in the input the user should know about that does not stop the work (NaN weights in a
    checkpoint, a target not reached). The command line prints it as one ``warning:`` line."""


def unknown_choice(kind: str, name: object, valid: Iterable[object]) -> PrunelabError:
    """Build the standard error for a name that is not one of ``valid``."""
    choices = ", ".join(str(v) for v in sorted(valid, key=str))
    return PrunelabError(f"unknown {kind} {name!r}; valid choices: {choices}")


def check_choice(kind: str, name: str, valid: Iterable[str]) -> str:
    """Return ``name`` if it is one of ``valid``, else raise :func:`unknown_choice`."""
    valid = list(valid)
    if name not in valid:
        raise unknown_choice(kind, name, valid)
    return name
