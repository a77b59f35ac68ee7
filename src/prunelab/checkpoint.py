"""Rebuild a model from a prunelab checkpoint without unpickling any module.

A checkpoint (see :func:`prunelab.io.save_checkpoint`) holds an architecture spec, an optional
structured plan (kept channel indices per group), a plain state_dict (unstructured masks are
``<param>_mask`` buffers inside it) and metadata. Loading builds the base model from its
constructor, applies the plan, attaches masks, then loads the weights.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from prunelab.errors import PrunelabError
from prunelab.io import load_checkpoint
from prunelab.models import ArchSpec, create


@dataclass
class LoadedModel:
    model: nn.Module
    spec: ArchSpec
    plan: dict | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def load_model(path: str | os.PathLike) -> LoadedModel:
    """Load a checkpoint written by prunelab into a ready-to-use ``nn.Module`` (eval mode)."""
    ckpt = load_checkpoint(path)
    spec = ArchSpec.from_dict(ckpt["arch"])
    model = create(spec)
    plan = ckpt.get("plan")
    if plan:
        from prunelab.prune.structured.plan import apply_plan

        model = apply_plan(model, plan)
    state = ckpt["state_dict"]
    from prunelab.prune.unstructured.masks import attach_masks_from_state_dict, carries_masks

    if carries_masks(state):
        attach_masks_from_state_dict(model, state)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise PrunelabError(f"checkpoint {path} does not fit architecture {spec.family}: {detail}") from exc
    model.eval()
    return LoadedModel(model, spec, plan, dict(ckpt.get("meta") or {}))


def is_checkpoint_path(name_or_path: str) -> bool:
    """Whether a MODEL argument names a checkpoint file rather than a zoo model."""
    return os.path.sep in name_or_path or name_or_path.endswith((".pt", ".pth")) or os.path.isfile(name_or_path)


def model_or_checkpoint(name_or_path: str, **overrides: Any) -> LoadedModel:
    """A zoo name (fresh model) or a checkpoint path: what most sub-commands accept as MODEL."""
    if is_checkpoint_path(name_or_path):
        return load_model(name_or_path)
    from prunelab.models import resolve

    spec = resolve(name_or_path, **overrides)
    return LoadedModel(create(spec), spec)
