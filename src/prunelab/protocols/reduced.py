"""Reduced networks: uniformly smaller versions of a zoo model (Crowley et al. 2018, sec. 4.1).

Three ways to shrink a model, each a new :class:`ArchSpec` of the same family:

* ``depth``: fewer blocks (a legal depth of the family, e.g. WRN 6n+4, CIFAR ResNet 6n+2);
* ``width``: every width of the network times a multiplier (WRN's k, CIFAR ResNet / VGG /
  MobileNet's width multiplier, DenseNet's growth rate);
* ``bottleneck``: only the width units (block-internal channels: WRN ``bottle_mult``, DenseNet's
  bottleneck width) times a multiplier, the uniform counterpart of pruning those channels.

Widths are rounded to whole channels, half up, at least one channel (the reference code truncates
with ``int()``, which biases every width down), or to a multiple of ``round_to`` (8 or 16 for
hardware-friendly widths, at least ``round_to``). Given a target in parameters, MACs or measured
latency, :func:`reduce_to_target` bisects the multiplier until the reduced model lands within 2%
of it; depth is discrete, so a depth search returns the nearest legal depth.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from prunelab.data.base import DataBundle
from prunelab.errors import PrunelabError, check_choice
from prunelab.models import ArchSpec, create, get_family, resolve
from prunelab.protocols.build import build_and_train, fit_spec_to_data
from prunelab.protocols.search import SearchResult, bisect_scalar, nearest_choice
from prunelab.protocols.targets import LatencyOptions, Measurer, Target, measure
from prunelab.protocols.widths import units_of, with_unit_widths

MODES = ("width", "bottleneck", "depth")
MIN_MULTIPLIER = 1e-3


def round_width(width: float, round_to: int = 1) -> int:
    """A channel count: ``width`` rounded half up to a multiple of ``round_to``, at least ``round_to``."""
    if round_to < 1:
        raise PrunelabError(f"channel rounding multiple must be >= 1, got {round_to}")
    if not math.isfinite(width / round_to):  # a multiplier of 1e308 times a width: no channel count
        raise PrunelabError(f"a scaled width of {width} channels is not a finite number; use a smaller multiplier")
    return max(round_to, int(math.floor(width / round_to + 0.5)) * round_to)


# --------------------------------------------------------------------------------------- width rules


def _scale_list(values, mult: float, round_to: int) -> list[int]:
    return [round_width(v * mult, round_to) for v in values]


def _scale_units(spec: ArchSpec, mult: float, round_to: int) -> ArchSpec:
    """Every width unit of ``spec`` times ``mult``, written back as explicit widths."""
    units = units_of(spec)
    return with_unit_widths(spec, [round_width(u.width * mult, round_to) for u in units], units)


def _explicit_units_scaled(spec: ArchSpec, new: ArchSpec, key: str, mult: float, round_to: int) -> ArchSpec:
    # Explicit per-block widths are absolute in the zoo's constructors: scale them too.
    if spec.kwargs.get(key) is None:
        return new
    return new.with_kwargs(**{key: _scale_list(spec.kwargs[key], mult, round_to)})


def _wrn_width(spec: ArchSpec, mult: float, round_to: int) -> ArchSpec:
    # Stem stays 16 channels, group widths int(16k), int(32k), int(64k) scale (pytorch-prunes' k).
    k = float(spec.kwargs.get("widen_factor", 1.0))
    widths = spec.kwargs.get("widths") or [16, int(16 * k), int(32 * k), int(64 * k)]
    new = spec.with_kwargs(widths=[int(widths[0])] + _scale_list(widths[1:], mult, round_to))
    return _explicit_units_scaled(spec, new, "block_widths", mult, round_to)


def _resnet_cifar_width(spec: ArchSpec, mult: float, round_to: int) -> ArchSpec:
    base = float(spec.kwargs.get("width_mult", 1.0))
    widths = spec.kwargs.get("widths") or [16, 32, 64]
    new = spec.with_kwargs(widths=_scale_list([int(w * base) for w in widths], mult, round_to), width_mult=1.0)
    return _explicit_units_scaled(spec, new, "block_widths", mult, round_to)


def _densenet_width(spec: ArchSpec, mult: float, round_to: int) -> ArchSpec:
    growth = int(spec.kwargs.get("growth_rate", 12))
    new = spec.with_kwargs(growth_rate=round_width(growth * mult, round_to))
    return _explicit_units_scaled(spec, new, "block_widths", mult, round_to)


def _mobilenet_v2_width(spec: ArchSpec, mult: float, round_to: int) -> ArchSpec:
    # Block outputs (the residual stream, not width units) scale with the stem, hidden and last widths.
    from prunelab.models.mobilenet_v2 import OUT_WIDTHS

    outs = spec.kwargs.get("out_widths")
    if outs is None:
        wm = float(spec.kwargs.get("width_mult", 1.0))
        outs = [max(1, int(w * wm)) for w in OUT_WIDTHS]
    scaled = _scale_units(spec, mult, round_to)
    return scaled.with_kwargs(out_widths=_scale_list(outs, mult, round_to))


def _resnet_width(spec: ArchSpec, mult: float, round_to: int) -> ArchSpec:
    wm = float(spec.kwargs.get("width_mult", 1.0))
    widths = spec.kwargs.get("widths") or [64, 128, 256, 512]
    stem = int(spec.kwargs.get("stem_width", 64))
    new = spec.with_kwargs(widths=_scale_list([max(1, int(w * wm)) for w in widths], mult, round_to),
                           stem_width=round_width(max(1, int(stem * wm)) * mult, round_to), width_mult=1.0)
    return _explicit_units_scaled(spec, new, "block_widths", mult, round_to)


def _all_units_width(spec: ArchSpec, mult: float, round_to: int) -> ArchSpec:
    """Families whose width units are all their widths (VGG ``cfg``, MobileNet-V1 ``widths``, the
    small MLP / CNNs): scale every unit."""
    return _scale_units(spec, mult, round_to)


WIDTH_RULES: dict[str, Callable[[ArchSpec, float, int], ArchSpec]] = {
    "wrn": _wrn_width,
    "resnet_cifar": _resnet_cifar_width,
    "densenet": _densenet_width,
    "resnet": _resnet_width,
    "mobilenet_v2": _mobilenet_v2_width,
    "mobilenet_v2_cifar": _mobilenet_v2_width,
    "vgg": _all_units_width,
    "mobilenet_v1": _all_units_width,
    "mlp": _all_units_width,
    "cnn": _all_units_width,
    "cnn1d": _all_units_width,
}


def scale_width(spec: ArchSpec, mult: float, round_to: int = 1) -> ArchSpec:
    """``spec`` with every width of the network times ``mult`` (the family's width multiplier)."""
    if not (math.isfinite(mult) and mult > 0):
        raise PrunelabError(f"width multiplier must be positive, got {mult}")
    rule = WIDTH_RULES.get(spec.family)
    if rule is None:
        raise PrunelabError(f"no width-multiplier rule for model family {spec.family!r}; families with one: "
                            f"{', '.join(sorted(WIDTH_RULES))} (the bottleneck mode works for every family)")
    return rule(spec, mult, round_to)


def scale_bottleneck(spec: ArchSpec, mult: float, round_to: int = 1) -> ArchSpec:
    """``spec`` with every width unit (block-internal channels) times ``mult``."""
    if not (math.isfinite(mult) and mult > 0):
        raise PrunelabError(f"bottleneck multiplier must be positive, got {mult}")
    return _scale_units(spec, mult, round_to)


# --------------------------------------------------------------------------------------- depth


def legal_depths(spec: ArchSpec, up_to: int | None = None) -> list[int]:
    """The depths the family accepts, up to ``up_to`` (default: the spec's own depth).

    Found by asking the constructor (its depth rule fails before any layer is built), so every
    family's rule (6n+4, 6n+2, VGG's 11/13/16/19...) is the zoo's own.
    """
    params = inspect.signature(get_family(spec.family).build).parameters
    if "depth" not in params:
        raise PrunelabError(f"model family {spec.family!r} has no depth setting; valid modes here: width, bottleneck")
    current = int(spec.kwargs.get("depth", params["depth"].default))
    limit = current if up_to is None else int(up_to)
    out = []
    for d in range(1, limit + 1):
        try:
            with torch.random.fork_rng(devices=[]):
                create(with_depth(spec, d))
        except PrunelabError:
            continue
        out.append(d)
    return out


def with_depth(spec: ArchSpec, depth: int) -> ArchSpec:
    """``spec`` at another depth. Explicit per-block widths are carried over stage by stage
    (:func:`prunelab.protocols.profile.transfer_widths`), or dropped when they are the defaults."""
    new = spec.with_kwargs(depth=int(depth))
    explicit = [u for u in ("block_widths", "cfg") if spec.kwargs.get(u) is not None]
    if not explicit:
        return new
    plain = new.with_kwargs(**{k: None for k in explicit})
    if int(spec.kwargs.get("depth", -1)) == int(depth):
        return spec
    from prunelab.protocols.profile import transfer_widths

    return transfer_widths(spec, plain)


# --------------------------------------------------------------------------------------- search


def reduce_spec(spec: ArchSpec, mode: str, value: float, *, round_to: int = 1) -> ArchSpec:
    """``spec`` reduced by ``mode`` at multiplier (or depth) ``value``."""
    check_choice("reduction mode", mode, MODES)
    if mode == "width":
        return scale_width(spec, float(value), round_to)
    if mode == "bottleneck":
        return scale_bottleneck(spec, float(value), round_to)
    if float(value) != int(value):
        raise PrunelabError(f"depth must be an integer, got {value}")
    new = with_depth(spec, int(value))
    with torch.random.fork_rng(devices=[]):
        create(new)  # the family's depth rule, as a one-line error
    return new


def reduce_to_target(spec: ArchSpec, mode: str, target: Target, input_shape: tuple[int, ...], *,
                     round_to: int = 1, tol: float = 0.02, max_multiplier: float = 1.0,
                     latency: LatencyOptions | None = None) -> SearchResult:
    """Search the multiplier (or depth) of ``mode`` so the reduced model hits ``target``.

    Multipliers are bisected in ``[0.001, max_multiplier]`` to within ``tol`` (relative); a target
    outside the reachable range, or one that whole-channel rounding cannot reach within ``tol``,
    is a :class:`PrunelabError` naming the numbers. Depth returns the nearest legal depth up to the
    spec's own (its deviation is in the result).
    """
    check_choice("reduction mode", mode, MODES)
    measurer = Measurer(target.metric, input_shape, latency or LatencyOptions())
    if mode == "depth":
        candidates = [(float(d), with_depth(spec, d)) for d in legal_depths(spec)]
        return nearest_choice(candidates, measurer, target, name="depth", what="reduced network")
    name = "width multiplier" if mode == "width" else "bottleneck multiplier"
    return bisect_scalar(lambda m: reduce_spec(spec, mode, m, round_to=round_to), measurer, target,
                         lo=MIN_MULTIPLIER, hi=float(max_multiplier), tol=tol, name=name, what="reduced network")


@dataclass
class ReducedResult:
    """A reduced network: how it was reduced, its size, and (when trained) its model and history."""

    base: ArchSpec
    spec: ArchSpec
    mode: str
    value: float
    params: int
    macs: int
    search: SearchResult | None = None
    model: nn.Module | None = field(default=None, repr=False)
    result: Any = field(default=None, repr=False)
    config: Any = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "protocol": "reduced",
            "mode": self.mode,
            "value": self.value,
            "base_arch": self.base.to_dict(),
            "arch": self.spec.to_dict(),
            "params": self.params,
            "macs": self.macs,
            "search": self.search.to_dict() if self.search else None,
            "train": self.config.to_dict() if self.config is not None else None,
            "final": dict(getattr(self.result, "final", {}) or {}) if self.result is not None else None,
        }


