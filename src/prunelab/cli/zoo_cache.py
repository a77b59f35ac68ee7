"""The zoo counts cache: ``zoo_counts.json`` beside this file, and whether it is current.

It holds every zoo model's listing row and ``info`` report, computed by
:func:`prunelab.cli.models.write_cache`; it is current when it was computed from the present sources (a
SHA-1 of the model families, the counting code and ``info``'s report).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

CACHE = Path(__file__).with_name("zoo_counts.json")
#: the sources (relative to the package) whose contents decide every cached number
CACHE_SOURCES = ("models", "measure/counting.py", "cli/info.py")


def sources_digest() -> str:
    """SHA-1 over the paths and contents of :data:`CACHE_SOURCES` (Python files only)."""
    root = Path(__file__).resolve().parents[1]
    files: list[Path] = []
    for name in CACHE_SOURCES:
        path = root / name
        files.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path])
    digest = hashlib.sha1()
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def cached_counts() -> dict[str, Any] | None:
    """The cache (``{"sources", "rows", "info"}``) if it matches the current sources, else None."""
    try:
        data = json.loads(CACHE.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("sources") != sources_digest():
        return None
    return data
