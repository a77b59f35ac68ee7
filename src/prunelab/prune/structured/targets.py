"""Pruning targets in real units: channels left, parameters, MACs, or measured latency.

A channel-ratio knob is not a size knob (Torch-Pruning's ``pruning_ratio`` removes channels, the
parameter count falls roughly quadratically), so prunelab stops at what the user asked for:

* ``channels``: channels left across the pruned groups (WRN-40-2 has 1,344 internal channels; the
  seeds' 1,300-prune checkpoint keeps 44);
* ``params`` / ``macs``: the compressed model's count (:func:`prunelab.measure.count_params` ``.params``
  and :func:`prunelab.measure.count_macs` at batch 1), estimated from the live channels
  (:class:`~prunelab.prune.structured.cost.CostModel`) and confirmed on the compressed model;
* ``latency_ms``: median eager latency of the compressed model, measured
  (:func:`prunelab.measure.latency.latency_of`) at a given batch size, thread count and device.
"""

from __future__ import annotations

from dataclasses import dataclass

from prunelab.errors import PrunelabError, check_choice

TARGET_KINDS = ("channels", "params", "macs", "latency_ms")


@dataclass(frozen=True)
class Target:
    kind: str
    value: float
    latency_batch: int = 1
    latency_threads: int | None = None
    latency_device: str = "cpu"

    def __post_init__(self) -> None:
        check_choice("target kind", self.kind, TARGET_KINDS)
        if not self.value > 0 and not (self.kind == "channels" and self.value == 0):
            raise PrunelabError(f"target {self.kind} must be positive, got {self.value}")
        if self.latency_batch < 1:
            raise PrunelabError(f"latency batch size must be >= 1, got {self.latency_batch}")
        if self.kind == "latency_ms":  # checked here, not after a dense pre-training run
            from prunelab.measure.timing import check_device, check_threads

            check_threads(self.latency_threads)
            check_device(self.latency_device)

    def met(self, value: float) -> bool:
        return value <= self.value

    def describe(self) -> str:
        unit = {"channels": "channels", "params": "parameters", "macs": "MACs", "latency_ms": "ms"}[self.kind]
        extra = f" at batch {self.latency_batch}" if self.kind == "latency_ms" else ""
        return f"{self.value:g} {unit}{extra}"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "value": self.value, "latency_batch": self.latency_batch,
                "latency_threads": self.latency_threads, "latency_device": self.latency_device}


def measure_latency_ms(model, input_shape, target: Target) -> float:
    """Median latency (ms) of ``model`` under the target's measurement settings."""
    try:
        from prunelab.measure.latency import latency_of
    except ImportError as exc:  # pragma: no cover - the measure package ships with prunelab
        raise PrunelabError(f"latency targets need prunelab.measure.latency ({exc})") from exc
    return float(latency_of(model, input_shape, batch_size=target.latency_batch,
                            threads=target.latency_threads, device=target.latency_device))
