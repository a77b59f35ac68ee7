"""Study specs: a YAML file declaring models x methods x targets x protocols x seeds.

Example::

    name: smoke
    data: {name: digits}
    train: {epochs: 2, batch_size: 64, lr: 0.05}
    models: [mlp-s, {name: resnet-8, kwargs: {width: 8}, label: resnet-8-w8}]
    methods:
      - dense                                  # name = kind
      - {name: gmp, kind: global-magnitude, mt_percent: 0.05, protocols: [finetune]}
    targets: [{sparsity: [0.5, 0.8, 0.9]}, {params: 20000}]
    protocols: [finetune, scratch-e]
    seeds: 3                                   # or [0, 1, 2]
    exclude: [{method: gmp, target: {params: 20000}}]

``claims:`` (optional) states the hypotheses the report tests, each a paired comparison of two arms
(see :mod:`prunelab.study.claims`); they are checked against the runs but change none of them.

``runs:`` (optional) lists sub-products instead of the full product: each entry may fix
``model(s)``, ``method(s)``, ``target(s)``, ``protocol(s)``, ``seed(s)`` and takes the study's axes for
the rest. ``exclude`` / ``include`` are patterns over ``model``, ``method``, ``kind``, ``protocol``,
``target`` and ``seed`` (a list value matches any of its items). A method entry's own
``protocols`` / ``targets`` replace the study's axes for that method, and its ``train`` mapping
overrides training settings; every other key is a parameter of the method's kind.

Everything is checked before a run starts: malformed YAML (with its line), unknown keys, unknown
model / dataset / method kind / protocol names, the type and range of every training and ``measure``
setting (a device by its form: it need not be present on the machine that validates; ``measure``'s
``min_time_s`` at most 60 seconds and ``repeats`` at most 100,000), impossible
targets, methods that expand to no runs, and combinations a kind cannot run. ``plugins`` are imported
first, so the kinds they register can be used (``study validate`` runs no code from the spec: it only
finds them, and leaves the methods of kinds they would register unchecked). The study ``name`` names its
folder: letters, digits, ``.``, ``_`` and ``-``, starting with a letter or digit. The YAML itself is
bounded (size, nesting depth, nodes and aliases; see :mod:`prunelab.study.yaml_limits`), and so is the
number of runs a spec expands to (:data:`MAX_RUNS`). Errors are one line, prefixed with ``file:line`` where
the YAML tells us. Numbers follow YAML 1.2: ``1e-3`` is a float (PyYAML's YAML 1.1 would read a string).
"""

from __future__ import annotations

import copy
import itertools
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from prunelab.errors import PrunelabError, unknown_choice
from prunelab.study.run import RunConfig, canonical_json, config_hash
from prunelab.study.targets import check_target
from prunelab.study.yaml_limits import MAX_BYTES, LimitedComposer, YAMLLimitError, check_size

TOP_KEYS = ("name", "description", "data", "train", "models", "methods", "targets", "protocols", "seeds",
            "measure", "plugins", "cache", "exclude", "include", "runs", "tracker", "claims")
METHOD_RESERVED = ("name", "kind", "protocols", "targets", "train")
#: a study name names its folder (studies/<name>): no path separators, no '.' or '..', no hidden folder
NAME_RULE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
#: runs one spec may expand to (each is a training run; the largest recipe has a few hundred)
MAX_RUNS = 100_000
PATTERN_KEYS = ("model", "method", "kind", "protocol", "target", "seed")
ENTRY_KEYS = {"model": "models", "method": "methods", "target": "targets", "protocol": "protocols",
              "seed": "seeds"}


# ---------------------------------------------------------------- YAML with line numbers

class _Map(dict):
    """A YAML mapping that remembers the line of each key (1-based)."""

    line: int = 0
    key_lines: dict[Any, int]


class _Seq(list):
    """A YAML sequence that remembers the line of each item (1-based)."""

    line: int = 0
    item_lines: list[int]


class _Loader(LimitedComposer, yaml.SafeLoader):
    """A SafeLoader within the size, depth, node and alias limits of :mod:`prunelab.study.yaml_limits`."""


