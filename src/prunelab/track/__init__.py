"""Experiment trackers: every run's training curve, pruning trajectory and final metrics, with its
resolved configuration as parameters, written where TensorBoard or MLflow read them. Local only:
TensorBoard event files in a folder, an MLflow file store in a folder; no server.

A tracker is registered under a name with :func:`register_tracker` (its module, its optional extra)
and opened with :func:`open_tracker`; the backends live in their own modules and are imported only
when chosen, so a tracker whose extra is missing is one line naming the extra. What a run logs
(:func:`log_run`):

* parameters: the resolved configuration, flattened to dotted keys (``train.lr``, ``target.sparsity``);
* ``curve/<key>`` at step i: the i-th per-epoch row (train / val / test loss and accuracy, learning
  rate, epoch), across phases (pruning, fine-tuning, rounds) in order;
* ``prune/params``, ``prune/macs``, ``prune/acc`` at step k: the k-th point of the pruning trajectory
  (dense model, each prune step a run records, the trained pruned model);
* ``final/<key>``: every numeric final metric.
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunelab.errors import PrunelabError, require, unknown_choice


class Tracker:
    """One destination (a folder). Subclasses implement the three ``_`` hooks; runs are sequential."""

    name = "tracker"

    def __init__(self, folder: str | Path, experiment: str = "prunelab") -> None:
        self.folder = Path(folder).expanduser()
        self.experiment = experiment

    def start_run(self, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str] | None = None) -> None:
        raise NotImplementedError

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        raise NotImplementedError

    def end_run(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Flush and release the destination."""


@dataclass(frozen=True)
class TrackerEntry:
    name: str
    module: str
    cls: str
    extra: str
    package: str
    default_dir: str
    doc: str


_TRACKERS: dict[str, TrackerEntry] = {}


def register_tracker(name: str, module: str, cls: str, *, extra: str, package: str, default_dir: str,
                     doc: str = "") -> None:
    """Register a tracker: ``module.cls(folder, experiment)`` builds it; ``package`` (installed by the
    ``extra``) must be importable; ``default_dir`` is its usual folder name (TensorBoard's ``runs``,
    MLflow's ``mlruns``)."""
    _TRACKERS[name] = TrackerEntry(name, module, cls, extra, package, default_dir, doc)


def list_trackers() -> list[str]:
    return sorted(_TRACKERS)


def get_tracker_entry(name: str) -> TrackerEntry:
    if name not in _TRACKERS:
        raise unknown_choice("tracker", name, _TRACKERS)
    return _TRACKERS[name]


def check_tracker(name: str) -> TrackerEntry:
    """A known tracker whose extra is installed, or a one-line error (before any work is done)."""
    entry = get_tracker_entry(name)
    require(entry.package, f"--tracker {name}", entry.extra, entry.package)
    return entry


def open_tracker(name: str, folder: str | Path | None = None, experiment: str = "prunelab") -> Tracker:
    """The tracker ``name`` writing under ``folder`` (default: its usual folder in the working directory)."""
    entry = check_tracker(name)
    cls = getattr(importlib.import_module(entry.module), entry.cls)
    return cls(folder if folder is not None else entry.default_dir, experiment)


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 0.1}}`` -> ``{"train.lr": 0.1}``; lists become JSON text."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            nested = flatten(value, f"{name}.")
            out.update(nested if nested else {name: "{}"})
        elif isinstance(value, list | tuple):
            out[name] = json.dumps(list(value), default=str)
        elif value is None or isinstance(value, bool | int | float | str):
            out[name] = value
        else:
            out[name] = str(value)
    return out


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float) and math.isfinite(float(value)):
        return float(value)
    return None


CURVE_SKIP = ("phase", "time")


def trajectory(metrics: Mapping[str, Any], steps: Iterable[Mapping[str, Any]] = ()) -> list[dict[str, float]]:
    """The pruning trajectory of a run: (params, MACs, accuracy) of the dense model (``base_params``,
    ``base_macs``, ``acc_dense``), of each recorded prune step (rows with ``params`` / ``macs`` /
    ``acc``), and of the final pruned model (``params``, ``macs``, ``acc``). Points without sizes are
    left out; a run that prunes nothing (a dense baseline) has one point."""
    points: list[dict[str, float]] = []

    def add(params, macs, acc) -> None:
        point = {k: v for k, v in (("params", _number(params)), ("macs", _number(macs)), ("acc", _number(acc)))
                 if v is not None}
        if "params" in point or "macs" in point:
            points.append(point)

    if "base_params" in metrics or "base_macs" in metrics:
        add(metrics.get("base_params"), metrics.get("base_macs"), metrics.get("acc_dense"))
    for row in steps:
        add(row.get("params"), row.get("macs"), row.get("acc"))
    if "acc_pruned" in metrics and points:
        add(metrics.get("params"), metrics.get("macs"), metrics.get("acc_pruned"))
    add(metrics.get("params"), metrics.get("macs"), metrics.get("acc"))
    sizes = ("params", "macs")
    if len(points) == 2 and all(points[0].get(k) == points[1].get(k) for k in sizes):
        points = [{**points[0], **points[1]}]  # a dense run: its base and final model are one model
    return points


def log_run(tracker: Tracker, run_name: str, config: Mapping[str, Any], curves: Iterable[Mapping[str, Any]],
            metrics: Mapping[str, Any], steps: Iterable[Mapping[str, Any]] = (),
            tags: Mapping[str, str] | None = None) -> None:
    """Log one run (see the module docstring): parameters, curve, trajectory, final metrics."""
    tracker.start_run(run_name, flatten(config), tags)
    try:
        for i, row in enumerate(curves, start=1):
            values = {f"curve/{k}": v for k, v in ((k, _number(v)) for k, v in row.items() if k not in CURVE_SKIP)
                      if v is not None}
            if values:
                tracker.log_metrics(values, i)
        for k, point in enumerate(trajectory(metrics, steps)):
            tracker.log_metrics({f"prune/{key}": v for key, v in point.items()}, k)
        final = {f"final/{k}": v for k, v in ((k, _number(v)) for k, v in metrics.items()) if v is not None}
        if final:
            tracker.log_metrics(final, 0)
    finally:
        tracker.end_run()


def check_tracker_name(name: Any) -> str:
    """``name`` if it is a registered tracker (whether its extra is installed is asked at run time)."""
    if not isinstance(name, str) or name not in _TRACKERS:
        raise PrunelabError(f"unknown tracker {name!r}; valid choices: {', '.join(list_trackers())}")
    return name


register_tracker("tensorboard", "prunelab.track.tensorboard", "TensorBoardTracker", extra="tensorboard",
                 package="tensorboard", default_dir="runs", doc="TensorBoard event files, one folder per run")
register_tracker("mlflow", "prunelab.track.mlflow", "MLflowTracker", extra="mlflow", package="mlflow",
                 default_dir="mlruns", doc="an MLflow file store (no server)")
