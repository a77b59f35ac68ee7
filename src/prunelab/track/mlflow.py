"""MLflow: a local file store (``mlflow ui --backend-store-uri DIR``), no tracking server.

Each prunelab run is an MLflow run in the experiment named after the study (or ``prunelab``), with
the resolved configuration as parameters, the curve, trajectory and final metrics as metrics, and
the tag ``prunelab.run_id``; a run logged again replaces the earlier MLflow run of that id. MLflow 3
keeps its file store in maintenance mode behind ``MLFLOW_ALLOW_FILE_STORE``; a local folder of
plain files is what this tracker is for, so it sets that switch for its own client.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

from prunelab.track import Tracker

_MAX_PARAM = 6000  # MLflow's limit on a parameter value's length


class MLflowTracker(Tracker):
    name = "mlflow"

    def __init__(self, folder, experiment: str = "prunelab") -> None:
        super().__init__(folder, experiment)
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.tracking import MlflowClient

        self.folder.mkdir(parents=True, exist_ok=True)
        self.uri = self.folder.resolve().as_uri()
        self.client = MlflowClient(tracking_uri=self.uri)
        found = self.client.get_experiment_by_name(experiment)
        self.experiment_id = found.experiment_id if found is not None else self.client.create_experiment(experiment)
        self._run_id: str | None = None

    def start_run(self, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str] | None = None) -> None:
        from mlflow.entities import Param, RunTag

        tags = dict(tags or {})
        key = tags.get("prunelab.run_id")
        if key:
            for old in self.client.search_runs([self.experiment_id], f"tags.`prunelab.run_id` = '{key}'"):
                self.client.delete_run(old.info.run_id)
        run = self.client.create_run(self.experiment_id, run_name=run_name)
        self._run_id = run.info.run_id
        items = [Param(k[:250], ("" if v is None else str(v))[:_MAX_PARAM]) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 parameters per batch
            self.client.log_batch(self._run_id, params=items[start:start + 100])
        if tags:
            self.client.log_batch(self._run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self._run_id, metrics=[Metric(k, float(v), now, int(step)) for k, v in metrics.items()])

    def end_run(self) -> None:
        if self._run_id is not None:
            self.client.set_terminated(self._run_id)
            self._run_id = None
