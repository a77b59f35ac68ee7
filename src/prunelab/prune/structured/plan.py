"""Plans: a pruned model as its base architecture plus the channels each group keeps.

A plan is plain JSON::

    {"format": "prunelab-channel-plan", "version": 1,
     "base": {"family": ..., "kwargs": {...}},        # ArchSpec of the unpruned model (or None)
     "scope": "internal" | "all",
     "input_shape": [C, H, W],                         # the tracing input (its first tensor)
     "inputs": {...},                                  # InputSpec.to_dict(), when more than one float tensor
     "groups": [{"name": ..., "root": <layer path>, "width": W, "kept": [int, ...]}, ...]}

Rebuilding (:func:`apply_plan`) constructs the base model from its constructor, asks Torch-Pruning
for each group again by its root layer, and compresses; the weights then come from a plain
state_dict loaded with ``weights_only=True`` (:func:`prunelab.checkpoint.load_model`). No module is
ever pickled. Pruning an already pruned checkpoint composes the plans (kept indices are mapped back
to the base model's channels).
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from prunelab.errors import PrunelabError
from prunelab.models.inputs import spec_or_shape_of
from prunelab.prune.structured.groups import (
    GroupSet,
    build_graph,
    is_producer,
    layer_group,
    make_group,
    out_width,
    read_group,
)

PLAN_FORMAT = "prunelab-channel-plan"
PLAN_VERSION = 1


def make_plan(groups: GroupSet, keep: dict[str, list[int]], base: dict | None,
              previous: dict | None = None) -> dict[str, Any]:
    """The plan for ``groups`` keeping ``keep`` (group name -> channels of the model that was pruned).

    ``previous``: the plan the pruned model itself came from; the result is then relative to its base.
    """
    records = []
    for g in groups:
        kept = sorted(int(c) for c in keep.get(g.name, range(g.width)))
        record = {"name": g.name, "root": g.root, "width": g.width, "kept": kept,
                  "unit": None if g.unit is None else {"key": g.unit.key, "index": g.unit.index}}
        if g.kind != "channels":  # a transformer unit: heads (key/value heads) or mlp (hidden units)
            record["kind"] = g.kind
        records.append(record)
    plan = {"format": PLAN_FORMAT, "version": PLAN_VERSION, "base": base, "scope": groups.scope,
            "input_shape": list(groups.input_shape), "groups": records}
    if not groups.inputs.is_plain:  # token ids, tuples, dicts: the full input spec
        plan["inputs"] = groups.inputs.to_dict()
    return compose(previous, plan) if previous else plan


def compose(first: dict, second: dict) -> dict:
    """The plan of pruning by ``first`` then by ``second`` (whose indices refer to ``first``'s result)."""
    check_plan(first)
    out = {k: v for k, v in second.items() if k != "groups"}
    out["base"] = first.get("base")
    out["scope"] = first["scope"] if first["scope"] == second["scope"] else "mixed"
    old = {r["root"]: r for r in first["groups"]}
    groups = []
    seen = set()
    for r in second["groups"]:
        prev = old.get(r["root"])
        if prev is not None and len(prev["kept"]) == r["width"]:
            kept = [prev["kept"][i] for i in r["kept"]]
            groups.append({**r, "width": prev["width"], "kept": kept})
        else:
            groups.append(dict(r))
        seen.add(r["root"])
    groups.extend(dict(r) for root, r in old.items() if root not in seen)
    out["groups"] = groups
    return out


def check_plan(plan: Any) -> dict:
    if not isinstance(plan, dict) or plan.get("format", PLAN_FORMAT) != PLAN_FORMAT:
        raise PrunelabError("not a prunelab channel plan (missing 'format': 'prunelab-channel-plan')")
    groups = plan.get("groups")
    if not isinstance(groups, list) or any(not isinstance(g, dict) for g in groups):
        raise PrunelabError("channel plan has no 'groups' list")
    for g in groups:
        for key in ("root", "width", "kept"):
            if key not in g:
                raise PrunelabError(f"channel plan group {g.get('name', '?')!r} lacks {key!r}")
        kept = g["kept"]
        if not isinstance(kept, list) or any(isinstance(c, bool) or not isinstance(c, int) for c in kept):
            raise PrunelabError(f"channel plan group {g.get('name', g['root'])!r}: 'kept' must be a list of ints")
        if len(set(kept)) != len(kept) or any(c < 0 or c >= int(g["width"]) for c in kept):
            raise PrunelabError(f"channel plan group {g.get('name', g['root'])!r}: kept channels must be distinct "
                                f"and lie in [0, {g['width']})")
    if not plan.get("input_shape") and not plan.get("inputs"):
        raise PrunelabError("channel plan has no 'input_shape' (or 'inputs')")
    return plan


def _groups_for_plan(model: nn.Module, plan: dict) -> GroupSet:
    """Rebuild the plan's groups on a fresh base model, addressed by their root layers."""
    from prunelab.prune.structured.groups import unit_group
    from prunelab.prune.structured.transformer import find_units

    inputs = spec_or_shape_of(plan)
    units = find_units(model)
    by_unit = {u.name: u for u in units.all()}
    traced = build_graph(model, inputs, units)
    groups = []
    for r in plan["groups"]:
        root = r["root"]
        if r.get("kind") in ("heads", "mlp"):
            unit = by_unit.get(str(r.get("name")))
            if unit is None or unit.width != int(r["width"]):
                raise PrunelabError(f"plan does not fit the base model: no {r['kind']} unit {r.get('name')!r} of "
                                    f"width {r['width']}")
            if len(r["kept"]) < unit.width:
                groups.append(unit_group(unit))
            continue
        if traced.graph is None:
            raise PrunelabError(f"plan group {r.get('name', root)!r} cannot be rebuilt: {traced.failure}")
        try:
            module = model.get_submodule(root)
        except AttributeError:
            raise PrunelabError(f"plan does not fit the base model: no layer {root!r}") from None
        if not is_producer(module):
            raise PrunelabError(f"plan does not fit the base model: {root!r} is a {type(module).__name__}, "
                                f"not a convolution or linear layer")
        if module not in traced.graph.module2node:
            if len(r["kept"]) == int(r["width"]) and int(r["width"]) == out_width(module):
                continue
            raise PrunelabError(f"plan does not fit the base model: layer {root!r} is not used by the forward pass")
        # a group through a grouped convolution is narrower than its root layer (groups.fold_grouped)
        found = read_group(traced, layer_group(traced, module, out_width(module)), root)
        if found.width != int(r["width"]):
            raise PrunelabError(f"plan does not fit the base model: the group of layer {root!r} has {found.width} "
                                f"channels, the plan expects {r['width']}")
        if len(r["kept"]) == found.width:
            continue
        if found.problems:
            raise PrunelabError(f"plan group {r.get('name', root)!r} cannot be compressed: {found.problems[0]}")
        groups.append(make_group(traced, found, str(r.get("name", root))))
    return GroupSet(groups, str(plan.get("scope", "all")), inputs.shape, traced.layers,
                    inputs=None if inputs.is_plain else inputs)


def apply_plan(model: nn.Module, plan: dict, check: bool = True) -> nn.Module:
    """Compress a freshly built base model to ``plan`` (see the module docstring); returns the model.

    With ``check`` the result is compared with the base model masked to the plan (compressed ==
    masked in eval mode), as after every compression.
    """
    from prunelab.prune.structured.compress import prune_in_place, verify

    check_plan(plan)
    groups = _groups_for_plan(model, plan)
    by_name = {str(r.get("name", r["root"])): r for r in plan["groups"]}
    keep = {g.name: (by_name.get(g.name) or next(r for r in plan["groups"] if r["root"] == g.root))["kept"]
            for g in groups}
    if not check:
        return prune_in_place(model, groups, keep)
    import copy

    reference = copy.deepcopy(model)
    prune_in_place(model, groups, keep)
    verify(reference, model, groups, keep)
    return model


def spec_of_compressed(plan: dict):
    """The :class:`~prunelab.models.ArchSpec` of the pruned architecture, built from its constructor.

    Defined for zoo models pruned in scope ``internal`` (every group is a family width unit): the
    unit widths are written back into the constructor's keyword arguments, so protocols can train the
    pruned architecture from scratch (Crowley et al. 2018, sec. 4) or copy its profile. Other plans
    have no constructor form and raise :class:`PrunelabError`.
    """
    from prunelab.models import ArchSpec

    check_plan(plan)
    if not plan.get("base"):
        raise PrunelabError("plan has no base architecture spec (the model is not from the zoo)")
    if plan.get("scope") != "internal":
        raise PrunelabError(f"only scope 'internal' plans map onto constructor widths, this one is "
                            f"{plan.get('scope')!r}; keep the plan and its state_dict instead")
    spec = ArchSpec.from_dict(plan["base"])
    widths: dict[str, int] = {}
    for r in plan["groups"]:
        if not r.get("unit"):
            raise PrunelabError(f"plan group {r.get('name')!r} is not a width unit of the family")
        widths[str(r["name"])] = len(r["kept"])
    return _write_widths(spec, plan, widths)


def _write_widths(spec, plan: dict, widths: dict[str, int]):
    """Write unit widths into the spec's kwargs with the registry's :func:`spec_from_units`."""
    from prunelab.models import WidthUnit
    from prunelab.models.registry import spec_from_units

    units = [WidthUnit(str(r["name"]), None, r["root"], r["unit"]["key"], r["unit"]["index"], widths[str(r["name"])])
             for r in plan["groups"]]
    return spec_from_units(spec, units)


def save_pruned(path: str | os.PathLike, model: nn.Module, plan: dict, meta: dict | None = None):
    """Save a compressed model as a prunelab checkpoint: base spec + plan + plain state_dict."""
    from prunelab.io import save_checkpoint

    check_plan(plan)
    if not plan.get("base"):
        raise PrunelabError("cannot save a pruned model without a base architecture spec: register your model's "
                            "constructor with prunelab.models.register_family(name, build) and pass "
                            "spec=ArchSpec(name, kwargs) to StructuredPruner (or export it with to_onnx)")
    return save_checkpoint(path, arch=plan["base"], state_dict=model.state_dict(), plan=plan, meta=meta or {})


