"""What a Hugging Face config can state about a structurally pruned model.

``transformers`` rebuilds a model from its ``config.json`` alone, and one config describes every
layer alike (transformers 5 has no ``pruned_heads``). So a pruned folder loads into the pruned
architecture only when

* every layer keeps the same number of heads and the same MLP width (uniform pruning,
  :func:`prunelab.prune.structured.select.uniform_ties`), and
* the config can state the sizes: the MLP width (``intermediate_size``, ``n_inner``, ...) always can;
  the head count can change only where the head size is a field of its own (``head_dim``: LLaMA,
  Mistral, Qwen and transformers' ViT read it), not where the model derives it as
  ``hidden_size / num_attention_heads`` (BERT, GPT-2): there, fewer heads would mean larger heads.

Both are checked on the model class itself, not on a list of names: the class is built from a
config copy on the ``meta`` device (no memory, no weights) and its parameter shapes are compared
(:func:`states_head_dim`, :func:`shape_mismatches`). :func:`hf_unprunable` says, before pruning,
which groups of a model cannot become a folder and why.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.prune.structured.transformer import HEAD_COUNT_ATTRS, find_units

#: config fields that hold the MLP (intermediate) width
MLP_WIDTH_FIELDS = ("intermediate_size", "n_inner", "ffn_dim", "mlp_dim")


def build_on_meta(model: nn.Module, config) -> nn.Module:
    """``type(model)(config)`` on the meta device: the architecture the config describes, no weights."""
    try:
        with torch.device("meta"):
            return type(model)(config)
    except Exception as exc:  # a config the class refuses (a head count that does not divide, ...)
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PrunelabError(f"{type(config).__name__} with the pruned sizes is refused by "
                            f"{type(model).__name__}: {text}") from None


def _head_count(config) -> int | None:
    return next((getattr(config, n) for n in HEAD_COUNT_ATTRS if isinstance(getattr(config, n, None), int)), None)


def states_head_dim(model: nn.Module) -> bool:
    """Whether ``model``'s class takes its head size from ``config.head_dim`` (so heads can be pruned
    and the head size kept): the class is built with a different ``head_dim`` and its first attention
    block's head size is read back."""
    config = getattr(model, "config", None)
    units = find_units(model).attention
    if config is None or not units or _head_count(config) is None:
        return False
    d = units[0].head_dim
    probe = copy.deepcopy(config)
    probe.head_dim = 2 * d
    try:
        built = build_on_meta(model, probe)
    except PrunelabError:
        return False
    found = find_units(built).attention
    return bool(found) and found[0].head_dim == 2 * d


def states_mlp_width(model: nn.Module) -> bool:
    """Whether the config has a field for the MLP width (:data:`MLP_WIDTH_FIELDS`)."""
    config = getattr(model, "config", None)
    return config is not None and any(hasattr(config, n) and n in config.to_dict() for n in MLP_WIDTH_FIELDS)


def hf_unprunable(model: nn.Module, groups) -> dict[str, str]:
    """The groups of ``groups`` that a folder of ``model``'s class could not describe once pruned,
    with the reason: heads where the config derives the head size, MLP widths without a width field,
    and every plain channel group (a config states no such width)."""
    name = type(getattr(model, "config", None)).__name__
    heads_ok = states_head_dim(model) if any(g.kind == "heads" for g in groups) else True
    mlp_ok = states_mlp_width(model) if any(g.kind == "mlp" for g in groups) else True
    out: dict[str, str] = {}
    for g in groups:
        if g.kind == "heads" and not heads_ok:
            out[g.name] = (f"{name} derives the head size from hidden size / heads, so a folder cannot state "
                           f"fewer heads of the same size (heads kept; the MLP widths are pruned)")
        elif g.kind == "mlp" and not mlp_ok:
            out[g.name] = f"{name} has no MLP width field ({', '.join(MLP_WIDTH_FIELDS)})"
        elif g.kind == "channels":
            out[g.name] = f"a {name} states no width for this layer's outputs, so a folder cannot hold it pruned"
    return out


def shape_mismatches(model: nn.Module, config) -> list[str]:
    """The parameters and buffers whose shape in ``model`` differs from a model built from ``config``
    (``name: built A, model B``); empty when the config describes ``model``."""
    built = build_on_meta(model, config)
    theirs = {**dict(built.named_parameters()), **dict(built.named_buffers())}
    out = []
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        other = theirs.get(name)
        if other is not None and tuple(other.shape) != tuple(tensor.shape):
            out.append(f"{name}: {'x'.join(map(str, other.shape))} from the config, "
                       f"{'x'.join(map(str, tensor.shape))} pruned")
    return out


def check_describes(model: nn.Module, config, fields: Mapping[str, Any] | None = None) -> None:
    """Refuse (one line) a config that does not rebuild ``model``'s shapes."""
    bad = shape_mismatches(model, config)
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        stated = f" with {dict(fields)}" if fields else ""
        raise PrunelabError(f"the {type(config).__name__}{stated} does not describe the pruned model: {bad[0]}{more}; "
                            f"a Hugging Face folder could not load it")
