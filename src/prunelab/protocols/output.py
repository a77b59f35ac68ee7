"""Writing a protocol's results: a prunelab checkpoint per trained model and one JSON summary.

Everything goes through :mod:`prunelab.io`'s atomic writes, and callers write only after every
check and every search has passed, so bad input leaves nothing behind.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from prunelab.io import atomic_write_json, save_checkpoint
from prunelab.models import ArchSpec


def save_trained(path: str | os.PathLike, spec: ArchSpec, model: nn.Module, *, plan: dict | None = None,
                 meta: dict[str, Any] | None = None) -> Path:
    """Checkpoint of a trained protocol model: its spec (the base spec when ``plan`` compresses it),
    plan, weights and metadata (which protocol, the dense reference, the summary)."""
    return save_checkpoint(path, arch=spec.to_dict(), state_dict=model.state_dict(), plan=plan, meta=meta or {})


def write_summary(path: str | os.PathLike, summary: dict[str, Any]) -> Path:
    return atomic_write_json(path, summary)
