"""One run of a study: its fully resolved configuration and its identity.

A :class:`RunConfig` holds everything that decides a run's numbers: model, data, method and its
parameters, target, protocol, seed, the resolved training settings and measurement options. Its
``run_id`` is a hash of that configuration (the study name excluded), so re-running a study finds the
runs it already has, and changing any setting makes a new run rather than silently reusing an old one.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from prunelab.study.targets import target_label


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: equal configurations give equal strings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def config_hash(obj: Any) -> str:
    """SHA-256 of :func:`canonical_json` (hex)."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


@dataclass
class RunConfig:
    """The resolved configuration of one run.

    ``model`` is a zoo name (``model_kwargs`` override its constructor arguments) or, for synthetic
    kinds, a free label; ``model_label`` is how results name it (the name unless the spec gave
    kwargs). ``method`` is the name of the study's method entry, ``kind`` its task kind and ``params``
    its parameters. ``train`` is a complete :class:`prunelab.train.config.TrainConfig` dict whose
    ``seed`` equals ``seed``.
    """

    study: str
    model: str
    data: dict[str, Any]
    method: str
    kind: str
    seed: int
    train: dict[str, Any]
    params: dict[str, Any] = field(default_factory=dict)
    target: dict[str, Any] | None = None
    protocol: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    model_label: str | None = None
    measure: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.model_label is None:
            self.model_label = self.model

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        return cls(**copy.deepcopy(d))

    def identity(self) -> dict[str, Any]:
        """What the run id hashes: the configuration without the study name."""
        d = self.to_dict()
        d.pop("study")
        return d

    @property
    def config_hash(self) -> str:
        return config_hash(self.identity())

    @property
    def run_id(self) -> str:
        return self.config_hash[:16]

    @property
    def target_label(self) -> str:
        return target_label(self.target)

    @property
    def label(self) -> str:
        """A short human description: ``wrn-16-2 / gmp / sparsity=0.9 / finetune / seed 0``."""
        parts = [str(self.model_label), self.method]
        if self.target:
            parts.append(self.target_label)
        if self.protocol:
            parts.append(self.protocol)
        parts.append(f"seed {self.seed}")
        return " / ".join(parts)

    def train_config(self, **overrides: Any):
        """The run's :class:`~prunelab.train.config.TrainConfig`, optionally with fields replaced."""
        from prunelab.train.config import TrainConfig

        d = copy.deepcopy(self.train)
        d.update(overrides)
        return TrainConfig.from_dict(d)
