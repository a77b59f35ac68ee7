"""The task registry: what a study can run.

A *task kind* is a function ``fn(run: RunConfig, ctx: RunContext) -> RunOutput`` registered under a
name with :func:`register`. A study's method entry names its kind (``{name: gmp, kind:
global-magnitude, mt_percent: 0.05}``); the runner calls the kind's function once per run, in
whatever process or Ray worker executes it. Kinds live in ``prunelab/study/methods/*.py``: every
module there is imported on first use, so adding a file adds its kinds.

A kind declares which protocols and target keys it understands, so a study spec is checked before
anything runs:

* ``protocols=None``: any protocol, or none; ``()``: the kind takes no protocol (the protocols axis
  collapses to one run); a tuple: the valid protocols, the first one being the default.
* ``targets=None``: any target key, or none; ``()``: no target (the targets axis collapses); a tuple:
  the valid target keys, and a target is required.
* ``uses_model``: model names must be zoo names (:func:`prunelab.models.list_models`).
* ``resolve(run) -> RunConfig``: fill parameter defaults and reject bad parameters with a
  :class:`~prunelab.errors.PrunelabError` (the stored configuration is then fully resolved).
* ``role``: what the kind is to the reporting checklist (Blalock et al. 2020): ``dense`` (the unpruned
  baseline), ``random`` or ``magnitude`` (the simple baselines every comparison needs), ``reduced``
  (uniformly smaller networks, Crowley et al. 2018); recorded with each run as ``kind_role``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prunelab.errors import PrunelabError, unknown_choice

if TYPE_CHECKING:
    from prunelab.study.context import RunContext
    from prunelab.study.run import RunConfig

# The protocols of the seed papers: how the pruned (or reduced) network is trained.
PROTOCOLS: dict[str, str] = {
    "finetune": "fine-tune the pruned network from its trained weights",
    "scratch-e": "train the pruned architecture from scratch for the same epochs (Liu et al. 2019)",
    "scratch-b": "train the pruned architecture from scratch with the dense model's FLOP budget (Liu et al. 2019)",
    "reduced": "train a uniformly reduced network at the same budget (Crowley et al. 2018, sec. 4)",
    "copy-profile": "scale the pruned width profile to the budget and train it (Crowley et al. 2018)",
    "pfs": "learn channel gates on a random network, then train the chosen structure (Wang et al. 2020)",
}

# Metric keys the results store promotes to columns (see prunelab.study.store).
PROMOTED_METRICS = ("acc", "loss", "params", "macs", "sparsity", "latency_ms")


@dataclass
class RunOutput:
    """What a run returns; everything in it must be JSON-serialisable.

    ``metrics`` conventions (the report relies on them): ``acc`` test top-1 accuracy as a fraction,
    ``loss`` test loss, ``params`` parameters that remain (non-zero for unstructured pruning),
    ``macs`` MACs at batch 1 (sparse-aware for unstructured pruning), ``sparsity`` fraction of
    prunable weights removed, ``latency_ms`` measured latency when measured, ``base_params`` /
    ``base_macs`` the same counts for the unpruned model (gives compression and FLOPs pruned).
    ``curves`` are per-epoch rows (each with an ``epoch`` key), ``layers`` per-layer rows (``name``,
    ``weight_numel``, ``nonzero``, ... as :func:`prunelab.measure.layer_table`), ``artifacts`` maps
    names to files the run wrote (paths relative to the study folder where possible).
    """

    metrics: dict[str, Any] = field(default_factory=dict)
    curves: list[dict[str, Any]] = field(default_factory=list)
    layers: list[dict[str, Any]] = field(default_factory=list)
    artifacts: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def coerce(cls, value: Any) -> RunOutput:
        if isinstance(value, RunOutput):
            return value
        if isinstance(value, dict):
            return cls(**{k: value[k] for k in ("metrics", "curves", "layers", "artifacts") if k in value})
        raise TypeError(f"a task must return RunOutput, got {type(value).__name__}")

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-safe copy (tensors and numpy scalars become numbers, NaN/inf become None)."""
        from prunelab.io import jsonable  # torch only when a run's output is stored

        return {"metrics": jsonable(dict(self.metrics)), "curves": [jsonable(dict(r)) for r in self.curves],
                "layers": [jsonable(dict(r)) for r in self.layers], "artifacts": jsonable(dict(self.artifacts))}


