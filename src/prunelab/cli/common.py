"""Argument helpers shared by several sub-commands."""

from __future__ import annotations

import json
import sys
from typing import Any

from prunelab.errors import PrunelabError


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    """Parse ``3x32x32`` or ``3,32,32`` into a shape tuple."""
    if text is None:
        return None
    try:
        dims = tuple(int(t) for t in text.replace("x", ",").split(",") if t.strip())
    except ValueError:
        raise PrunelabError(f"input size {text!r} must look like 3x32x32") from None
    if not dims or any(d < 1 for d in dims):
        raise PrunelabError(f"input size {text!r} must be positive integers like 3x32x32")
    return dims


def emit_json(obj: Any) -> None:
    """Print ``obj`` as JSON on stdout."""
    from prunelab.io import _json_default

    json.dump(obj, sys.stdout, indent=2, default=_json_default)
    sys.stdout.write("\n")
