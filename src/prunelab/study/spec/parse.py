"""Reading a study spec: the file (bounded), the YAML (with lines), the top-level keys, the
``exclude`` / ``include`` patterns and ``runs`` entries; then the spec is expanded once, which checks
every combination, and its claims are checked against the runs.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from prunelab.errors import PrunelabError, unknown_choice
from prunelab.study.spec.expand import ENTRY_KEYS
from prunelab.study.spec.fields import (
    as_list,
    optional_str,
    parse_data,
    parse_measure,
    parse_methods,
    parse_models,
    parse_protocols,
    parse_seeds,
    parse_targets,
    parse_tracker,
    parse_train,
    string_list,
)
from prunelab.study.spec.model import MethodSpec, StudySpec
from prunelab.study.spec.yaml_lines import LineMap, SpecLoader, Where, plain
from prunelab.study.targets import check_target
from prunelab.study.yaml_limits import MAX_BYTES, YAMLLimitError, check_size

TOP_KEYS = ("name", "description", "data", "train", "models", "methods", "targets", "protocols", "seeds",
            "measure", "plugins", "cache", "exclude", "include", "runs", "tracker", "claims")
#: a study name names its folder (studies/<name>): no path separators, no '.' or '..', no hidden folder
NAME_RULE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
PATTERN_KEYS = ("model", "method", "kind", "protocol", "target", "seed")


def load_spec(path: str | os.PathLike, *, import_user_code: bool = True) -> StudySpec:
    """Read and check a study spec file (see module doc). Raises a one-line PrunelabError.

    ``import_user_code=False`` (``study validate``) imports no ``plugins``: each must be found on the
    module path, and methods of kinds no imported module registers are left unchecked
    (:attr:`StudySpec.unchecked`)."""
    path = Path(path)
    if not path.exists():
        raise PrunelabError(f"study spec not found: {path}")
    if not path.is_file():
        raise PrunelabError(f"study spec {path} is not a regular file")
    try:
        with path.open("rb") as fh:  # never more than the limit, whatever the file claims to be
            data = fh.read(MAX_BYTES + 1)
        check_size(len(data) if len(data) <= MAX_BYTES else path.stat().st_size, "the study spec")
        text = data.decode("utf-8")
    except YAMLLimitError as exc:
        raise PrunelabError(f"{path}: {exc.message}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PrunelabError(f"cannot read study spec {path}: {exc}") from exc
    return parse_spec(text, source=str(path), import_user_code=import_user_code)


def parse_spec(text: str, source: str | None = None, *, import_user_code: bool = True) -> StudySpec:
    """Parse and check a spec from YAML text; ``source`` names the file in error messages
    (``import_user_code``: see :func:`load_spec`)."""
    where = Where(source)
    try:
        check_size(len(text.encode("utf-8", "surrogatepass")), "the study spec")
        doc = yaml.load(text, Loader=SpecLoader)  # noqa: S506 -- SpecLoader is a SafeLoader subclass
    except YAMLLimitError as exc:
        line = f":{exc.line}" if exc.line else ""
        raise PrunelabError(f"{source or 'study spec'}{line}: {exc.message}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f"{mark.line + 1}" if mark is not None else "?"
        what = " ".join(str(exc.problem or exc.context or "syntax error").split())
        raise PrunelabError(f"{source or 'study spec'}:{line}: malformed YAML: {what}") from None
    except yaml.YAMLError as exc:
        raise PrunelabError(f"{source or 'study spec'}: malformed YAML: {exc}") from None
    if doc is None:
        raise PrunelabError(f"{source or 'study spec'}: empty study spec")
    if not isinstance(doc, LineMap):
        raise PrunelabError(f"{where()}a study spec is a mapping with keys {', '.join(TOP_KEYS)}")
    spec = _parse(doc, where, import_user_code)
    spec.text = text
    spec.source = source
    runs = spec.expand()  # checks names, targets and combinations before anything runs
    if spec.claims:
        from prunelab.study.claims import check_claims

        spec.claims = check_claims(spec.claims, runs, spec.measure, where.error)
    return spec


def spec_from_dict(d: dict[str, Any]) -> StudySpec:
    """Build a spec from a plain mapping (the Python equivalent of a YAML file)."""
    return parse_spec(yaml.safe_dump(plain(d), sort_keys=False))


def _parse(doc: LineMap, where: Where, import_user_code: bool = True) -> StudySpec:
    unknown = [k for k in doc if k not in TOP_KEYS]
    if unknown:
        raise where.error(doc, unknown[0], f"unknown study key {unknown[0]!r}; valid keys: {', '.join(TOP_KEYS)}")
    for key in ("name", "data", "models", "methods"):
        if key not in doc:
            raise where.error(doc, None, f"study spec needs {key!r}")
    name = doc["name"]
    if not isinstance(name, str) or not NAME_RULE.fullmatch(name.strip()):
        raise where.error(doc, "name", f"study name must be 1 to 100 letters, digits, '.', '_' or '-', starting "
                                       f"with a letter or digit (it names the study's folder), got {name!r}")
    plugins = string_list(doc, "plugins", where)
    if plugins:  # first: they may register the method kinds (and more) that the rest of the spec names
        from prunelab.study.tasks import find_plugins, import_plugins

        try:
            import_plugins(plugins) if import_user_code else find_plugins(plugins)
        except PrunelabError as exc:
            raise where.error(doc, "plugins", str(exc)) from None
    spec = StudySpec(
        name=name.strip(),
        description=str(doc.get("description") or ""),
        data=parse_data(doc, where),
        train=parse_train(doc, "train", where),
        models=parse_models(doc, where),
        methods=parse_methods(doc, where, lenient=bool(plugins) and not import_user_code),
        seeds=parse_seeds(doc, "seeds", where) if "seeds" in doc else [0],
        targets=parse_targets(doc, "targets", where) if doc.get("targets") is not None else [None],
        protocols=parse_protocols(doc, "protocols", where) if doc.get("protocols") is not None else [None],
        measure=parse_measure(doc, where),
        plugins=plugins,
        cache=optional_str(doc, "cache", where),
        tracker=parse_tracker(doc, where),
        where=where,
    )
    spec.nodes = {"doc": doc}
    spec.unchecked = [m.name for m in spec.methods if m.kind in _unregistered_kinds(spec.methods)]
    spec.exclude, spec.nodes["exclude"] = _parse_patterns(doc, "exclude", spec, where)
    spec.include, spec.nodes["include"] = _parse_patterns(doc, "include", spec, where)
    spec.runs, spec.nodes["runs"] = _parse_entries(doc, spec, where)
    if doc.get("claims") is not None:
        from prunelab.study.claims import parse_claims

        spec.claims = parse_claims(doc["claims"], doc, where.error)
    return spec


def _unregistered_kinds(methods: list[MethodSpec]) -> set[str]:
    """Kinds of ``methods`` that no imported module registered (only possible with lenient parsing)."""
    from prunelab.study.tasks import list_kinds

    known = set(list_kinds())
    return {m.kind for m in methods if m.kind not in known}


def _check_pattern_values(spec: StudySpec, item: LineMap, key: str, values: list[Any], where: Where) -> list[Any]:
    """Normalise and check the values a pattern or a runs entry names."""
    if key == "model":
        labels = [m.label for m in spec.models]
        for v in values:
            if v not in labels:
                raise where.error(item, key if key in item else None, str(unknown_choice("model", v, labels)))
    elif key == "method":
        names = [m.name for m in spec.methods]
        for v in values:
            if v not in names:
                raise where.error(item, key if key in item else None, str(unknown_choice("method", v, names)))
    elif key == "kind":
        kinds = {m.kind for m in spec.methods}
        for v in values:
            if v not in kinds:
                raise where.error(item, key, str(unknown_choice("method kind", v, kinds)))
    elif key == "protocol":
        from prunelab.study.tasks import PROTOCOLS

        values = [None if v == "none" else v for v in values]
        for v in values:
            if v is not None and v not in PROTOCOLS:
                raise where.error(item, key, str(unknown_choice("protocol", v, PROTOCOLS)))
    elif key == "target":
        try:
            values = [check_target(None if v == "none" else v) for v in values]
        except PrunelabError as exc:
            raise where.error(item, key, str(exc)) from None
    elif key == "seed" and not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise where.error(item, key, f"seeds must be integers, got {values!r}")
    return values


def _parse_patterns(doc: LineMap, key: str, spec: StudySpec, where: Where) -> tuple[list[dict], list[LineMap]]:
    items = doc.get(key) or []
    if not isinstance(items, list):
        raise where.error(doc, key, f"{key!r} must be a list of patterns like {{method: gmp, protocol: scratch-e}}")
    out, nodes = [], []
    for item in items:
        if not isinstance(item, LineMap) or not item:
            raise where.error(doc, key, f"a {key} pattern is a mapping over {', '.join(PATTERN_KEYS)}; got {item!r}")
        pattern = {}
        for k, v in item.items():
            if k not in PATTERN_KEYS:
                raise where.error(item, k, f"unknown {key} key {k!r}; valid keys: {', '.join(PATTERN_KEYS)}")
            pattern[k] = _check_pattern_values(spec, item, k, as_list(plain(v)), where)
        out.append(pattern)
        nodes.append(item)
    return out, nodes


def _parse_entries(doc: LineMap, spec: StudySpec, where: Where) -> tuple[list[dict], list[LineMap]]:
    items = doc.get("runs") or []
    if not isinstance(items, list):
        raise where.error(doc, "runs", "'runs' must be a list of mappings like {method: dense, seeds: [0]}")
    out, nodes = [], []
    valid = sorted(set(ENTRY_KEYS) | set(ENTRY_KEYS.values()))
    for item in items:
        if not isinstance(item, LineMap):
            raise where.error(doc, "runs", f"a runs entry is a mapping over {', '.join(valid)}; got {item!r}")
        entry: dict[str, list[Any]] = {}
        for k, v in item.items():
            if k not in valid:
                raise where.error(item, k, f"unknown runs key {k!r}; valid keys: {', '.join(valid)}")
            singular = k if k in ENTRY_KEYS else next(s for s, p in ENTRY_KEYS.items() if p == k)
            if singular in entry:
                raise where.error(item, k, f"runs entry gives both {singular!r} and {ENTRY_KEYS[singular]!r}")
            values = as_list(plain(v))
            if singular == "target":
                node = LineMap({"targets": values})
                node.line, node.key_lines = item.line, {"targets": item.key_lines.get(k, item.line)}
                values = parse_targets(node, "targets", where)
            elif singular == "seed" and isinstance(v, int) and k == "seeds":
                values = parse_seeds(item, k, where)
            else:
                values = _check_pattern_values(spec, item, singular, values, where)
            entry[singular] = values
        out.append(entry)
        nodes.append(item)
    return out, nodes
