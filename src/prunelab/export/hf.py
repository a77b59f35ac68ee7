"""Write a (pruned) Hugging Face model back to a folder that ``AutoModelFor....from_pretrained`` loads.

:func:`write_folder` saves with ``save_pretrained`` (safetensors): unstructured masks are applied
(zeros in the weights) and their buffers dropped, so the folder holds the plain architecture; the
masks' record (per-tensor sizes and kept counts, the overall sparsity and the pruning summary) goes
beside the weights in :data:`~prunelab.models.hf.MASKS_FILE`, never into ``config.json``; a
structured prune's summary goes beside them in :data:`PRUNE_FILE`.

A structured prune changes sizes the config states (heads, head size, intermediate size). The
config fields to write come from *config rules* (:func:`register_config_rule`: a function of the
compressed model returning ``{field: value}``; dotted fields reach nested configs, e.g.
``text_config.num_attention_heads``) and from the caller's ``config_fields`` (which win).

:func:`load_hf` loads a folder for prunelab: :func:`prunelab.models.hf.load_folder`, plus the masks of
a folder this module wrote, re-attached from its zeros (every recorded tensor's mask is
``weight != 0``; a surviving weight that is exactly zero would count as pruned, which changes no
output).

The folder is written beside its destination and renamed into place, so a failure leaves nothing
half-written (an existing folder is replaced only once the new one is complete).
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.export.hf_config import check_describes
from prunelab.io import atomic_write_json
from prunelab.models.hf import MASKS_FILE, HFModel, load_folder, quiet_transformers
from prunelab.prune.unstructured.masks import mask_counts, set_mask, strip

MASKS_FORMAT = "prunelab-hf-masks"
#: the file beside the weights that records a structured prune (groups before / after, target, what was left out)
PRUNE_FILE = "prunelab_prune.json"

_CONFIG_RULES: list[Callable[[nn.Module], Mapping[str, Any]]] = []


def register_config_rule(rule: Callable[[nn.Module], Mapping[str, Any]]) -> Callable:
    """Add a rule ``rule(model) -> {config field: value}`` applied by every :func:`write_folder`."""
    if rule not in _CONFIG_RULES:
        _CONFIG_RULES.append(rule)
    return rule


def _structure_rule(model: nn.Module) -> Mapping[str, Any]:
    """Heads, key/value heads, head size and MLP width of a structurally pruned transformer
    (:func:`prunelab.prune.structured.transformer.config_updates`; uniform widths only; ``head_dim``
    also where the class reads it but the config does not hold it yet,
    :func:`prunelab.export.hf_config.states_head_dim`)."""
    from prunelab.export.hf_config import states_head_dim
    from prunelab.prune.structured.transformer import config_updates

    return config_updates(model, head_dim_field=states_head_dim(model))


register_config_rule(_structure_rule)


#: fields a config rule may add to a config that lacks them (the class reads them when present)
NEW_FIELDS = ("head_dim",)


def set_config_fields(config, fields: Mapping[str, Any], new: tuple[str, ...] = ()) -> None:
    """Set ``config.<field> = value`` for each item; a dotted field walks nested configs. A field the
    config (or a nested one) does not have is one :class:`PrunelabError` line, unless it is in ``new``."""
    for key, value in fields.items():
        target, parts = config, key.split(".")
        for part in parts[:-1]:
            if not hasattr(target, part):
                raise PrunelabError(f"config has no {part!r} (in field {key!r})")
            target = getattr(target, part)
        if not hasattr(target, parts[-1]) and key not in new:
            raise PrunelabError(f"config {type(target).__name__} has no field {parts[-1]!r}")
        setattr(target, parts[-1], value)


def masks_record(model: nn.Module, summary: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The JSON record of ``model``'s unstructured masks (None without masks)."""
    counts = mask_counts(model)
    if not counts:
        return None
    total = sum(n for n, _ in counts.values())
    kept = sum(k for _, k in counts.values())
    return {"format": MASKS_FORMAT, "version": 1, "sparsity": 1.0 - kept / total if total else 0.0,
            "tensors": {name: {"numel": n, "kept": k} for name, (n, k) in counts.items()},
            "summary": dict(summary or {})}