# YAML 1.2 floats with an exponent (1e-3, 5E+2, -1e-4, 1.0e3): PyYAML follows YAML 1.1, whose floats need
# a dot and a signed exponent, and reads these as strings. Added to this loader only, after PyYAML's own
# resolvers, so every scalar they already type keeps its type.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> _Seq:
    out = _Seq(loader.construct_object(child, deep=True) for child in node.value)
    out.line = node.start_mark.line + 1
    out.item_lines = [child.start_mark.line + 1 for child in node.value]
    return out


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> _Map:
    loader.flatten_mapping(node)
    out = _Map()
    out.line = node.start_mark.line + 1
    out.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(None, None, "mapping keys must be plain values",
                                                    key_node.start_mark) from None
        if key in out:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_lines[key] = key_node.start_mark.line + 1
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def _plain(obj: Any) -> Any:
    """Drop line bookkeeping: nested plain dicts and lists."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    return obj


class _Where:
    """Formats ``file:line: `` prefixes for errors."""

    def __init__(self, source: str | None):
        self.source = source

    def __call__(self, node: Any = None, key: Any = None) -> str:
        line = None
        if isinstance(node, _Map):
            line = node.key_lines.get(key, node.line) if key is not None else node.line
        if self.source and line:
            return f"{self.source}:{line}: "
        if self.source:
            return f"{self.source}: "
        return f"line {line}: " if line else ""

    def error(self, node: Any, key: Any, message: str) -> PrunelabError:
        return PrunelabError(f"{self(node, key)}{message}")


# ---------------------------------------------------------------- typed spec

@dataclass(frozen=True)
class DataSpec:
    """The dataset: a name for :func:`prunelab.data.load`, an optional root folder, loader options."""

    name: str
    root: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "root": self.root, "options": copy.deepcopy(self.options)}


@dataclass(frozen=True)
class ModelSpec:
    """A model axis entry: a zoo name, constructor overrides, and the label results use."""

    label: str
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "name": self.name, "kwargs": copy.deepcopy(self.kwargs)}


@dataclass(frozen=True)
class MethodSpec:
    """A method axis entry: a name, its task kind, the kind's parameters and per-method axis overrides."""

    name: str
    kind: str
    params: dict[str, Any] = field(default_factory=dict)
    protocols: tuple[str | None, ...] | None = None
    targets: tuple[dict | None, ...] | None = None
    train: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "params": copy.deepcopy(self.params),
                "protocols": None if self.protocols is None else list(self.protocols),
                "targets": None if self.targets is None else copy.deepcopy(list(self.targets)),
                "train": copy.deepcopy(self.train)}


