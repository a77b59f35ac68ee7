"""Copied profiles: prune once, get a family of architectures (Crowley et al. 2018, sec. 4.3).

A pruned network's *width profile* is, per width unit, the surviving channels m_b and the unpruned
width M_b. Scaling every m_b by one factor alpha (rounded, at least one channel) gives new
architectures of any size with the same shape; alpha is bisected so a member hits a parameter or
MACs target, then the member is trained from scratch. The reference code (pytorch-prunes) has no
script for this; this follows the paper's description, scaling channel counts linearly.

A profile found on one depth of a family carries over to another depth stage by stage: within each
stage (and each unit slot of a block, for blocks with several units) the per-block ratios m_b / M_b
are linearly interpolated over the blocks' relative positions, then applied to the target's widths
(e.g. WRN-40-2 -> WRN-16-2: 6 blocks per stage become 2). Stages are read from the unit names
and the spatial size of each unit's output, so the transfer refuses families and block structures
that do not correspond.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from prunelab.data.base import DataBundle
from prunelab.errors import PrunelabError
from prunelab.models import ArchSpec, WidthUnit, create, get_family, input_shape_of, input_spec_of, resolve
from prunelab.models.widths import round_width, units_of, with_unit_widths
from prunelab.protocols.build import build_and_train, data_inputs, fit_spec_to_data
from prunelab.protocols.search import SearchResult, SearchStep, bisect_scalar, not_within
from prunelab.protocols.targets import Measurer, Target, measure

#: upper end of the alpha bisection
MAX_ALPHA = 64.0
#: widest layer a copied profile may ask for; a larger scale is a typo, not a network
MAX_WIDTH = 65536


@dataclass
class ProfileEntry:
    name: str
    base_width: int
    width: int

    @property
    def ratio(self) -> float:
        return self.width / self.base_width


@dataclass
class WidthProfile:
    """Per-unit surviving widths of a pruned network (``pruned``) against its base (``base``)."""

    base: ArchSpec
    pruned: ArchSpec
    entries: list[ProfileEntry]

    @property
    def family(self) -> str:
        return self.base.family

    def ratios(self) -> dict[str, float]:
        return {e.name: e.ratio for e in self.entries}

    def widths(self) -> dict[str, int]:
        return {e.name: e.width for e in self.entries}

    def scaled(self, alpha: float, round_to: int = 1) -> ArchSpec:
        """The member at scale ``alpha``: every surviving width m_b times alpha, rounded, >= 1."""
        if not alpha > 0:
            raise PrunelabError(f"profile scale alpha must be positive, got {alpha}")
        widest = max(self.entries, key=lambda e: e.width, default=None)
        if widest is not None and widest.width * alpha > MAX_WIDTH:
            raise PrunelabError(f"profile scale alpha {alpha:g} makes unit {widest.name!r} {widest.width * alpha:,.0f} "
                                f"channels wide; alpha must be at most {MAX_WIDTH / widest.width:.4g} for this profile "
                                f"(at most {MAX_WIDTH:,} channels per layer)")
        return with_unit_widths(self.pruned, {e.name: round_width(e.width * alpha, round_to) for e in self.entries})

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "base_arch": self.base.to_dict(),
            "pruned_arch": self.pruned.to_dict(),
            "units": [{"name": e.name, "base_width": e.base_width, "width": e.width, "ratio": e.ratio}
                      for e in self.entries],
        }


def profile_between(base: ArchSpec, pruned: ArchSpec) -> WidthProfile:
    """The profile of ``pruned`` (same family and layout as ``base``, narrower width units)."""
    if base.family != pruned.family:
        raise PrunelabError(f"pruned architecture is a {pruned.family} network but its base is {base.family}")
    base_units, pruned_units = units_of(base), units_of(pruned)
    if [u.name for u in base_units] != [u.name for u in pruned_units]:
        raise PrunelabError(f"pruned {pruned.family} architecture has {len(pruned_units)} width units, its base "
                            f"{len(base_units)}: the blocks do not correspond")
    entries = [ProfileEntry(b.name, int(b.width), int(p.width)) for b, p in zip(base_units, pruned_units)]
    return WidthProfile(base, pruned, entries)


def read_profile(source: Any, base: str | ArchSpec | dict | None = None) -> WidthProfile:
    """The width profile of a pruned model: a checkpoint path, a structured plan, or a narrowed spec
    (then ``base`` names the unpruned model)."""
    from prunelab.protocols.scratch import pruned_architecture

    arch = pruned_architecture(source, base)
    if arch.plan is not None:
        raise PrunelabError("this plan also prunes channels outside the width units (e.g. residual streams); "
                            "profiles are defined on width units, so copy a block-internal plan")
    if arch.dense is None:
        raise PrunelabError("reading a width profile needs the unpruned model: pass its name as base (--base)")
    return profile_between(resolve(arch.dense), arch.spec)


# --------------------------------------------------------------------------------------- transfer


@dataclass(frozen=True)
class _Slot:
    stage: str
    resolution: tuple[int, ...]
    slot: str


def _layout(spec: ArchSpec, units: list[WidthUnit]) -> dict[_Slot, list[WidthUnit]]:
    """Units grouped by stage (name prefix + output resolution) and slot within a block, in order."""
    sizes: dict[str, tuple[int, ...]] = {}
    with torch.random.fork_rng(devices=[]):
        model = create(spec)
    hooks = []
    for u in units:
        module = model.get_submodule(u.bn or u.conv)
        hooks.append(module.register_forward_hook(
            lambda _m, _i, out, name=u.name: sizes.__setitem__(name, tuple(out.shape[2:]))))
    try:
        model.eval()
        with torch.no_grad():
            model(_probe_input(spec))
    finally:
        for h in hooks:
            h.remove()
    layout: dict[_Slot, list[WidthUnit]] = {}
    for u in units:
        parts = u.name.split(".")
        numeric = [i for i, p in enumerate(parts) if re.fullmatch(r"\d+", p)]
        cut = numeric[-1] if numeric else len(parts)
        key = _Slot(".".join(parts[:cut]), sizes.get(u.name, ()), ".".join(parts[cut + 1:]))
        layout.setdefault(key, []).append(u)
    return layout


def _probe_input(spec: ArchSpec):
    """One example input of ``spec``'s model: the family's own (token ids), else zeros of the probe shape."""
    if get_family(spec.family).inputs is not None:
        return input_spec_of(spec).example(1, zeros=True)
    return torch.zeros(1, *_probe_shape(spec))


def _probe_shape(spec: ArchSpec) -> tuple[int, ...]:
    # Only the order of output resolutions matters here; the family's default input, with the
    # spec's own input channels, always runs.
    shape = tuple(input_shape_of(spec))
    if "in_channels" in spec.kwargs and shape:
        shape = (int(spec.kwargs["in_channels"]),) + shape[1:]
    return shape


def _describe(layout: dict[_Slot, list[WidthUnit]]) -> str:
    return ", ".join(f"{k.stage}{'.' + k.slot if k.slot else ''}@{'x'.join(map(str, k.resolution))}:{len(v)}"
                     for k, v in layout.items())


def transfer_ratios(profile: WidthProfile, target: ArchSpec) -> dict[str, float]:
    """Per-unit ratios for ``target`` (same family), interpolated stage by stage from ``profile``."""
    if profile.family != target.family:
        raise PrunelabError(f"a profile of a {profile.family} network cannot be applied to a {target.family} "
                            "network; profiles carry over only within one family")
    src_units, dst_units = units_of(profile.pruned), units_of(target)
    src, dst = _layout(profile.pruned, src_units), _layout(target, dst_units)
    src_keys = [(k.stage, k.slot) for k in src]
    dst_keys = [(k.stage, k.slot) for k in dst]
    if src_keys != dst_keys:
        raise PrunelabError(f"block structures differ: the profile's {profile.family} has stages "
                            f"[{_describe(src)}], the target has [{_describe(dst)}]")
    ratios = profile.ratios()
    out: dict[str, float] = {}
    for (_skey, s_units), (_dkey, d_units) in zip(src.items(), dst.items()):
        xs = (np.arange(len(s_units)) + 0.5) / len(s_units)
        ys = np.array([ratios[u.name] for u in s_units])
        xt = (np.arange(len(d_units)) + 0.5) / len(d_units)
        for u, r in zip(d_units, np.interp(xt, xs, ys)):
            out[u.name] = float(r)
    return out


def transfer_profile(profile: WidthProfile, target: ArchSpec, round_to: int = 1) -> WidthProfile:
    """``profile`` carried over to ``target``: the target's unit widths times the interpolated ratios."""
    ratios = transfer_ratios(profile, target)
    units = units_of(target)
    widths = {u.name: round_width(u.width * ratios[u.name], round_to) for u in units}
    pruned = with_unit_widths(target, widths, units)
    return WidthProfile(target, pruned, [ProfileEntry(u.name, int(u.width), widths[u.name]) for u in units])


