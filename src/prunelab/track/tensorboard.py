"""TensorBoard: one folder of event files per run under the tracker folder (``tensorboard --logdir``).

Written with ``torch.utils.tensorboard.SummaryWriter`` (the ``tensorboard`` package); the resolved
configuration goes in as hyper-parameters (the HParams dashboard, with the final metrics) and as a
JSON text summary. A run logged again replaces its folder.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping
from typing import Any

from prunelab.track import Tracker


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", name).strip("._") or "run"


class TensorBoardTracker(Tracker):
    name = "tensorboard"

    def __init__(self, folder, experiment: str = "prunelab") -> None:
        super().__init__(folder, experiment)
        self._writer = None
        self._params: dict[str, Any] = {}
        self._final: dict[str, float] = {}

    def start_run(self, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str] | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        path = self.folder / _safe(run_name)
        shutil.rmtree(path, ignore_errors=True)
        self._writer = SummaryWriter(log_dir=str(path))
        self._params = {k: (v if isinstance(v, bool | int | float | str) else str(v)) for k, v in params.items()}
        self._final = {}
        self._writer.add_text("config", "```\n" + json.dumps(dict(params), indent=2, default=str) + "\n```")
        for key, value in (tags or {}).items():
            self._writer.add_text(f"tags/{key}", str(value))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for key, value in metrics.items():
            if key.startswith("final/"):
                self._final[key] = float(value)
            self._writer.add_scalar(key, float(value), global_step=int(step))

    def end_run(self) -> None:
        if self._writer is None:
            return
        # hyper-parameters with the final metrics, in the run's own folder (run_name ".")
        self._writer.add_hparams(self._params, {f"hparam/{k}": v for k, v in self._final.items()}, run_name=".")
        self._writer.close()
        self._writer = None
