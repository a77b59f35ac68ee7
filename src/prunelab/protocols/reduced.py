"""Reduced networks: uniformly smaller versions of a zoo model (Crowley et al. 2018, sec. 4.1).

Three ways to shrink a model, each a new :class:`ArchSpec` of the same family:

* ``depth``: fewer blocks (a legal depth of the family, e.g. WRN 6n+4, CIFAR ResNet 6n+2);
* ``width``: every width of the network times a multiplier (WRN's k, CIFAR ResNet / VGG /
  MobileNet's width multiplier, DenseNet's growth rate);
* ``bottleneck``: only the width units (block-internal channels: WRN ``bottle_mult``, DenseNet's
  bottleneck width) times a multiplier, the uniform counterpart of pruning those channels.

What "every width" means is the family's own ``scale_width`` hook
(:mod:`prunelab.models.registry`); widths are rounded by :func:`prunelab.models.widths.round_width`
(half up, at least one channel, or a multiple of ``round_to``). Given a target in parameters, MACs or measured
latency, :func:`reduce_to_target` bisects the multiplier until the reduced model lands within 2%
of it; depth is discrete, so a depth search returns the nearest legal depth.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from prunelab.data.base import DataBundle
from prunelab.errors import PrunelabError, check_choice
from prunelab.models import ArchSpec, create, get_family, list_families, resolve
from prunelab.models.widths import scale_units
from prunelab.protocols.build import build_and_train, data_inputs, fit_spec_to_data
from prunelab.protocols.profile import transfer_widths
from prunelab.protocols.search import SearchResult, bisect_scalar, nearest_choice
from prunelab.protocols.targets import LatencyOptions, Measurer, Target, measure

MODES = ("width", "bottleneck", "depth")
MIN_MULTIPLIER = 1e-3


def scale_width(spec: ArchSpec, mult: float, round_to: int = 1) -> ArchSpec:
    """``spec`` with every width of the network times ``mult`` (the family's width multiplier)."""
    if not (math.isfinite(mult) and mult > 0):
        raise PrunelabError(f"width multiplier must be positive, got {mult}")
    rule = get_family(spec.family).scale_width
    if rule is None:
        having = [f for f in list_families() if get_family(f).scale_width is not None]
        raise PrunelabError(f"no width-multiplier rule for model family {spec.family!r}; families with one: "
                            f"{', '.join(having)} (the bottleneck mode works for every family)")
    return rule(spec, mult, round_to)


def scale_bottleneck(spec: ArchSpec, mult: float, round_to: int = 1) -> ArchSpec:
    """``spec`` with every width unit (block-internal channels) times ``mult``."""
    if not (math.isfinite(mult) and mult > 0):
        raise PrunelabError(f"bottleneck multiplier must be positive, got {mult}")
    return scale_units(spec, mult, round_to)


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
    """``spec`` at another depth. Explicit per-block widths (the family's ``width_keys``) are carried
    over stage by stage (:func:`prunelab.protocols.profile.transfer_widths`)."""
    new = spec.with_kwargs(depth=int(depth))
    explicit = [k for k in get_family(spec.family).width_keys if spec.kwargs.get(k) is not None]
    if not explicit:
        return new
    plain = new.with_kwargs(**{k: None for k in explicit})
    if int(spec.kwargs.get("depth", -1)) == int(depth):
        return spec
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
    shape = data_inputs(data)
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
