"""Which weight tensors unstructured pruning touches.

Gupta et al. (2022, sec. 3 and ``Global MP/prune.py``) prune every ``Conv2d`` and ``Linear`` weight,
including the first convolution, the classifier, depthwise and 1x1 shortcut convolutions. That is
the default here. BatchNorm parameters and biases are never candidates. Competitors in their
ResNet-50 table keep the first (*) or last (#) layer dense; :class:`LayerSelection` offers both, and
selection by module type or by name pattern (shell-style globs on module paths, e.g.
``layer4.*`` or ``*.shortcut.*``).

"First" and "last" mean the first and last candidate layer in module registration order, which is
the stem and the classifier for every model in the zoo.

Transformers: "linear" covers Hugging Face's ``Conv1D`` too (GPT-2 stores its projections that way),
so Global MP over "all Linear weights" means all of them. A weight shared with an ``nn.Embedding``
(an LM head tied to the input embedding) is an embedding table, not a layer's weights: it is left
out unless ``include_embeddings`` is set, and a tied tensor is listed (counted, ranked, masked) once.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from torch import nn

from prunelab.errors import PrunelabError, unknown_choice
from prunelab.models.common import CONV_TYPES, is_conv1d

#: module-type names accepted by ``include_types``
LAYER_TYPES: dict[str, tuple[type[nn.Module], ...]] = {
    "conv": CONV_TYPES,
    "conv1d": (nn.Conv1d,),
    "conv2d": (nn.Conv2d,),
    "conv3d": (nn.Conv3d,),
    "linear": (nn.Linear,),
}
_CANDIDATE_TYPES = LAYER_TYPES["conv"] + LAYER_TYPES["linear"]


@dataclass(frozen=True)
class PrunableLayer:
    """A module whose ``weight`` takes part in pruning, with its path in the model."""

    name: str
    module: nn.Module

    @property
    def weight(self):
        return self.module.weight

    @property
    def numel(self) -> int:
        return self.module.weight.numel()

    @property
    def kind(self) -> str:
        return type(self.module).__name__


@dataclass(frozen=True)
class LayerSelection:
    """Rules that pick the prunable weight tensors of a model.

    ``include_types``: module types to consider (names from :data:`LAYER_TYPES`); default all Conv
    and Linear. ``include``: if given, only layers whose path matches one of these globs.
    ``exclude``: layers whose path matches one of these globs stay dense. ``keep_first_dense`` /
    ``keep_last_dense``: leave the first / last candidate layer dense. A pattern that matches no
    candidate layer is an error, so a typo never silently prunes everything.
    """

    include_types: tuple[str, ...] = ("conv", "linear")
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    keep_first_dense: bool = False
    keep_last_dense: bool = False
    include_embeddings: bool = False

    def to_dict(self) -> dict:
        d = {
            "include_types": list(self.include_types),
            "include": list(self.include),
            "exclude": list(self.exclude),
            "keep_first_dense": self.keep_first_dense,
            "keep_last_dense": self.keep_last_dense,
        }
        if self.include_embeddings:  # absent by default: earlier runs keep their configs (and ids)
            d["include_embeddings"] = True
        return d

    @classmethod
    def from_dict(cls, d: dict | None) -> LayerSelection:
        d = dict(d or {})
        valid = {"include_types", "include", "exclude", "keep_first_dense", "keep_last_dense", "include_embeddings"}
        unknown = sorted(set(d) - valid)
        if unknown:
            raise PrunelabError(f"unknown layer selection key(s) {unknown}; valid: {', '.join(sorted(valid))}")
        for key in ("include_types", "include", "exclude"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)


DEFAULT_SELECTION = LayerSelection()


def embedding_weights(model: nn.Module) -> set[int]:
    """ids of the weight tensors of the model's ``nn.Embedding`` tables (shared by a tied LM head)."""
    return {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)
            and isinstance(getattr(m, "weight", None), nn.Parameter)}


def candidate_layers(model: nn.Module, types: Sequence[str] = ("conv", "linear"),
                     include_embeddings: bool = False) -> list[PrunableLayer]:
    """Every Conv/Linear (and Hugging Face ``Conv1D``, a "linear") module of ``types`` with a weight,
    in registration order.

    A weight tensor shared by several modules (tied weights) is listed once, under its first path; one
    shared with an ``nn.Embedding`` is left out unless ``include_embeddings``.
    """
    classes: tuple[type[nn.Module], ...] = ()
    for t in types:
        if t not in LAYER_TYPES:
            raise unknown_choice("layer type", t, LAYER_TYPES)
        classes += LAYER_TYPES[t]
    hf_linear = "linear" in types
    seen: set[int] = set() if include_embeddings else embedding_weights(model)
    layers = []
    for name, module in model.named_modules():
        if not (isinstance(module, classes) or (hf_linear and is_conv1d(module))) \
                or not isinstance(getattr(module, "weight", None), nn.Parameter):
            continue
        if id(module.weight) in seen:
            continue
        seen.add(id(module.weight))
        layers.append(PrunableLayer(name, module))
    return layers


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _check_patterns(patterns: Iterable[str], names: list[str], flag: str) -> None:
    for p in patterns:
        if not any(fnmatch.fnmatchcase(n, p) for n in names):
            shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
            raise PrunelabError(f"{flag} pattern {p!r} matches no Conv/Linear layer; layers are: {shown}")


def select_layers(model: nn.Module, selection: LayerSelection | None = None) -> list[PrunableLayer]:
    """The layers ``selection`` picks from ``model``, in registration order.

    Raises :class:`PrunelabError` if a pattern matches nothing or no layer is left to prune.
    """
    sel = selection or DEFAULT_SELECTION
    if not isinstance(sel, LayerSelection):
        raise PrunelabError(f"selection must be a LayerSelection, got {type(sel).__name__}")
    all_layers = candidate_layers(model, ("conv", "linear"), sel.include_embeddings)
    if not all_layers:
        raise PrunelabError(f"model {type(model).__name__} has no Conv or Linear layer to prune")
    names = [layer.name for layer in all_layers]
    _check_patterns(sel.include, names, "include")
    _check_patterns(sel.exclude, names, "exclude")
    layers = candidate_layers(model, sel.include_types, sel.include_embeddings)
    if not layers:
        raise PrunelabError(f"model {type(model).__name__} has no layer of type(s) {', '.join(sel.include_types)}")
    dense: set[str] = set()
    if sel.keep_first_dense:
        dense.add(layers[0].name)
    if sel.keep_last_dense:
        dense.add(layers[-1].name)
    picked = [
        layer for layer in layers
        if layer.name not in dense
        and (not sel.include or _matches(layer.name, sel.include))
        and not _matches(layer.name, sel.exclude)
    ]
    if not picked:
        raise PrunelabError("the layer selection leaves no layer to prune (check include/exclude/keep-dense options)")
    return picked
