"""Building blocks for method adapters: data, models, the shared dense model, measurements.

Every pruning method in a study starts from the same place: the run's dataset, a zoo model trained
densely with the run's training settings and seed. :func:`dense_model` trains that model once per
(architecture, data, training config) and caches it as a study artifact, so the ``dense`` baseline
runs and every pruning run of the same seed share it (a pruning run that comes first trains it).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from prunelab.study.context import RunContext
from prunelab.study.run import RunConfig, canonical_json
from prunelab.train.masks import masked_name

_DATA_CACHE: dict[str, Any] = {}


def load_data(run: RunConfig):
    """The run's :class:`~prunelab.data.DataBundle` (``prunelab.data.load(name, root, **options)``),
    loaded once per process."""
    key = canonical_json(run.data)
    if key not in _DATA_CACHE:
        from prunelab.data import load

        _DATA_CACHE.clear()  # one study uses one dataset: keep memory flat
        _DATA_CACHE[key] = load(run.data["name"], run.data.get("root"), **(run.data.get("options") or {}))
    return _DATA_CACHE[key]


def arch_spec(run: RunConfig, data=None):
    """The run's :class:`~prunelab.models.ArchSpec`: the zoo entry with the spec's kwargs, fitted to the
    data (class count, input channels or features, as ``prunelab train`` does with
    :func:`prunelab.models.fit_spec`) wherever the spec's own kwargs do not say otherwise."""
    from prunelab.models import fit_spec, resolve

    spec = resolve(run.model, **run.model_kwargs)
    if data is None:
        return spec
    fitted = fit_spec(spec, data.num_classes, tuple(data.input_shape))
    changed = {k: v for k, v in fitted.kwargs.items() if k not in run.model_kwargs and spec.kwargs.get(k) != v}
    return spec.with_kwargs(**changed) if changed else spec


def has_masks(model: nn.Module) -> bool:
    from prunelab.prune.unstructured.masks import carries_masks

    return carries_masks(name for name, _ in model.named_buffers())


def model_metrics(model: nn.Module, input_shape: tuple[int, ...], run: RunConfig,
                  base: nn.Module | None = None) -> dict[str, Any]:
    """Size and cost of ``model``, by the conventions of :mod:`prunelab.measure.counting`.

    ``params``: parameters that remain (non-zero ones when the model carries unstructured masks);
    ``macs``: MACs at batch 1 (sparse-aware with masks); ``sparsity``: zero fraction of the Conv/Linear
    weights (``sparsity_kind`` ``masked``, with the masks' ``mask_hash``; ``dense`` without masks);
    ``base_params`` / ``base_macs``: the same for ``base`` (the unpruned model; ``model`` itself when None).
    With ``measure: {latency: true}`` in the study, also ``latency_ms`` (median, batch
    ``measure.batch_sizes[0]``, default 1) and ``latency_ms_b<N>`` for every batch size.
    """
    from prunelab.measure import count_macs, count_params

    masked = has_masks(model)
    counts = count_params(model)
    metrics: dict[str, Any] = {
        "params": counts.nonzero if masked else counts.params,
        "params_total": counts.params,
        "macs": count_macs(model, input_shape, sparse=masked),
        "sparsity": 1.0 - counts.nonzero_conv_linear / max(1, counts.conv_linear_weights),
        "sparsity_kind": "masked" if masked else "dense",
    }
    if masked:
        metrics["mask_hash"] = mask_fingerprint(model)
    if base is None:
        metrics["base_params"], metrics["base_macs"] = counts.params, count_macs(model, input_shape)
    else:
        metrics["base_params"], metrics["base_macs"] = count_params(base).params, count_macs(base, input_shape)
    metrics.update(latency_metrics(model, input_shape, run))
    return metrics


#: keys of a study's ``measure:`` mapping, read by :func:`latency_metrics`
MEASURE_KEYS = ("latency", "batch_sizes", "threads", "device", "repeats", "min_time_s")


def latency_metrics(model: nn.Module, input_shape: tuple[int, ...], run: RunConfig) -> dict[str, float]:
    """Measured latency when the study asks for it (``measure: {latency: true, batch_sizes: [1, 64],
    threads: 1, device: cpu}``), with :func:`prunelab.measure.latency.measure_latency`."""
    opts = run.measure or {}
    if not opts.get("latency"):
        return {}
    from prunelab.measure.latency import measure_latency

    sizes = list(opts.get("batch_sizes") or [1])
    out: dict[str, float] = {}
    for b in sizes:
        res = measure_latency(model, input_shape, batch_size=int(b), threads=opts.get("threads"),
                              device=opts.get("device", "cpu"), repeats=int(opts.get("repeats", 30)),
                              min_time_s=float(opts.get("min_time_s", 0.2)))
        out[f"latency_ms_b{b}"] = res.median_ms
    out["latency_ms"] = out[f"latency_ms_b{sizes[0]}"]
    return out