def reduced_network(spec: str | ArchSpec | dict, data: DataBundle, config=None, *, mode: str = "width",
                    value: float | None = None, target: Target | None = None, round_to: int = 1, tol: float = 0.02,
                    max_multiplier: float = 1.0, latency: LatencyOptions | None = None,
                    train: bool = True) -> ReducedResult:
    """Build a reduced network of ``spec`` (a multiplier / depth ``value``, or the one hitting
    ``target``) and train it with ``config`` from scratch (:func:`build_and_train`)."""
    check_choice("reduction mode", mode, MODES)
    if (value is None) == (target is None):
        raise PrunelabError("give exactly one of a multiplier/depth value or a target")
    base = fit_spec_to_data(resolve(spec), data)
    shape = tuple(data.input_shape)
    search = None
    if target is not None:
        search = reduce_to_target(base, mode, target, shape, round_to=round_to, tol=tol,
                                  max_multiplier=max_multiplier, latency=latency)
        reduced, value = search.spec, search.x
    else:
        reduced = reduce_spec(base, mode, float(value), round_to=round_to)
    with torch.random.fork_rng(devices=[]):
        probe = create(reduced)
    params, macs = int(measure(probe, "params", shape)), int(measure(probe, "macs", shape))
    out = ReducedResult(base, reduced, mode, float(value), params, macs, search)
    if train:
        if config is None:
            raise PrunelabError("training a reduced network needs a training config")
        out.model, out.result = build_and_train(reduced, data, config)
        out.config = config
    return out