def transfer_widths(source: ArchSpec, target_plain: ArchSpec) -> ArchSpec:
    """``source``'s explicit unit widths carried over to ``target_plain`` (another depth); the ratios
    are taken against ``source`` with its explicit width lists (the family's ``width_keys``) removed."""
    keys = get_family(source.family).width_keys
    plain = source.with_kwargs(**{k: None for k in keys if source.kwargs.get(k) is not None})
    return transfer_profile(profile_between(plain, source), target_plain).pruned


# --------------------------------------------------------------------------------------- scaling


def profile_to_target(profile: WidthProfile, target: Target, input_shape: tuple[int, ...], *, round_to: int = 1,
                      tol: float = 0.02, latency=None) -> SearchResult:
    """Bisect alpha so the profile's member hits ``target`` within ``tol`` (at least one channel per unit).

    On a small network one rounding step of every unit at once can jump over the tolerance band;
    the widths at the nearest alpha are then rounded unit by unit instead (:func:`_round_units`),
    so each stays within one rounding step of ``m_b * alpha``."""
    measurer = Measurer(target.metric, input_shape, latency) if latency else Measurer(target.metric, input_shape)
    hi = 1.0
    while measurer(profile.scaled(hi, round_to)) < target.value and hi < MAX_ALPHA:
        hi = min(MAX_ALPHA, hi * 2)
    search = bisect_scalar(lambda a: profile.scaled(a, round_to), measurer, target, lo=1e-3, hi=hi, tol=tol,
                           name="alpha", what="member of the profile's family", strict=False)
    if abs(search.rel_error) <= tol:
        return search
    refined = _round_units(profile, search, measurer, round_to)
    if abs(refined.rel_error) > tol:
        raise not_within("alpha", _best_step(refined), target, tol)
    return refined