def layer_rows(model: nn.Module, input_shape: tuple[int, ...]) -> list[dict[str, Any]]:
    """Per-layer rows (name, kind, weight_numel, nonzero, macs_dense, macs_sparse) for the layers table."""
    from prunelab.measure import layer_table

    return [asdict(row) for row in layer_table(model, input_shape)]


def final_metrics(final: dict[str, Any], data=None) -> dict[str, Any]:
    """Accuracy and loss from a trainer's final row: ``acc`` / ``loss`` on test, ``val_acc`` / ``val_loss``;
    ``train_epochs`` / ``train_steps`` of the training that produced the model (0 when it was only
    evaluated); ``model_selection``: which model is reported (the last epoch's: no run picks an epoch,
    least of all on the test split). With ``data``, the split sizes the accuracies are measured on
    (``test_samples``, ``val_samples``, ``train_samples``) and ``num_classes`` (chance is 1 / classes)."""
    out: dict[str, Any] = {"acc": final.get("test_acc"), "loss": final.get("test_loss")}
    if final.get("val_acc") is not None:
        out["val_acc"], out["val_loss"] = final["val_acc"], final.get("val_loss")
    out["train_epochs"] = float(final.get("epoch") or 0)
    out["train_steps"] = int(final.get("step") or 0)
    out["model_selection"] = "last epoch"
    if data is not None:
        out.update(test_samples=len(data.test), val_samples=len(data.val), train_samples=len(data.train),
                   num_classes=int(data.num_classes), input_shape="x".join(str(d) for d in data.input_shape))
    return out


def mask_fingerprint(model: nn.Module) -> str | None:
    """A hash of every weight mask of ``model`` (names and kept positions), or None without masks: two
    runs with the same fingerprint pruned exactly the same weights."""
    import hashlib

    digest = hashlib.sha256()
    found = False
    for name, buf in model.named_buffers():
        if masked_name(name) is not None:
            found = True
            digest.update(name.encode())
            digest.update(buf.detach().to("cpu").bool().numpy().tobytes())
    return digest.hexdigest()[:16] if found else None


def plan_fingerprint(plan: dict[str, Any]) -> str:
    """A hash of the channels a structured plan keeps, group by group: equal for two prunes that removed
    exactly the same channels."""
    import hashlib

    groups = [[str(g.get("name")), [int(i) for i in g.get("kept") or []]] for g in plan.get("groups") or []]
    return hashlib.sha256(canonical_json(groups).encode()).hexdigest()[:16]


@dataclass
class DenseModel:
    """The trained dense model of a run: module, spec, training history and final row, checkpoint path."""

    model: nn.Module
    spec: Any
    history: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)
    checkpoint: Path | None = None


def dense_model(ctx: RunContext, run: RunConfig, data=None) -> DenseModel:
    """The run's model trained densely with ``run.train`` (its seed included): built once per
    (architecture, data, training config) across the whole study and loaded from the cache after."""
    from prunelab.checkpoint import load_model

    data = data if data is not None else load_data(run)
    spec = arch_spec(run, data)
    key = {"what": "dense", "arch": spec.to_dict(), "data": run.data, "train": run.train}

    def produce(folder: Path) -> None:
        from prunelab.io import atomic_write_json, save_checkpoint
        from prunelab.models import create
        from prunelab.study.executors import seed_everything
        from prunelab.train import train

        seed_everything(run.seed)
        model = create(spec)
        result = train(model, data, run.train_config(), callbacks=[ctx.callback("dense")])
        save_checkpoint(folder / "model.pt", arch=spec.to_dict(), state_dict=model.state_dict(),
                        meta={"what": "dense", "train": run.train})
        atomic_write_json(folder / "history.json", {"history": result.history, "final": result.final})

    folder = ctx.artifact(key, produce)
    ctx.record(dense_model=folder.name)  # every run of this seed that starts from it records the same name
    loaded = load_model(folder / "model.pt")
    record = json.loads((folder / "history.json").read_text())
    return DenseModel(loaded.model, loaded.spec, record["history"], record["final"], folder / "model.pt")