def write_folder(model: nn.Module, out_dir: str | os.PathLike, *, config_fields: Mapping[str, Any] | None = None,
                 summary: Mapping[str, Any] | None = None, check_inputs=None, atol: float = 1e-5,
                 record: Mapping[str, Any] | None = None) -> Path:
    """Save ``model`` (an HF ``PreTrainedModel``, masked or compressed) to ``out_dir`` (see the
    module docstring); returns the folder.

    The config (after the rules and ``config_fields``) must rebuild ``model``'s shapes
    (:func:`prunelab.export.hf_config.check_describes`), else nothing is written. With
    ``check_inputs`` (an :class:`~prunelab.models.inputs.InputSpec`), the written folder is also loaded
    back with ``from_pretrained`` before it is moved into place, and its logits on two examples must
    equal ``model``'s within ``atol``. ``record`` (JSON) is written beside the weights as
    :data:`PRUNE_FILE` (a structured prune's summary; never in ``config.json``)."""
    if not hasattr(model, "save_pretrained") or not hasattr(model, "config"):
        raise PrunelabError(f"a {type(model).__name__} is not a Hugging Face model (no save_pretrained / config); "
                            f"save it as a prunelab checkpoint instead")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise PrunelabError(f"cannot write the model folder {out}: it is a file")
    masks = masks_record(model, summary)
    plain = strip(model)
    fields: dict[str, Any] = {}
    for rule in _CONFIG_RULES:
        fields.update(rule(plain))
    ruled = tuple(k for k in fields if k in NEW_FIELDS)
    fields.update(config_fields or {})
    config = copy.deepcopy(plain.config)
    set_config_fields(config, fields, new=ruled)
    check_describes(plain, config, fields)
    plain.config = config
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        with quiet_transformers():
            plain.save_pretrained(str(tmp), safe_serialization=True)
        if check_inputs is not None:
            check_reloads(plain, tmp, check_inputs, atol)
        if masks is not None:
            atomic_write_json(tmp / MASKS_FILE, masks)
        if record is not None:
            atomic_write_json(tmp / PRUNE_FILE, record)
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.replace(out, old / out.name)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def check_reloads(model: nn.Module, folder: Path, inputs, atol: float = 1e-5) -> float:
    """Load ``folder`` with ``type(model).from_pretrained`` (the class ``AutoModelFor...`` resolves
    from ``architectures``) and compare its logits with ``model``'s on two examples of ``inputs``;
    a difference above ``atol`` is one line. Returns the max abs difference."""
    from prunelab.models.inputs import as_input_spec, run_logits

    spec = as_input_spec(inputs)
    with quiet_transformers():
        again = type(model).from_pretrained(str(folder), local_files_only=True)
    again.eval()
    was_training = model.training
    model.eval()
    try:
        x = spec.example_for(model, 2, seed=0)
        with torch.no_grad():
            diff = float((run_logits(again.to(next(model.parameters()).device), x) - run_logits(model, x))
                         .abs().max())
    finally:
        model.train(was_training)
    if not diff <= atol:
        raise PrunelabError(f"the written folder does not reproduce the pruned model: its outputs differ by "
                            f"{diff:.3g} (> {atol:g}); nothing was written")
    return diff


def load_hf(path: str | os.PathLike, *, seq_len: int | None = None,
            attn_implementation: str | None = None) -> HFModel:
    """:func:`prunelab.models.hf.load_folder`, with the recorded masks of an unstructured prune
    re-attached (see the module docstring)."""
    loaded = load_folder(path, seq_len=seq_len, attn_implementation=attn_implementation)
    record = loaded.meta
    if record:
        if record.get("format") != MASKS_FORMAT or not isinstance(record.get("tensors"), dict):
            raise PrunelabError(f"Hugging Face folder {path}: {MASKS_FILE} is not a prunelab mask record")
        modules = dict(loaded.model.named_modules())
        for name in record["tensors"]:
            owner, _, pname = str(name).rpartition(".")
            module = modules.get(owner)
            param = getattr(module, pname, None) if module is not None else None
            if not isinstance(param, torch.nn.Parameter):
                raise PrunelabError(f"Hugging Face folder {path}: {MASKS_FILE} names {name!r}, which the model lacks")
            set_mask(module, param.detach() != 0, pname)
    return loaded
