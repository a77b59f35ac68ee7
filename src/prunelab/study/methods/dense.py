"""The ``dense`` kind: train a zoo model without pruning, the baseline every comparison starts from."""

from __future__ import annotations

from prunelab.protocols.build import data_inputs
from prunelab.study.common import dense_model, final_metrics, layer_rows, load_data, model_metrics
from prunelab.study.run import RunConfig
from prunelab.study.tasks import RunOutput, register


def _resolve(run: RunConfig) -> RunConfig:
    from prunelab.errors import PrunelabError

    if run.params:
        raise PrunelabError(f"the dense kind takes no parameters, got {sorted(run.params)}")
    return run


@register("dense", protocols=(), targets=(), resolve=_resolve, role="dense",
          doc="train the model densely with the study's training settings (the unpruned baseline)")
def dense(run: RunConfig, ctx) -> RunOutput:
    """Train (or reuse) the run's dense model; test accuracy and loss, parameters, MACs, per-layer table."""
    data = load_data(run)
    trained = dense_model(ctx, run, data)
    metrics = final_metrics(trained.final, data)
    metrics.update(model_metrics(trained.model, data_inputs(data), run))
    kwargs = ", ".join(f"{k}={v}" for k, v in sorted(trained.spec.kwargs.items()))
    metrics["architecture"] = f"{trained.spec.family}({kwargs})"  # the exact network, as fitted to the data
    return RunOutput(metrics=metrics, curves=trained.history, layers=layer_rows(trained.model, data_inputs(data)),
                     artifacts={"checkpoint": ctx.relative(trained.checkpoint)})
