"""Errors the user can fix.

Every problem caused by input (a name that does not exist, a width rule that fails, a corrupt file)
is raised as :class:`PrunelabError`. The command line prints its message as one line and exits with
status 2; the Python API lets it propagate. Messages name the problem and, where there is a finite
set of valid answers, list them.
"""

from __future__ import annotations

from collections.abc import Iterable


class PrunelabError(ValueError):
    """Bad input: the message is one line that says what is wrong and what would be valid."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


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
