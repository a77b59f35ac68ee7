"""One study run on several processes: the entry point ``torchrun`` starts once per rank.

``python -m torch.distributed.run --standalone --nproc-per-node N -m prunelab.study.launch TASK.json``
(what :class:`prunelab.study.executors.TorchrunExecutor` starts) joins the process group first, so
every rank executes the run's task together: the trainer wraps the model in
``DistributedDataParallel`` and shards each batch, Fisher scores are summed over ranks before a
channel is chosen, shared artifacts are produced by all ranks in step and kept by rank 0
(:func:`prunelab.study.context.build_artifact`). Only rank 0 reports: progress lines go to the
task's progress file (JSON lines) and the outcome to its outcome file, written atomically; the
executor reads both. ``TASK.json`` holds ``{"run": RunConfig dict, "job": Job dict, "outcome":
path, "progress": path}``.
"""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Any


def main(argv: list[str] | None = None) -> int:
    from prunelab.io import atomic_write_json
    from prunelab.study.executors import Job, execute_run
    from prunelab.train import distributed as ddp

    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1:
        sys.stderr.write("usage: python -m prunelab.study.launch TASK.json (started by torchrun)\n")
        return 2
    with open(argv[0]) as fh:
        task = json.load(fh)
    job = Job(**task["job"])
    ddp.init_from_env()
    main_rank = ddp.is_main_process()
    if job.threads:
        import torch

        torch.set_num_threads(job.threads)

    def sink(info: dict[str, Any]) -> None:
        # Live progress only (the outcome file holds the results): a full disk must not fail the run here.
        with contextlib.suppress(OSError), open(task["progress"], "a") as fh:
            fh.write(json.dumps(info, default=str) + "\n")

    try:
        outcome = execute_run(task["run"], job, sink if main_rank else None)
        outcome.setdefault("env", {})["world_size"] = ddp.world_size()
        if main_rank:
            atomic_write_json(task["outcome"], outcome)
    finally:
        ddp.destroy()
    return 0 if outcome.get("ok") or main_rank else 1


if __name__ == "__main__":
    sys.exit(main())
