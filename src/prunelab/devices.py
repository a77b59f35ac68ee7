"""Device names: the one check of a device's form, for training and for latency measurement.

Whether a device is present on this machine is a separate question, asked where it is used
(:func:`prunelab.train.resolve_device` for training, :func:`prunelab.measure.timing.check_device` for
timing): a study spec may be checked on one machine and run on a GPU machine.
"""

from __future__ import annotations

import re

import torch

from prunelab.errors import PrunelabError


def check_device_name(device: str | torch.device, *, timing: bool = False) -> str:
    """``device`` as a string if it has the form of a device, else a one-line error.

    For training (default): ``auto`` or any name ``torch.device`` reads (cpu, cuda, cuda:N, mps, ...).
    With ``timing=True``: the devices latency is measured on, cpu, cuda and cuda:N."""
    name = str(device)
    if timing:
        if name == "cpu" or re.fullmatch(r"cuda(:\d+)?", name):
            return name
        raise PrunelabError(f"unknown device {name!r}; valid choices: cpu, cuda, cuda:N")
    if name == "auto":
        return name
    try:
        torch.device(name)
    except RuntimeError:
        raise PrunelabError(f"unknown device {name!r}; valid choices: auto, cpu, cuda, cuda:N, mps") from None
    return name
