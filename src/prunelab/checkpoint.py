"""Rebuild a model from a prunelab checkpoint without unpickling any module.

A checkpoint (see :func:`prunelab.io.save_checkpoint`) holds an architecture spec, an optional
structured plan (kept channel indices per group), a plain state_dict (unstructured masks are
``<param>_mask`` buffers inside it) and metadata. Loading builds the base model from its
constructor, applies the plan, attaches masks, then loads the weights.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from prunelab.errors import PrunelabError, PrunelabWarning
from prunelab.io import load_checkpoint
from prunelab.models import ArchSpec, create
from prunelab.resources import check_tensor


@dataclass
class LoadedModel:
    model: nn.Module
    spec: ArchSpec
    plan: dict | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class NonFiniteWeightsWarning(PrunelabWarning):
    """A loaded checkpoint holds NaN or infinite values (a diverged training run saved as is)."""


#: the most dimensions a recorded input shape has (CxHxW images; DxHxW volumes)
MAX_INPUT_DIMS = 4


def load_model(path: str | os.PathLike) -> LoadedModel:
    """Load a checkpoint written by prunelab into a ready-to-use ``nn.Module`` (eval mode).

    A checkpoint is data: its fields must have their types (a mapping of names to tensors, an
    architecture mapping, a recorded input shape of positive sizes whose sample fits in memory), and
    the model its architecture asks for must fit in memory (see :func:`prunelab.models.create`);
    anything else is one :class:`PrunelabError` line. NaN or inf weights load, with a
    :class:`NonFiniteWeightsWarning` naming how many tensors hold them."""
    ckpt = load_checkpoint(path)
    _check_fields(ckpt, path)
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
    _warn_non_finite(state, path)
    return LoadedModel(model, spec, plan, dict(ckpt.get("meta") or {}))


def _check_fields(ckpt: dict, path) -> None:
    """The types of a checkpoint's fields, before any of them is used."""
    arch, state, plan, meta = ckpt.get("arch"), ckpt.get("state_dict"), ckpt.get("plan"), ckpt.get("meta")
    if not isinstance(arch, dict) or not isinstance(arch.get("family"), str) \
            or not isinstance(arch.get("kwargs") or {}, dict):
        raise PrunelabError(f"checkpoint {path}: 'arch' must be a mapping with a 'family' name and 'kwargs', got "
                            f"{_kind(arch)}")
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise PrunelabError(f"checkpoint {path}: 'state_dict' must map parameter names to tensors, got "
                            f"{_kind(state)}")
    if plan is not None and not isinstance(plan, dict):
        raise PrunelabError(f"checkpoint {path}: 'plan' must be a mapping or absent, got {_kind(plan)}")
    if meta is not None and not isinstance(meta, dict):
        raise PrunelabError(f"checkpoint {path}: 'meta' must be a mapping or absent, got {_kind(meta)}")
    shape = (meta or {}).get("input_shape")
    if shape is not None:
        if not isinstance(shape, list | tuple) or not 1 <= len(shape) <= MAX_INPUT_DIMS or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape):
            raise PrunelabError(f"checkpoint {path}: meta 'input_shape' must be 1 to {MAX_INPUT_DIMS} positive "
                                f"sizes, got {_kind(shape, 60)}")
        check_tensor(f"checkpoint {path}: one input of its recorded shape {'x'.join(map(str, shape))}", shape)
    if (meta or {}).get("inputs") is not None:
        from prunelab.models.inputs import InputSpec

        try:
            InputSpec.from_dict(meta["inputs"])
        except PrunelabError as exc:
            raise PrunelabError(f"checkpoint {path}: meta 'inputs' is not an input spec: {exc}") from None


def _kind(value, limit: int = 40) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= limit else text[:limit - 3] + '...'}"


def _warn_non_finite(state: dict[str, torch.Tensor], path) -> None:
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        listed = ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")
        warnings.warn(f"checkpoint {path}: {len(bad)} of {len(state)} tensors hold NaN or inf values ({listed}); "
                      f"outputs will be NaN", NonFiniteWeightsWarning, stacklevel=3)


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
