"""The model registry: names -> constructors with explicit widths.

Every model in the zoo is a plain ``nn.Module`` returned by a *family constructor* (a function that
takes explicit widths and depth as keyword arguments, timm-style). A registered *name* such as
``"wrn-40-2"`` is a family plus default keyword arguments. An :class:`ArchSpec` (family + keyword
arguments, JSON-serialisable) is what checkpoints, plans, reduced networks, copied profiles and
Pruning-from-Scratch all produce: rebuilding a model is always ``create(spec)``.

Families also describe their *width units* (:class:`WidthUnit`): the channel sets a structured
method may shrink while keeping the family's layout (block-internal channels, bottleneck widths,
VGG layer widths...). Each unit names the BatchNorm after which a channel mask or gate goes and the
keyword argument (and index) that sets its width, so a compressed model maps back to a spec.

Everything the protocols need to know about a family is a hook it registers with itself (timm's
``@register_model`` shape: each family file registers its own constructor and names, and this
registry imports no family; the package ``prunelab.models`` imports every family module):

* ``units(model)``: its width units;
* ``scale_width(spec, mult, round_to)``: every width of the network times ``mult`` (reduced networks,
  Crowley et al. 2018; Pruning from Scratch's width expansion);
* ``expansion``: how Pruning from Scratch's ``-e`` widens the family by default (``width`` or
  ``bottleneck``, Wang et al. 2020);
* ``width_keys``: the constructor keywords that list per-block unit widths explicitly, whose length
  follows the depth (dropped or carried over stage by stage when the depth changes);
* ``inputs(kwargs)``: the family's example inputs when they are not one float tensor of its input
  shape (the language model's token ids), as an :class:`~prunelab.models.inputs.InputSpec`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from prunelab.errors import PrunelabError, check_choice, unknown_choice


@dataclass(frozen=True)
class ArchSpec:
    """A model family plus the keyword arguments of its constructor (widths, depth, classes)."""

    family: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "kwargs": copy.deepcopy(self.kwargs)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ArchSpec:
        if not isinstance(d, dict) or "family" not in d:
            raise PrunelabError("architecture spec must be a mapping with a 'family' key")
        kwargs = d.get("kwargs") or {}
        if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
            raise PrunelabError(f"architecture spec 'kwargs' must map argument names to values, got "
                                f"{type(kwargs).__name__}")
        return cls(str(d["family"]), dict(kwargs))

    def with_kwargs(self, **overrides: Any) -> ArchSpec:
        kw = copy.deepcopy(self.kwargs)
        kw.update(overrides)
        return ArchSpec(self.family, kw)


@dataclass(frozen=True)
class WidthUnit:
    """One prunable channel set of a zoo model, in the family's own terms.

    ``bn``: module path of the BatchNorm whose output channels are the unit (mask/gate goes after it).
    ``conv``: module path of the convolution producing those channels.
    ``key``/``index``: the constructor keyword (and list index, or None for a scalar) setting the width.
    ``width``: the current number of channels (or heads).

    Transformer units (:mod:`prunelab.models.vit`, :mod:`prunelab.models.lm`) add:
    ``kind``: ``"channels"`` (one output channel of ``conv`` per unit element) or ``"heads"`` (whole
    attention heads: ``group_size`` output rows of ``conv`` per element, e.g. 3 x head_dim of a fused
    QKV); ``bn`` then names the module whose output carries one slice per head (gates and masks act
    there). ``axis``: the dimension of that module's output holding the unit (1 for conv / BN channels
    and per-head tensors ``(N, heads, T, d)``, -1 for a Linear on ``(N, T, F)``).
    """

    name: str
    bn: str | None
    conv: str
    key: str
    index: int | None
    width: int
    kind: str = "channels"
    group_size: int = 1
    axis: int = 1


@dataclass(frozen=True)
class Family:
    """A model family: its constructor and how to read its width units from a built model."""

    name: str
    build: Callable[..., nn.Module]
    units: Callable[[nn.Module], list[WidthUnit]] | None = None
    init: Callable[[nn.Module], None] | None = None
    input_shape: tuple[int, ...] = (3, 32, 32)
    task: str = "image"  # image | sequence | vector
    doc: str = ""
    #: ``shape_of(kwargs) -> input shape``: the default input shape of a spec (in-channels or input
    #: features come from its kwargs); None means ``input_shape`` for every spec
    shape_of: Callable[[dict[str, Any]], tuple[int, ...]] | None = None
    #: ``scale_width(spec, mult, round_to) -> spec``: every width times ``mult``; None: the family has none
    scale_width: Callable[[ArchSpec, float, int], ArchSpec] | None = None
    #: Pruning from Scratch's default expansion of the family: "width" or "bottleneck"
    expansion: str = "bottleneck"
    #: constructor keywords listing explicit per-block unit widths (their length follows the depth)
    width_keys: tuple[str, ...] = ()
    #: ``inputs(kwargs) -> InputSpec``: what a spec's model takes when it is not one float tensor of
    #: its input shape (a language model's token ids); None: ``InputSpec.tensor(input_shape)``
    inputs: Callable[[dict[str, Any]], Any] | None = None


@dataclass(frozen=True)
class ModelEntry:
    """A registered model name: a family plus default keyword arguments."""

    name: str
    family: str
    kwargs: dict[str, Any]
    input_shape: tuple[int, ...]
    num_classes: int
    doc: str = ""

    @property
    def spec(self) -> ArchSpec:
        return ArchSpec(self.family, copy.deepcopy(self.kwargs))


_FAMILIES: dict[str, Family] = {}
_MODELS: dict[str, ModelEntry] = {}


EXPANSIONS = ("width", "bottleneck")


def register_family(name: str, build: Callable[..., nn.Module], *, units=None, init=None,
                    input_shape: tuple[int, ...] = (3, 32, 32), task: str = "image", doc: str = "",
                    shape_of: Callable[[dict[str, Any]], tuple[int, ...]] | None = None,
                    scale_width: Callable[[ArchSpec, float, int], ArchSpec] | None = None,
                    expansion: str = "bottleneck", width_keys: tuple[str, ...] = (),
                    inputs: Callable[[dict[str, Any]], Any] | None = None) -> None:
    """Register a family. ``init(model)`` re-initialises a built (possibly compressed) model in place
    with the family's rule computed from each layer's actual fan-in / fan-out. ``shape_of(kwargs)``
    gives a spec's input shape (e.g. ``(in_channels, 32, 32)``); ``input_shape`` is the default.
    ``units``, ``scale_width``, ``expansion`` and ``width_keys`` are the optional hooks of the module
    docstring (a family without ``units`` still prunes with the generic channel groups). ``inputs(kwargs)``
    gives an :class:`~prunelab.models.inputs.InputSpec` for families that take something other than
    one float tensor (token ids)."""
    check_choice(f"expansion of family {name!r}", expansion, EXPANSIONS)
    _FAMILIES[name] = Family(name, build, units, init, tuple(input_shape), task, doc, shape_of, scale_width,
                             expansion, tuple(width_keys), inputs)


def register_model(name: str, family: str, *, input_shape: tuple[int, ...] | None = None,
                   num_classes: int = 10, doc: str = "", **kwargs: Any) -> None:
    fam = _FAMILIES[family]
    kwargs.setdefault("num_classes", num_classes)
    if input_shape is None:
        input_shape = fam.shape_of(kwargs) if fam.shape_of is not None else fam.input_shape
    _MODELS[name] = ModelEntry(name, family, kwargs, tuple(input_shape), num_classes, doc)


def list_models() -> list[str]:
    return sorted(_MODELS)


def list_families() -> list[str]:
    return sorted(_FAMILIES)


def get_entry(name: str) -> ModelEntry:
    if name not in _MODELS:
        raise unknown_choice("model", name, _MODELS)
    return _MODELS[name]


def get_family(name: str) -> Family:
    if name not in _FAMILIES:
        raise unknown_choice("model family", name, _FAMILIES)
    return _FAMILIES[name]


def resolve(name_or_spec: str | ArchSpec | dict, **overrides: Any) -> ArchSpec:
    """Turn a registry name, an ArchSpec or its dict form into an ArchSpec with ``overrides`` applied."""
    if isinstance(name_or_spec, ArchSpec):
        spec = name_or_spec
    elif isinstance(name_or_spec, dict):
        spec = ArchSpec.from_dict(name_or_spec)
    else:
        spec = get_entry(str(name_or_spec)).spec
    get_family(spec.family)
    return spec.with_kwargs(**overrides) if overrides else spec


def create(name_or_spec: str | ArchSpec | dict, **overrides: Any) -> nn.Module:
    """Build a model from a registry name or an ArchSpec. Keyword overrides replace spec kwargs.

    Widths and depths are data (a checkpoint, a flag): a model that would not fit in the memory
    available, or whose constructor rejects them, is one :class:`PrunelabError` line (see
    :mod:`prunelab.models.budget`)."""
    from prunelab.models.budget import build_within_budget

    spec = resolve(name_or_spec, **overrides)
    return build_within_budget(get_family(spec.family).build, spec.family, spec.kwargs)


def width_units(model: nn.Module, spec: ArchSpec) -> list[WidthUnit]:
    """The width units of ``model`` (built from ``spec``'s family), read from its actual modules."""
    fam = get_family(spec.family)
    if fam.units is None:
        raise PrunelabError(f"model family {spec.family!r} declares no width units")
    return fam.units(model)


def input_shape_of(spec: ArchSpec) -> tuple[int, ...]:
    """Default input shape (without batch) of a spec: the family's ``shape_of(kwargs)`` (which reads
    e.g. ``in_channels`` or ``input_size``), else the family's ``input_shape``. An explicit
    ``input_shape`` kwarg (for families whose constructor takes one) wins."""
    fam = get_family(spec.family)
    if "input_shape" in spec.kwargs:
        return tuple(int(d) for d in spec.kwargs["input_shape"])
    if fam.shape_of is not None:
        return tuple(int(d) for d in fam.shape_of(spec.kwargs))
    return tuple(fam.input_shape)


def input_spec_of(spec: ArchSpec):
    """The example inputs of a spec's model (:class:`~prunelab.models.inputs.InputSpec`): the family's
    ``inputs`` hook (token ids of a language model), else one float tensor of :func:`input_shape_of`."""
    from prunelab.models.inputs import InputSpec

    fam = get_family(spec.family)
    if fam.inputs is not None:
        return fam.inputs(spec.kwargs)
    return InputSpec.tensor(input_shape_of(spec))


def spec_from_units(spec: ArchSpec | str | dict, units: list[WidthUnit]) -> ArchSpec:
    """The spec whose constructor rebuilds the widths in ``units`` (read from a possibly compressed
    model with :func:`width_units`): each unit's width is written into its keyword (and list index).

    Keys whose indices the units cover completely (0..n-1) become new lists; partly covered list
    keys update the spec's existing list.
    """
    spec = resolve(spec)
    kw = copy.deepcopy(spec.kwargs)
    by_key: dict[str, list[WidthUnit]] = {}
    for unit in units:
        by_key.setdefault(unit.key, []).append(unit)
    for key, group in by_key.items():
        if any(u.index is None for u in group):
            if len(group) != 1 or group[0].index is not None:
                raise PrunelabError(f"width key {key!r} is both a scalar and a list in the given units")
            kw[key] = int(group[0].width)
            continue
        indices = sorted(u.index for u in group)
        if indices == list(range(len(indices))):
            values = [0] * len(indices)
        elif isinstance(kw.get(key), (list, tuple)) and indices[-1] < len(kw[key]):
            values = list(kw[key])
        else:
            raise PrunelabError(f"units cover indices {indices} of {key!r} but the spec has no full list to update")
        for u in group:
            values[u.index] = int(u.width)
        kw[key] = values
    return ArchSpec(spec.family, kw)


def fit_spec(spec: ArchSpec, num_classes: int | None, input_shape: tuple[int, ...] | None) -> ArchSpec:
    """``spec`` with its class count and input size set, where the family's constructor takes them.

    A zoo model registered for CIFAR-10 (3x32x32, 10 classes) then builds for any data set: images and
    1-D signals are channels-first, so ``in_channels`` is ``input_shape[0]``; sequences are (T, F), so a
    recurrent ``input_size`` is the features per step; a ViT's ``image_size`` is the image's (H, W) and
    a language model's ``seq_len`` the length of its token blocks (T,); ``in_features`` is the flattened size. A family
    with a ``dims`` setting (1-D or 2-D convolutions) takes the data's: a (C, L) signal builds the 1-D
    network, a (C, H, W) image the 2-D one.
    """
    import inspect
    import math

    try:
        params = inspect.signature(get_family(spec.family).build).parameters
    except (TypeError, ValueError):  # builtins or C callables: leave the spec alone
        return spec
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    overrides: dict[str, Any] = {}
    if num_classes is not None and ("num_classes" in params or takes_any):
        overrides["num_classes"] = int(num_classes)
    shape = tuple(int(d) for d in input_shape or ())
    if shape:
        if "in_channels" in params and len(shape) >= 2:
            overrides["in_channels"] = shape[0]
        if "in_features" in params:
            overrides["in_features"] = math.prod(shape)
        if "input_size" in params and len(shape) == 2:
            overrides["input_size"] = shape[-1]
        if "image_size" in params and len(shape) == 3:  # a ViT's position table follows the image
            overrides["image_size"] = shape[1] if shape[1] == shape[2] else [shape[1], shape[2]]
        if "seq_len" in params and len(shape) == 1:  # a language model's token blocks
            overrides["seq_len"] = shape[0]
        if "dims" in params and len(shape) in (2, 3):
            default = params["dims"].default
            if spec.kwargs.get("dims", default) != len(shape) - 1:
                overrides["dims"] = len(shape) - 1
    changed = {k: v for k, v in overrides.items() if spec.kwargs.get(k) != v}
    return spec.with_kwargs(**changed) if changed else spec