@dataclass
class StudySpec:
    """A parsed, checked study spec. :meth:`expand` turns it into fully resolved runs."""

    name: str
    data: DataSpec
    models: list[ModelSpec]
    methods: list[MethodSpec]
    seeds: list[int]
    train: dict[str, Any] = field(default_factory=dict)
    targets: list[dict | None] = field(default_factory=lambda: [None])
    protocols: list[str | None] = field(default_factory=lambda: [None])
    measure: dict[str, Any] = field(default_factory=dict)
    plugins: list[str] = field(default_factory=list)
    cache: str | None = None
    exclude: list[dict[str, Any]] = field(default_factory=list)
    include: list[dict[str, Any]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    #: where finished runs are logged: ``{"name": tensorboard | mlflow, "dir": folder or None}``; not part
    #: of the normalised spec (it changes where results are copied to, not what is computed)
    tracker: dict[str, Any] = field(default_factory=dict)
    claims: list[Any] = field(default_factory=list)  # prunelab.study.claims.Claim, checked against the runs
    description: str = ""
    #: methods whose kind comes from a plugin that was not imported (``study validate`` runs no user
    #: code): their runs are not expanded or checked
    unchecked: list[str] = field(default_factory=list)
    source: str | None = None
    text: str | None = None
    _where: _Where = field(default_factory=lambda: _Where(None), repr=False, compare=False)
    _nodes: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def missing_data_root(self) -> str | None:
        """Why this machine cannot read the study's data (its root folder is absent), or ``None``."""
        from prunelab.data import get_dataset_entry

        root = self.data.root
        if get_dataset_entry(self.data.name).needs_root and root and not Path(root).expanduser().exists():
            return f"data root {root!r} of dataset {self.data.name!r} does not exist on this machine"
        return None

    def oversized_model(self) -> str | None:
        """Why a model of the study would not fit in this machine's memory (counted on the ``meta``
        device, without building it), or ``None``."""
        from prunelab.models import get_entry, get_family, list_models
        from prunelab.models.budget import describe_spec, meta_size
        from prunelab.resources import check_claim

        zoo = set(list_models())
        for m in self.models:
            if m.name not in zoo:
                continue
            spec = get_entry(m.name).spec.with_kwargs(**m.kwargs)
            size = meta_size(get_family(spec.family).build, spec.kwargs)
            try:
                check_claim(f"model {m.label} ({describe_spec(spec.family, spec.kwargs)})", size or 0,
                            "its parameters and buffers")
            except PrunelabError as exc:
                return str(exc)
        return None

    def unusable_cache(self) -> str | None:
        """Why this machine cannot keep the study's ``cache`` folder (a file, not writable, on a kernel or
        device file system), or ``None``."""
        if not self.cache:
            return None
        from prunelab.io import check_folder

        try:
            check_folder(Path(self.cache).expanduser(), "cache")
        except PrunelabError as exc:
            return str(exc)
        return None

    def to_dict(self) -> dict[str, Any]:
        """The normalised spec (what :attr:`spec_hash` hashes)."""
        return {
            "name": self.name, "data": self.data.to_dict(), "train": copy.deepcopy(self.train),
            "models": [m.to_dict() for m in self.models], "methods": [m.to_dict() for m in self.methods],
            "targets": copy.deepcopy(self.targets), "protocols": list(self.protocols), "seeds": list(self.seeds),
            "measure": copy.deepcopy(self.measure), "plugins": list(self.plugins), "cache": self.cache,
            "exclude": copy.deepcopy(self.exclude), "include": copy.deepcopy(self.include),
            "runs": copy.deepcopy(self.runs),
        }

    @property
    def spec_hash(self) -> str:
        return config_hash(self.to_dict())

    def claims_dict(self) -> list[dict[str, Any]]:
        """The checked claims as plain mappings (what the results store records for the report)."""
        return [c.to_dict() for c in self.claims]

    def method(self, name: str) -> MethodSpec:
        for m in self.methods:
            if m.name == name:
                return m
        raise unknown_choice("method", name, [m.name for m in self.methods])

    def expand(self) -> list[RunConfig]:
        """All runs of the study, checked and resolved, in execution order (see module doc)."""
        return _expand(self)


# ---------------------------------------------------------------- parsing

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
    where = _Where(source)
    try:
        check_size(len(text.encode("utf-8", "surrogatepass")), "the study spec")
        doc = yaml.load(text, Loader=_Loader)  # noqa: S506 -- _Loader is a SafeLoader subclass
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
    if not isinstance(doc, _Map):
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
    return parse_spec(yaml.safe_dump(_plain(d), sort_keys=False))


def _parse(doc: _Map, where: _Where, import_user_code: bool = True) -> StudySpec:
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
    plugins = _string_list(doc, "plugins", where)
    if plugins:  # first: they may register the method kinds (and more) that the rest of the spec names
        from prunelab.study.tasks import find_plugins, import_plugins

        try:
            import_plugins(plugins) if import_user_code else find_plugins(plugins)
        except PrunelabError as exc:
            raise where.error(doc, "plugins", str(exc)) from None
    spec = StudySpec(
        name=name.strip(),
        description=str(doc.get("description") or ""),
        data=_parse_data(doc, where),
        train=_parse_train(doc, "train", where),
        models=_parse_models(doc, where),
        methods=_parse_methods(doc, where, lenient=bool(plugins) and not import_user_code),
        seeds=_parse_seeds(doc, "seeds", where) if "seeds" in doc else [0],
        targets=_parse_targets(doc, "targets", where) if doc.get("targets") is not None else [None],
        protocols=_parse_protocols(doc, "protocols", where) if doc.get("protocols") is not None else [None],
        measure=_parse_measure(doc, where),
        plugins=plugins,
        cache=_optional_str(doc, "cache", where),
        tracker=_parse_tracker(doc, where),
        _where=where,
    )
    spec._nodes = {"doc": doc}
    spec.unchecked = [m.name for m in spec.methods if m.kind in _unregistered_kinds(spec.methods)]
    spec.exclude, spec._nodes["exclude"] = _parse_patterns(doc, "exclude", spec, where)
    spec.include, spec._nodes["include"] = _parse_patterns(doc, "include", spec, where)
    spec.runs, spec._nodes["runs"] = _parse_entries(doc, spec, where)
    if doc.get("claims") is not None:
        from prunelab.study.claims import parse_claims

        spec.claims = parse_claims(doc["claims"], doc, where.error)
    return spec


def _mapping(node: _Map, key: str, where: _Where) -> dict[str, Any]:
    value = node.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise where.error(node, key, f"{key!r} must be a mapping, got {type(value).__name__}")
    return _plain(value)


#: bounds of a latency measurement per run (seconds of timed calls, and calls): each is paid per
#: batch size, thread count and run, so a typo there would keep a study busy for days
MAX_MEASURE_MIN_TIME_S = 60.0
MAX_MEASURE_REPEATS = 100_000
#: the largest batch a study measures latency at (inputs of that many samples are built at once)
MAX_MEASURE_BATCH = 1 << 16


def _parse_measure(doc: _Map, where: _Where) -> dict[str, Any]:
    """``measure: {latency, batch_sizes, threads, device, repeats, min_time_s}``: names, types and value
    ranges (``latency`` true or false, ``threads`` may be null for torch's default, ``device`` cpu / cuda /
    cuda:N by its form: whether it is present is asked on the machine that measures)."""
    from prunelab.measure.timing import check_device_name
    from prunelab.study.common import MEASURE_KEYS

    measure = _mapping(doc, "measure", where)
    node = doc.get("measure")
    for key, value in measure.items():
        if key not in MEASURE_KEYS:
            raise where.error(node, key, f"unknown measure key {key!r}; valid keys: {', '.join(MEASURE_KEYS)}")
        if key == "latency" and not isinstance(value, bool):
            raise where.error(node, key, f"measure latency must be true or false, got {value!r}")
        if key == "batch_sizes":
            sizes = _as_list(value)
            if not sizes or not all(_positive_int(b) and b <= MAX_MEASURE_BATCH for b in sizes):
                raise where.error(node, key, f"measure batch_sizes must be positive integers, at most "
                                             f"{MAX_MEASURE_BATCH:,}, got {value!r}")
        elif key == "threads" and value is not None and not _positive_int(value):
            raise where.error(node, key, f"measure threads must be a positive integer or null, got {value!r}")
        elif key == "repeats" and not (_positive_int(value) and value <= MAX_MEASURE_REPEATS):
            raise where.error(node, key, f"measure repeats must be a positive integer, at most "
                                         f"{MAX_MEASURE_REPEATS:,}, got {value!r}")
        elif key == "min_time_s" and (isinstance(value, bool) or not isinstance(value, int | float)
                                      or not 0 <= value <= MAX_MEASURE_MIN_TIME_S):
            raise where.error(node, key, f"measure min_time_s must be a number >= 0, at most "
                                         f"{MAX_MEASURE_MIN_TIME_S:g} seconds, got {value!r}")
        elif key == "device":
            if not isinstance(value, str):
                raise where.error(node, key, f"measure device must be a device name (cpu, cuda, cuda:N), "
                                             f"got {value!r}")
            try:
                check_device_name(value)
            except PrunelabError as exc:
                raise where.error(node, key, f"measure device: {exc}") from None
    return measure


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _optional_str(node: _Map, key: str, where: _Where) -> str | None:
    value = node.get(key)
    if value is not None and not isinstance(value, str):
        raise where.error(node, key, f"{key!r} must be a string, got {value!r}")
    return value


def _parse_tracker(doc: _Map, where: _Where) -> dict[str, Any]:
    """``tracker: tensorboard`` or ``tracker: {name: mlflow, dir: path}`` (default dir:
    ``<study>/tracking/<name>``). Whether its extra is installed is asked when the study runs."""
    value = doc.get("tracker")
    if value is None:
        return {}
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        raise where.error(doc, "tracker", "'tracker' must be a tracker name or a mapping with 'name' and 'dir'")
    extra = [k for k in value if k not in ("name", "dir")]
    if extra:
        raise where.error(doc["tracker"], extra[0], f"unknown tracker key {extra[0]!r}; valid keys: name, dir")
    if value.get("dir") is not None and not isinstance(value["dir"], str):
        raise where.error(doc["tracker"], "dir", f"tracker dir must be a path, got {value['dir']!r}")
    from prunelab.track import check_tracker_name

    try:
        check_tracker_name(value["name"])
    except PrunelabError as exc:
        raise where.error(doc, "tracker", str(exc)) from None
    return {"name": value["name"], "dir": value.get("dir")}


def _string_list(node: _Map, key: str, where: _Where) -> list[str]:
    value = node.get(key) or []
    value = [value] if isinstance(value, str) else value
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise where.error(node, key, f"{key!r} must be a list of names")
    return list(value)


def _parse_data(doc: _Map, where: _Where) -> DataSpec:
    value = doc["data"]
    if isinstance(value, str):
        value = _Map(name=value)
        value.line, value.key_lines = doc.key_lines["data"], {"name": doc.key_lines["data"]}
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        raise where.error(doc, "data", "'data' must be a dataset name or a mapping with 'name', 'root', 'options'")
    extra = [k for k in value if k not in ("name", "root", "options")]
    if extra:
        raise where.error(value, extra[0], f"unknown data key {extra[0]!r}; valid keys: name, root, options")
    root = value.get("root")
    if root is not None and not isinstance(root, str):
        raise where.error(value, "root", f"data root must be a path, got {root!r}")
    options = _mapping(value, "options", where)
    _check_dataset(value["name"], value, where)
    return DataSpec(value["name"], root, options)


def _check_dataset(name: str, node: _Map, where: _Where) -> None:
    """Check the dataset against the data layer: a known name, known options, and a root folder that
    is given where the dataset is read from disk. Whether that folder exists depends on the machine
    that runs the study: :func:`missing_data_root` checks it there."""
    from prunelab.data import get_dataset_entry, list_datasets

    valid = list(list_datasets())
    if name not in valid:
        raise where.error(node, "name", str(unknown_choice("dataset", name, valid)))
    entry = get_dataset_entry(name)
    options = node.get("options") or {}
    unknown = sorted(set(options) - set(entry.options()))
    if unknown:
        raise where.error(node, "options", f"unknown option {unknown[0]!r} for dataset {name!r}; valid options: "
                                           f"{', '.join(entry.options()) or 'none'}")
    root = node.get("root")
    if entry.needs_root and root is None:
        raise where.error(node, "name", f"dataset {name!r} is read from disk: give its folder as data 'root'")


def _parse_train(node: _Map, key: str, where: _Where) -> dict[str, Any]:
    train = _mapping(node, key, where)
    if "seed" in train:
        raise where.error(node[key], "seed", "set seeds with the study's 'seeds' axis, not in 'train'")
    from prunelab.train.config import TrainConfig

    try:
        TrainConfig.from_dict(train)
    except PrunelabError as exc:  # at the setting's own line when the error names one
        setting, value = getattr(exc, "key", None), node.get(key)
        if isinstance(value, _Map) and setting in value.key_lines:
            raise where.error(value, setting, str(exc)) from None
        raise where.error(node, key, str(exc)) from None
    except TypeError as exc:
        raise where.error(node, key, f"bad training setting: {exc}") from None
    return train


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def _parse_models(doc: _Map, where: _Where) -> list[ModelSpec]:
    items = doc["models"]
    if not isinstance(items, list) or not items:
        raise where.error(doc, "models", "'models' must be a non-empty list of zoo names")
    out: list[ModelSpec] = []
    for item in items:
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise where.error(doc, "models", f"a model is a zoo name or {{name, kwargs, label}}, got {item!r}")
        extra = [k for k in item if k not in ("name", "kwargs", "label")]
        if extra:
            raise where.error(item, extra[0], f"unknown model key {extra[0]!r}; valid keys: name, kwargs, label")
        kwargs = _mapping(item, "kwargs", where)
        label = item.get("label")
        if label is None:
            label = item["name"] if not kwargs else item["name"] + "(" + ",".join(
                f"{k}={kwargs[k]}" for k in sorted(kwargs)) + ")"
        if any(m.label == label for m in out):
            raise where.error(item, "name", f"model {label!r} is listed twice (give one a 'label')")
        out.append(ModelSpec(str(label), item["name"], kwargs))
    return out


def _parse_methods(doc: _Map, where: _Where, lenient: bool = False) -> list[MethodSpec]:
    """The methods axis. ``lenient``: a kind no module registered may come from a plugin that was not
    imported (``study validate``); it is left unchecked instead of refused."""
    from prunelab.study.tasks import get_kind

    items = doc["methods"]
    if not isinstance(items, list) or not items:
        raise where.error(doc, "methods", "'methods' must be a non-empty list")
    out: list[MethodSpec] = []
    for i, item in enumerate(items):
        node = item if isinstance(item, _Map) else _at_line(_item_line(items, i, doc, "methods"))
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise where.error(node, None, f"a method is a name or a mapping with 'name' and 'kind', got {item!r}")
        kind = item.get("kind", item["name"])
        if not isinstance(kind, str):
            raise where.error(node, "kind", f"method kind must be a name, got {kind!r}")
        try:
            get_kind(kind)
        except PrunelabError as exc:
            if not lenient:
                raise where.error(node, "kind" if "kind" in item else "name", str(exc)) from None
        if any(m.name == item["name"] for m in out):
            raise where.error(node, "name", f"method name {item['name']!r} is used twice")
        protocols = _parse_protocols(item, "protocols", where) if item.get("protocols") is not None else None
        targets = _parse_targets(item, "targets", where) if item.get("targets") is not None else None
        train = _parse_train(item, "train", where) if isinstance(item, _Map) else {}
        params = {k: _plain(v) for k, v in item.items() if k not in METHOD_RESERVED}
        out.append(MethodSpec(item["name"], kind, params, None if protocols is None else tuple(protocols),
                              None if targets is None else tuple(targets), train))
    return out


#: more seeds than this in one study is a typo (each seed multiplies every run)
MAX_SEEDS = 10_000


def _parse_seeds(node: _Map, key: str, where: _Where) -> list[int]:
    value = node[key]
    if isinstance(value, int) and not isinstance(value, bool):
        if not 1 <= value <= MAX_SEEDS:
            raise where.error(node, key, f"'{key}: N' needs 1 <= N <= {MAX_SEEDS:,}, got {value}")
        return list(range(value))
    value = _as_list(value)
    if not value or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise where.error(node, key, f"{key!r} must be a count or a list of integer seeds, got {node[key]!r}")
    if len(set(value)) != len(value):
        raise where.error(node, key, f"{key!r} lists a seed twice: {value}")
    return list(value)


def _parse_targets(node: _Map, key: str, where: _Where) -> list[dict | None]:
    out: list[dict | None] = []
    for item in _as_list(node[key]):
        if item is None or item == "none":
            out.append(None)
            continue
        if isinstance(item, dict) and len(item) == 1 and isinstance(next(iter(item.values())), list):
            (k, values), = item.items()
            items = [{k: v} for v in values]
        else:
            items = [item]
        for t in items:
            try:
                out.append(check_target(_plain(t)))
            except PrunelabError as exc:
                raise where.error(item if isinstance(item, _Map) else node, None if isinstance(item, _Map) else key,
                                  str(exc)) from None
    return _unique(out)


def _parse_protocols(node: _Map, key: str, where: _Where) -> list[str | None]:
    from prunelab.study.tasks import PROTOCOLS

    out: list[str | None] = []
    for item in _as_list(node[key]):
        if item is None or item == "none":
            out.append(None)
        elif isinstance(item, str) and item in PROTOCOLS:
            out.append(item)
        else:
            raise where.error(node, key, str(unknown_choice("protocol", item, PROTOCOLS)))
    return _unique(out)


def _unique(items: list[Any]) -> list[Any]:
    seen: set[str] = set()
    out = []
    for item in items:
        k = canonical_json(item)
        if k not in seen:
            seen.add(k)
            out.append(item)
    return out


def _check_pattern_values(spec: StudySpec, item: _Map, key: str, values: list[Any], where: _Where) -> list[Any]:
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


def _parse_patterns(doc: _Map, key: str, spec: StudySpec, where: _Where) -> tuple[list[dict], list[_Map]]:
    items = doc.get(key) or []
    if not isinstance(items, list):
        raise where.error(doc, key, f"{key!r} must be a list of patterns like {{method: gmp, protocol: scratch-e}}")
    out, nodes = [], []
    for item in items:
        if not isinstance(item, _Map) or not item:
            raise where.error(doc, key, f"a {key} pattern is a mapping over {', '.join(PATTERN_KEYS)}; got {item!r}")
        pattern = {}
        for k, v in item.items():
            if k not in PATTERN_KEYS:
                raise where.error(item, k, f"unknown {key} key {k!r}; valid keys: {', '.join(PATTERN_KEYS)}")
            pattern[k] = _check_pattern_values(spec, item, k, _as_list(_plain(v)), where)
        out.append(pattern)
        nodes.append(item)
    return out, nodes


def _parse_entries(doc: _Map, spec: StudySpec, where: _Where) -> tuple[list[dict], list[_Map]]:
    items = doc.get("runs") or []
    if not isinstance(items, list):
        raise where.error(doc, "runs", "'runs' must be a list of mappings like {method: dense, seeds: [0]}")
    out, nodes = [], []
    valid = sorted(set(ENTRY_KEYS) | set(ENTRY_KEYS.values()))
    for item in items:
        if not isinstance(item, _Map):
            raise where.error(doc, "runs", f"a runs entry is a mapping over {', '.join(valid)}; got {item!r}")
        entry: dict[str, list[Any]] = {}
        for k, v in item.items():
            if k not in valid:
                raise where.error(item, k, f"unknown runs key {k!r}; valid keys: {', '.join(valid)}")
            singular = k if k in ENTRY_KEYS else next(s for s, p in ENTRY_KEYS.items() if p == k)
            if singular in entry:
                raise where.error(item, k, f"runs entry gives both {singular!r} and {ENTRY_KEYS[singular]!r}")
            values = _as_list(_plain(v))
            if singular == "target":
                node = _Map({"targets": values})
                node.line, node.key_lines = item.line, {"targets": item.key_lines.get(k, item.line)}
                values = _parse_targets(node, "targets", where)
            elif singular == "seed" and isinstance(v, int) and k == "seeds":
                values = _parse_seeds(item, k, where)
            else:
                values = _check_pattern_values(spec, item, singular, values, where)
            entry[singular] = values
        out.append(entry)
        nodes.append(item)
    return out, nodes


# ---------------------------------------------------------------- expansion

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


def _expand(spec: StudySpec) -> list[RunConfig]:
    from prunelab.study.tasks import get_kind

    where = spec._where
    doc = spec._nodes.get("doc")
    entries = spec.runs or [{}]
    entry_nodes = spec._nodes.get("runs") or [doc] * len(entries)
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
        for pattern, pnode in zip(patterns, spec._nodes.get(name) or [None] * len(patterns)):
            if not any(_matches(pattern, run) for run, _ in candidates) and not _may_match_unchecked(spec, pattern):
                raise where.error(pnode, None, f"{name} pattern {_plain(pattern)} matches no run")
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
    doc = spec._nodes.get("doc")
    if singular in entry:
        key = next((k for k in (axis, singular) if isinstance(entry_node, _Map) and k in entry_node), None)
        node, whose = entry_node, "a runs entry's"
    elif axis in ("protocols", "targets") and getattr(method, axis) is not None:
        node, key, whose = _method_node(spec, method.name), axis, "its"
    else:
        node, key, whose = doc, axis, "the study's"
    return spec._where.error(node, key, f"method {method.name!r} expands to no runs: {whose} {axis!r} list is "
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


def _unregistered_kinds(methods: list[MethodSpec]) -> set[str]:
    """Kinds of ``methods`` that no imported module registered (only possible with lenient parsing)."""
    from prunelab.study.tasks import list_kinds

    known = set(list_kinds())
    return {m.kind for m in methods if m.kind not in known}


def _method_node(spec: StudySpec, name: str) -> Any:
    doc = spec._nodes.get("doc")
    if not isinstance(doc, _Map):
        return None
    items = doc.get("methods") or []
    for i, item in enumerate(items):
        if isinstance(item, _Map) and item.get("name") == name:
            return item
        if item == name and isinstance(items, _Seq):
            return _at_line(items.item_lines[i])
    return _at_line(doc.key_lines.get("methods", doc.line))


def _model_node(spec: StudySpec, label: str) -> Any:
    doc = spec._nodes.get("doc")
    if not isinstance(doc, _Map):
        return None
    items = doc.get("models") or []
    for i, item in enumerate(items):
        if isinstance(item, _Map) and label in (item.get("label"), item.get("name")):
            return item
        if item == label and isinstance(items, _Seq):
            return _at_line(items.item_lines[i])
    return _at_line(doc.key_lines.get("models", doc.line))


def _item_line(items: Any, i: int, parent: _Map, key: str) -> int:
    if isinstance(items, _Seq):
        return items.item_lines[i]
    return parent.key_lines.get(key, parent.line)


def _at_line(line: int) -> _Map:
    m = _Map()
    m.line, m.key_lines = line, {}
    return m
