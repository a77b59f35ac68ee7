"""The typed study spec: the dataset, the model and method axis entries, and :class:`StudySpec`.

A :class:`StudySpec` comes from :func:`prunelab.study.spec.load_spec` (checked, with line numbers for
errors); :meth:`StudySpec.expand` turns it into resolved runs, once per spec content.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunelab.errors import PrunelabError, unknown_choice
from prunelab.study.run import RunConfig, config_hash
from prunelab.study.spec.expand import expand_runs
from prunelab.study.spec.yaml_lines import Where


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
    #: formats ``file:line:`` error prefixes; ``nodes`` keeps the parsed YAML (``doc``) and the nodes of
    #: ``exclude``, ``include`` and ``runs``, so expansion errors point at their lines
    where: Where = field(default_factory=lambda: Where(None), repr=False, compare=False)
    nodes: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    #: the last expansion and what it was computed from (:meth:`expand` runs once per spec content)
    expanded: tuple[str, list[RunConfig]] | None = field(default=None, repr=False, compare=False)

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
        """All runs of the study, checked and resolved, in execution order (see :mod:`prunelab.study.spec`).

        Expanded once per spec content: later calls (the store, the data check, the runner) return
        copies of the same runs unless a field of the spec changed since."""
        try:
            key = config_hash({**self.to_dict(), "unchecked": list(self.unchecked)})
        except (TypeError, ValueError):  # not JSON (a NaN parameter): the expansion itself says what is wrong
            return expand_runs(self)
        if self.expanded is None or self.expanded[0] != key:
            self.expanded = (key, expand_runs(self))
        return copy.deepcopy(self.expanded[1])


