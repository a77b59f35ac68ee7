"""Expanding a study spec into runs: the product of its axes, ``runs`` entries, ``exclude`` /
``include`` patterns, and the checks each method kind makes on its runs (protocols, target keys, models,
model arguments, the kind's own ``resolve``).
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prunelab.errors import PrunelabError, unknown_choice
from prunelab.study.run import RunConfig, canonical_json
from prunelab.study.spec.yaml_lines import LineMap, LineSeq, at_line, plain

if TYPE_CHECKING:  # the spec's type only: the spec calls this module, not the other way
    from prunelab.study.spec.model import MethodSpec, StudySpec

#: runs one spec may expand to (each is a training run; the largest recipe has a few hundred)
MAX_RUNS = 100_000
#: keys of a ``runs:`` entry (each also in the plural): singular -> the study axis it replaces
ENTRY_KEYS = {"model": "models", "method": "methods", "target": "targets", "protocol": "protocols",
              "seed": "seeds"}


def _matches(pattern: dict[str, list[Any]], run: RunConfig) -> bool:
    for key, values in pattern.items():
        actual = {"model": run.model_label, "method": run.method, "kind": run.kind, "protocol": run.protocol,
                  "target": run.target, "seed": run.seed}[key]
        if key == "target":
            if canonical_json(actual) not in {canonical_json(v) for v in values}:
                return False
        elif actual not in values:
            return False
    return True


def _axis(kind_allows: tuple | None, requested: Iterable[Any]) -> list[Any]:
    """A kind that declares ``()`` collapses the axis to one ``None`` entry."""
    if kind_allows == ():
        return [None]
    return list(requested)


def expand_runs(spec: StudySpec) -> list[RunConfig]:
    """All runs of ``spec``, checked and resolved, in execution order (what :meth:`StudySpec.expand` returns)."""
    from prunelab.study.tasks import get_kind

    where = spec.where
    doc = spec.nodes.get("doc")
    entries = spec.runs or [{}]
    entry_nodes = spec.nodes.get("runs") or [doc] * len(entries)
    models = {m.label: m for m in spec.models}
    candidates: list[tuple[RunConfig, Any]] = []
    planned = 0
    for entry, node in zip(entries, entry_nodes):
        methods = [spec.method(n) for n in entry.get("method", [m.name for m in spec.methods])]
        labels = entry.get("model", list(models))
        seeds = entry.get("seed", spec.seeds)
        for method in methods:
            if method.name in spec.unchecked:
                continue
            kind = get_kind(method.kind)
            protocols = entry.get("protocol", method.protocols if method.protocols is not None else spec.protocols)
            targets = entry.get("target", method.targets if method.targets is not None else spec.targets)
            axes = {"protocols": _axis(kind.protocols, protocols), "targets": _axis(kind.targets, targets),
                    "models": labels, "seeds": seeds}
            empty = next((axis for axis, values in axes.items() if not values), None)
            if empty is not None:
                raise _empty_axis_error(spec, entry, node, method, empty)
            planned += math.prod(len(v) for v in axes.values())
            if planned > MAX_RUNS:  # counted before any run is built
                raise where.error(doc, None, f"the study expands to more than {MAX_RUNS:,} runs (at least "
                                             f"{planned:,}); the limit is {MAX_RUNS:,}: split it or fix its axes")
            for protocol, target, label, seed in itertools.product(*axes.values()):
                if kind.protocols and protocol is None:
                    protocol = kind.protocols[0]
                model = models[label]
                train = {**spec.train, **method.train, "seed": seed, "progress": False}
                from prunelab.train.config import TrainConfig

                run = RunConfig(study=spec.name, model=model.name, model_label=label, data=spec.data.to_dict(),
                                method=method.name, kind=method.kind, seed=seed,
                                train=TrainConfig.from_dict(train).to_dict(), params=copy.deepcopy(method.params),
                                target=copy.deepcopy(target), protocol=protocol,
                                model_kwargs=copy.deepcopy(model.kwargs), measure=copy.deepcopy(spec.measure))
                candidates.append((run, node))

    for name in ("exclude", "include"):
        patterns = getattr(spec, name)
        for pattern, pnode in zip(patterns, spec.nodes.get(name) or [None] * len(patterns)):
            if not any(_matches(pattern, run) for run, _ in candidates) and not _may_match_unchecked(spec, pattern):
                raise where.error(pnode, None, f"{name} pattern {plain(pattern)} matches no run")
    if spec.exclude:
        candidates = [(r, n) for r, n in candidates if not any(_matches(p, r) for p in spec.exclude)]
    if spec.include:
        candidates = [(r, n) for r, n in candidates if any(_matches(p, r) for p in spec.include)]

    zoo: list[str] | None = None
    runs: dict[str, RunConfig] = {}
    for run, node in candidates:
        kind = get_kind(run.kind)
        method_node = _method_node(spec, run.method)
        if method_node is None:
            method_node = node
        if kind.protocols is not None and kind.protocols and run.protocol not in kind.protocols:
            raise where.error(method_node, None,
                              f"method {run.method!r} (kind {run.kind}) cannot run protocol {run.protocol!r}; "
                              f"valid: {', '.join(kind.protocols)}; restrict it with 'protocols:' on the method "
                              f"or an 'exclude' pattern")
        if kind.targets:
            if run.target is None:
                raise where.error(method_node, None, f"method {run.method!r} (kind {run.kind}) needs a target with "
                                                     f"one of the keys {', '.join(kind.targets)}")
            key = next(iter(run.target))
            if key not in kind.targets:
                raise where.error(method_node, None,
                                  f"method {run.method!r} (kind {run.kind}) cannot aim at target {key!r}; valid: "
                                  f"{', '.join(kind.targets)}; restrict it with 'targets:' on the method or an "
                                  f"'exclude' pattern")
        if kind.uses_model:
            if zoo is None:
                from prunelab.models import list_models

                zoo = list_models()
            if run.model not in zoo:
                raise where.error(_model_node(spec, run.model_label), None,
                                  str(unknown_choice("model", run.model, zoo)))
            unknown = _unknown_model_kwargs(run.model, run.model_kwargs)
            if unknown:
                raise where.error(_model_node(spec, run.model_label), None, unknown)
        if kind.resolve is not None:
            try:
                run = kind.resolve(run)
            except PrunelabError as exc:
                raise where.error(method_node, None, f"method {run.method!r}: {exc}") from None
        runs.setdefault(run.run_id, run)
    if not runs and not spec.unchecked:
        raise where.error(doc, None, "the study has no runs (check 'exclude', 'include' and 'runs')")
    return list(runs.values())


def _may_match_unchecked(spec: StudySpec, pattern: dict[str, list[Any]]) -> bool:
    """Whether a pattern may select runs of unchecked methods (see :attr:`StudySpec.unchecked`)."""
    if not spec.unchecked:
        return False
    kinds = {m.kind for m in spec.methods if m.name in spec.unchecked}
    return not ({"method", "kind"} & set(pattern)) or bool(set(pattern.get("method", [])) & set(spec.unchecked)) \
        or bool(set(pattern.get("kind", [])) & kinds)


def _empty_axis_error(spec: StudySpec, entry: dict[str, Any], entry_node: Any, method: MethodSpec,
                      axis: str) -> PrunelabError:
    """A method none of whose runs would exist because one of its axes is an empty list: the error points
    at that list (a ``runs`` entry's, the method's own, or the study's)."""
    singular = next(s for s, p in ENTRY_KEYS.items() if p == axis)
    doc = spec.nodes.get("doc")
    if singular in entry:
        key = next((k for k in (axis, singular) if isinstance(entry_node, LineMap) and k in entry_node), None)
        node, whose = entry_node, "a runs entry's"
    elif axis in ("protocols", "targets") and getattr(method, axis) is not None:
        node, key, whose = _method_node(spec, method.name), axis, "its"
    else:
        node, key, whose = doc, axis, "the study's"
    return spec.where.error(node, key, f"method {method.name!r} expands to no runs: {whose} {axis!r} list is "
                                        f"empty")


def _unknown_model_kwargs(model: str, kwargs: dict[str, Any]) -> str | None:
    """A message when ``kwargs`` names arguments the model's constructor does not take, else None."""
    if not kwargs:
        return None
    import inspect

    from prunelab.models import get_entry, get_family

    params = inspect.signature(get_family(get_entry(model).family).build).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    unknown = sorted(k for k in kwargs if k not in params)
    if not unknown:
        return None
    return f"model {model!r}: unknown kwargs {unknown}; valid: {', '.join(params)}"


def _method_node(spec: StudySpec, name: str) -> Any:
    """Where method ``name`` is listed (its mapping, or the line of its bare name)."""
    return _axis_node(spec, "methods", name, ("name",))


def _model_node(spec: StudySpec, label: str) -> Any:
    """Where the model labelled ``label`` is listed (by its label or its zoo name)."""
    return _axis_node(spec, "models", label, ("label", "name"))


def _axis_node(spec: StudySpec, axis: str, value: str, keys: tuple[str, ...]) -> Any:
    """The item of the study's ``axis`` list that names ``value`` under one of ``keys`` (or is ``value``),
    for error lines; the list's own line when none does, None without a parsed document."""
    doc = spec.nodes.get("doc")
    if not isinstance(doc, LineMap):
        return None
    items = doc.get(axis) or []
    for i, item in enumerate(items):
        if isinstance(item, LineMap) and value in tuple(item.get(k) for k in keys):
            return item
        if item == value and isinstance(items, LineSeq):
            return at_line(items.item_lines[i])
    return at_line(doc.key_lines.get(axis, doc.line))