TaskFn = Callable[["RunConfig", "RunContext"], RunOutput]


@dataclass(frozen=True)
class TaskKind:
    """A registered kind: its function and what it accepts."""

    name: str
    fn: TaskFn
    protocols: tuple[str, ...] | None = None
    targets: tuple[str, ...] | None = None
    uses_model: bool = True
    resolve: Callable[[RunConfig], RunConfig] | None = None
    doc: str = ""
    role: str | None = None


#: the roles a kind may declare (see the module doc)
ROLES = ("dense", "random", "magnitude", "reduced")

_KINDS: dict[str, TaskKind] = {}
_IMPORT_ERRORS: dict[str, str] = {}
_LOADED = False


def register(kind: str, *, protocols: Iterable[str] | None = None, targets: Iterable[str] | None = None,
             uses_model: bool = True, resolve: Callable[[RunConfig], RunConfig] | None = None,
             doc: str | None = None, role: str | None = None) -> Callable[[TaskFn], TaskFn]:
    """Decorator registering ``fn(run, ctx) -> RunOutput`` as task kind ``kind`` (see module doc)."""
    from prunelab.study.targets import TARGET_KEYS

    if role is not None and role not in ROLES:
        raise unknown_choice("kind role", role, ROLES)
    protos = None if protocols is None else tuple(protocols)
    keys = None if targets is None else tuple(targets)
    for p in protos or ():
        if p not in PROTOCOLS:
            raise unknown_choice("protocol", p, PROTOCOLS)
    for k in keys or ():
        if k not in TARGET_KEYS:
            raise unknown_choice("target", k, TARGET_KEYS)

    def decorate(fn: TaskFn) -> TaskFn:
        text = doc if doc is not None else (fn.__doc__ or "").strip().split("\n")[0]
        _KINDS[kind] = TaskKind(kind, fn, protos, keys, uses_model, resolve, text, role)
        return fn

    return decorate


def register_protocol(name: str, doc: str) -> None:
    """Add a protocol name to the vocabulary studies may use."""
    PROTOCOLS[name] = doc


def _load() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    from prunelab.study import methods

    _IMPORT_ERRORS.update(methods.IMPORT_ERRORS)


def get_kind(name: str) -> TaskKind:
    """The registered kind ``name``; an unknown name lists the valid ones (and any adapter that failed to import)."""
    _load()
    if name not in _KINDS:
        err = unknown_choice("method kind", name, _KINDS)
        if _IMPORT_ERRORS:
            broken = "; ".join(f"{m}: {e}" for m, e in sorted(_IMPORT_ERRORS.items()))
            err = PrunelabError(f"{err} (adapters that failed to import: {broken})")
        raise err
    return _KINDS[name]


def list_kinds() -> list[str]:
    _load()
    return sorted(_KINDS)


def import_plugins(modules: Iterable[str]) -> None:
    """Import user modules that register extra kinds (a study's ``plugins:`` list)."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise PrunelabError(f"plugin module {name!r} cannot be imported: {exc}") from exc
        except Exception as exc:  # the module itself fails (SyntaxError, an error it raises): still one line
            raise PrunelabError(f"plugin module {name!r} cannot be imported: {type(exc).__name__}: {exc}") from exc


def find_plugins(modules: Iterable[str]) -> None:
    """Check, without importing (running) them, that the plugin modules can be found: the top-level
    package of each must be on the module path. ``study validate`` uses this, so checking a spec never
    executes code from it; ``study run`` imports them (:func:`import_plugins`)."""
    import importlib.util

    for name in modules:
        top = name.split(".")[0]
        try:
            found = importlib.util.find_spec(top) is not None  # a top-level name: nothing is imported
        except (ImportError, ValueError):
            found = False
        if not found:
            raise PrunelabError(f"plugin module {name!r} cannot be imported: no module named {top!r} on this "
                                f"machine's module path")
