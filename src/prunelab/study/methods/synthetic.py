"""Synthetic kinds ``sleep`` and ``noop``: exercise the study machinery without training anything.

They take a fixed time, report per-epoch progress, and return metrics that are a deterministic function
of the run's configuration (so an interrupted and an uninterrupted study give identical numbers), shaped
like a pruning run's: accuracy falls with sparsity, parameters and MACs shrink with the target. Options
let tests fail a run, share an artifact between runs, log every execution to ``<study>/executions.log``
to prove a run never executes twice, shift the accuracy (``acc_shift``) or add metrics (``metrics``)
to build a store with known differences for reports. They accept any model label.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

from prunelab.errors import PrunelabError
from prunelab.study.run import RunConfig
from prunelab.study.tasks import RunOutput, register

_DEFAULTS = {"seconds": 0.0, "epochs": 2, "fail": False, "log": False, "artifact": False,
             "base_params": 100_000, "base_macs": 2_000_000, "acc_shift": 0.0, "metrics": {}}


def _resolve(run: RunConfig) -> RunConfig:
    unknown = sorted(set(run.params) - set(_DEFAULTS))
    if unknown:
        raise PrunelabError(f"unknown parameter(s) {unknown}; valid: {', '.join(_DEFAULTS)}")
    params = {**_DEFAULTS, **run.params}
    if not isinstance(params["seconds"], int | float) or params["seconds"] < 0:
        raise PrunelabError(f"seconds must be >= 0, got {params['seconds']!r}")
    if not isinstance(params["epochs"], int) or params["epochs"] < 1:
        raise PrunelabError(f"epochs must be a positive integer, got {params['epochs']!r}")
    if isinstance(params["acc_shift"], bool) or not isinstance(params["acc_shift"], int | float):
        raise PrunelabError(f"acc_shift must be a number, got {params['acc_shift']!r}")
    if not isinstance(params["metrics"], dict):
        raise PrunelabError(f"metrics must be a mapping of extra metrics, got {params['metrics']!r}")
    run.params = params
    return run


def _sparsity(target: dict | None, base_params: int, base_macs: int) -> float:
    if not target:
        return 0.0
    (key, value), = target.items()
    return {
        "sparsity": lambda: value,
        "compression": lambda: 1.0 - 1.0 / value,
        "params": lambda: max(0.0, 1.0 - value / base_params),
        "params_ratio": lambda: 1.0 - value,
        "macs": lambda: max(0.0, 1.0 - value / base_macs),
        "macs_ratio": lambda: 1.0 - value,
        "latency_ms": lambda: 0.5,
        "latency_ratio": lambda: 1.0 - value,
    }[key]()


def _append(path: Path, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def synthetic(run: RunConfig, ctx) -> RunOutput:
    """A synthetic run: sleeps, reports progress, returns metrics determined by the configuration."""
    p = run.params
    rng = random.Random(run.config_hash)
    if p["artifact"]:
        def produce(folder: Path) -> None:
            _append(ctx.study_dir / "artifacts.log", f"{run.model_label} {run.seed} {os.getpid()}\n")
            time.sleep(p["seconds"])
            (folder / "value.txt").write_text(str(random.Random(f"{run.model_label}/{run.seed}").random()))

        shared = ctx.artifact({"what": "synthetic", "model": run.model_label, "seed": run.seed}, produce)
        rng.seed(run.config_hash + (shared / "value.txt").read_text())
    curves = []
    for epoch in range(1, p["epochs"] + 1):
        time.sleep(p["seconds"] / p["epochs"])
        curves.append({"epoch": epoch, "loss": round(2.0 / epoch + rng.random() * 0.01, 6),
                       "acc": round(0.5 + 0.4 * epoch / p["epochs"], 6)})
        ctx.progress(epoch=epoch, epochs=p["epochs"])
    fail = p["fail"]
    if fail is True or (isinstance(fail, list) and run.seed in fail):
        raise RuntimeError(f"synthetic failure requested for seed {run.seed}")
    s = _sparsity(run.target, p["base_params"], p["base_macs"])
    acc = 0.95 - 0.4 * s**4 + rng.gauss(0.0, 0.01) + p["acc_shift"]
    metrics = {"acc": acc, "loss": 1.5 - acc + rng.random() * 0.01, "sparsity": s,
               "params": round(p["base_params"] * (1 - s)), "macs": round(p["base_macs"] * (1 - s * 0.8)),
               "base_params": p["base_params"], "base_macs": p["base_macs"]}
    if run.measure.get("latency"):
        metrics["latency_ms"] = 1.0 + 2.0 * (1 - s) + rng.random() * 0.05
    weights = [0.1, 0.4, 0.4, 0.1]
    layers = []
    for i, share in enumerate(weights):
        numel = int(p["base_params"] * share)
        layer_s = min(1.0, s * (0.5 + i * 0.4))
        layers.append({"name": f"layer{i}", "kind": "Conv2d", "weight_numel": numel,
                       "nonzero": int(round(numel * (1 - layer_s)))})
    metrics.update(p["metrics"])
    if p["log"]:
        _append(ctx.study_dir / "executions.log", f"{run.run_id} {os.getpid()}\n")
    return RunOutput(metrics=metrics, curves=curves, layers=layers)


register("sleep", uses_model=False, resolve=_resolve,
         doc="synthetic run that sleeps `seconds` (for testing runners, stores and reports)")(synthetic)
register("noop", uses_model=False, resolve=_resolve,
         doc="synthetic run that returns at once (for testing runners, stores and reports)")(synthetic)