def _round_units(profile: WidthProfile, search: SearchResult, measurer, round_to: int) -> SearchResult:
    """Per-unit rounding at the alpha nearest the target: start from every width ``m_b * alpha``
    rounded down, then round units up one at a time, largest remainder first (the order that keeps
    the widths closest to the exact profile), and keep the member nearest the target."""
    goal = search.target.value
    exact = {e.name: e.width * search.x / round_to for e in profile.entries}
    widths = {name: max(1, math.floor(v)) * round_to for name, v in exact.items()}
    order = sorted(exact, key=lambda name: exact[name] - math.floor(exact[name]), reverse=True)
    steps = list(search.steps)
    for name in [None, *order]:
        if name is not None:
            if widths[name] >= math.ceil(exact[name]) * round_to:
                continue
            widths[name] += round_to
        spec = with_unit_widths(profile.pruned, dict(widths))
        steps.append(SearchStep(search.x, float(measurer(spec)), spec))
        if steps[-1].value >= goal:
            break
    best = min(steps, key=lambda s: (abs(s.rel_error(goal)), s.value))
    return SearchResult(search.name, best.x, best.spec, best.value, search.target, steps)


def _best_step(result: SearchResult) -> SearchStep:
    return SearchStep(result.x, result.value, result.spec)


@dataclass
class CopyResult:
    """One member of a copied profile's family."""

    profile: WidthProfile
    spec: ArchSpec
    alpha: float
    params: int
    macs: int
    search: SearchResult | None = None
    model: nn.Module | None = field(default=None, repr=False)
    result: Any = field(default=None, repr=False)
    config: Any = field(default=None, repr=False)

    def unit_widths(self) -> dict[str, int]:
        return {u.name: int(u.width) for u in units_of(self.spec)}

    def to_dict(self) -> dict[str, Any]:
        return {
            "protocol": "copied-profile",
            "alpha": self.alpha,
            "arch": self.spec.to_dict(),
            "profile_base": self.profile.base.to_dict(),
            "widths": self.unit_widths(),
            "params": self.params,
            "macs": self.macs,
            "search": self.search.to_dict() if self.search else None,
            "train": self.config.to_dict() if self.config is not None else None,
            "final": dict(getattr(self.result, "final", {}) or {}) if self.result is not None else None,
        }


def copy_profile(profile: WidthProfile, data: DataBundle, config=None, *, target: Target | None = None,
                 alpha: float | None = None, onto: str | ArchSpec | dict | None = None, round_to: int = 1,
                 tol: float = 0.02, train: bool = True) -> CopyResult:
    """One member of the profile's family: at scale ``alpha`` or at the alpha hitting ``target``,
    optionally carried over to another architecture of the family first (``onto``), then trained from
    scratch with ``config``."""
    if (alpha is None) == (target is None):
        raise PrunelabError("give exactly one of a scale alpha or a target")
    profile = _fit_profile(profile, data)
    if onto is not None:
        profile = transfer_profile(profile, fit_spec_to_data(resolve(onto), data), round_to)
    shape = data_inputs(data)
    search = None
    if target is not None:
        search = profile_to_target(profile, target, shape, round_to=round_to, tol=tol)
        spec, alpha = search.spec, search.x
    else:
        spec = profile.scaled(float(alpha), round_to)
    with torch.random.fork_rng(devices=[]):
        probe = create(spec)
    out = CopyResult(profile, spec, float(alpha), int(measure(probe, "params", shape)),
                     int(measure(probe, "macs", shape)), search)
    if train:
        if config is None:
            raise PrunelabError("training a copied profile needs a training config")
        out.model, out.result = build_and_train(spec, data, config)
        out.config = config
    return out


def _fit_profile(profile: WidthProfile, data: DataBundle) -> WidthProfile:
    base, pruned = fit_spec_to_data(profile.base, data), fit_spec_to_data(profile.pruned, data)
    if base == profile.base and pruned == profile.pruned:
        return profile
    return WidthProfile(base, pruned, profile.entries)
