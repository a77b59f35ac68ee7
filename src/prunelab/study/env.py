"""The environment a run executed in, recorded with its results (and shown in reports)."""

from __future__ import annotations

import os
import platform
import socket
from typing import Any


def resolve_device(requested: str | None) -> str:
    """``auto`` -> ``cuda`` when available else ``cpu``; anything else unchanged."""
    import torch

    if requested in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(requested)


def environment(device: str | None = None) -> dict[str, Any]:
    """Versions, host, CPU count, torch threads and the device (with the GPU's name on CUDA)."""
    import numpy
    import torch

    from prunelab import __version__

    dev = resolve_device(device)
    env: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
        "prunelab": __version__, "platform": platform.platform(terse=True), "machine": platform.machine(),
        "host": socket.gethostname(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "device": dev,
    }
    if dev.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(dev).index or 0
        env["gpu"] = torch.cuda.get_device_name(index)
        env["cuda"] = torch.version.cuda
    return env
