"""Training a pruned architecture from scratch: Scratch-E and Scratch-B (Liu et al. 2019).

Only the *architecture* of a pruned network is kept; every weight is drawn afresh with the family's
initialisation for the layer's actual (smaller) fan. Crowley et al. (2018, sec. 4.2) slice a fresh
full-width init instead (pytorch-prunes ``train.py --deploy``), so their He std belongs to the
unpruned fan-out;
``init="constructor"`` together with a plan reproduces that slicing.

* Scratch-E trains for the same number of epochs as the dense model.
* Scratch-B trains for the same compute: epochs x (dense MACs / pruned MACs), truncated to an
  integer as in the reference scripts (PFS ``train_pruned.py``: ``int(160 / (1 - p))``), with the
  LR milestones moved along (kept at the same fractions of the run, 50% and 75% in PFS's
  ``train_pruned.py``).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from prunelab.data.base import DataBundle
from prunelab.errors import PrunelabError, check_choice
from prunelab.models import ArchSpec, create, resolve
from prunelab.protocols.build import build_and_train, data_inputs, fit_spec_to_data
from prunelab.protocols.targets import measure

BUDGETS = ("E", "B")
DENSE_META_KEY = "dense_arch"


@dataclass
class PrunedArchitecture:
    """A pruned network's architecture without its weights.

    ``spec`` builds it directly (a narrowed spec), or, when the pruning cut channels that no spec
    keyword can express (e.g. residual streams pruned jointly), ``spec`` is the base model and
    ``plan`` compresses it. ``dense`` is the unpruned model it came from (Scratch-B's reference).
    ``source_plan`` keeps the plan a narrowed spec came from, for ``init="constructor"``.
    """

    spec: ArchSpec
    plan: dict | None = None
    dense: ArchSpec | None = None
    source: str = ""
    source_plan: dict | None = None


def pruned_architecture(source: Any, dense: str | ArchSpec | dict | None = None) -> PrunedArchitecture:
    """The architecture of a pruned model: a checkpoint path, a structured plan, or an ArchSpec.

    A plan (``{"base", "scope", "groups"}``) becomes a narrowed spec through
    ``prunelab.prune.structured.plan.spec_of_compressed`` when its scope allows; otherwise it is kept
    and applied to the base model at build time. ``dense`` overrides the dense reference, which is
    otherwise the plan's base or the checkpoint's ``dense_arch`` metadata.
    """
    dense_spec = resolve(dense) if dense is not None else None
    if isinstance(source, (str, os.PathLike)):
        from prunelab.checkpoint import load_model

        loaded = load_model(source)
        from prunelab.prune.unstructured.masks import carries_masks

        if carries_masks(name for name, _ in loaded.model.named_buffers()):
            raise PrunelabError(f"checkpoint {source} holds unstructured weight masks; training from scratch "
                                "here takes channel-pruned (structured) architectures")
        if loaded.plan:
            arch = _from_plan(loaded.plan, str(source))
        else:
            meta_dense = loaded.meta.get(DENSE_META_KEY)
            arch = PrunedArchitecture(loaded.spec, None, ArchSpec.from_dict(meta_dense) if meta_dense else None,
                                      str(source))
    elif isinstance(source, dict) and "groups" in source:
        arch = _from_plan(source, "plan")
    elif isinstance(source, (ArchSpec, dict)):
        arch = PrunedArchitecture(resolve(source), None, None, "spec")
    else:
        raise PrunelabError(f"cannot read a pruned architecture from {type(source).__name__}; "
                            "valid: a checkpoint path, a structured plan, an architecture spec")
    if dense_spec is not None:
        if dense_spec.family != arch.spec.family:
            name = dense if isinstance(dense, str) else dense_spec.family
            raise PrunelabError(f"dense model {name} is a {dense_spec.family} network but the pruned "
                                f"architecture is {arch.spec.family}; give the model it was pruned from")
        recorded = arch.dense
        if recorded is not None:
            fit_keys = ("num_classes", "in_channels", "in_features", "input_size")
            ours = {k: v for k, v in dense_spec.kwargs.items() if k not in fit_keys}
            theirs = {k: v for k, v in recorded.kwargs.items() if k not in fit_keys}
            if ours != theirs:
                diff = {k: (ours.get(k), theirs.get(k)) for k in sorted(set(ours) | set(theirs))
                        if ours.get(k) != theirs.get(k)}
                raise PrunelabError(f"dense model {dense} differs from the one {arch.source} was pruned from "
                                    f"((--base, recorded) {diff}); leave --base out to use the recorded one")
            return arch  # the recorded dense model, already fitted to the data it was trained on
        arch.dense = dense_spec
    return arch


def _from_plan(plan: dict, source: str) -> PrunedArchitecture:
    if not isinstance(plan.get("base"), dict):
        raise PrunelabError(f"structured plan from {source} has no 'base' architecture")
    base = ArchSpec.from_dict(plan["base"])
    narrowed = narrowed_spec(plan, base)
    if narrowed is not None:
        return PrunedArchitecture(narrowed, None, base, source, source_plan=plan)
    return PrunedArchitecture(base, plan, base, source, source_plan=plan)


def narrowed_spec(plan: dict, base: ArchSpec) -> ArchSpec | None:
    """The constructor spec of a plan's compressed model, or None when none exists.

    Only plans of scope ``internal`` (every group a family width unit) narrow to a spec: the
    structured engine's ``spec_of_compressed`` when it can, else the base model compressed by the
    plan, its width units read back (:func:`prunelab.models.spec_from_units`) and the rebuilt model
    checked to have the compressed model's parameter count.
    """
    if plan.get("scope") != "internal":
        return None
    from prunelab.prune.structured import plan as plan_mod

    try:
        return resolve(plan_mod.spec_of_compressed(plan))
    except PrunelabError:
        pass
    import torch

    from prunelab.models import spec_from_units, width_units

    with torch.random.fork_rng(devices=[]):
        compressed = plan_mod.apply_plan(create(base), plan, check=False)
        try:
            spec = spec_from_units(base, list(width_units(compressed, base)))
            rebuilt = create(spec)
        except PrunelabError:
            return None
    return spec if _numel(rebuilt) == _numel(compressed) else None


def _numel(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def scratch_b_factor(dense_macs: float, pruned_macs: float) -> float:
    """Scratch-B's budget factor: dense MACs / pruned MACs (Liu et al. 2019)."""
    if pruned_macs <= 0 or dense_macs <= 0:
        raise PrunelabError(f"Scratch-B needs positive MACs, got dense {dense_macs} and pruned {pruned_macs}")
    return float(dense_macs) / float(pruned_macs)


def scale_schedule(config, factor: float):
    """A copy of ``config`` trained ``factor`` times longer, its LR schedule moved with it.

    Epochs become ``int(epochs * factor)`` (at least 1); milestones given as fractions (< 1) move by
    themselves, milestones given in epochs are scaled; StepLR's ``step_size`` and a ``max_steps``
    cap scale too. Warm-up stays as long as it was: it settles the start, not the budget.
    """
    if factor <= 0:
        raise PrunelabError(f"budget factor must be positive, got {factor}")
    epochs = max(1, int(config.epochs * factor + 1e-9)) if config.epochs > 0 else 0
    milestones = list(config.milestones or [])
    if milestones and any(m >= 1 for m in milestones):
        milestones = [max(1, int(round(m * factor))) if m >= 1 else m for m in milestones]
    changes: dict[str, Any] = {"epochs": epochs, "milestones": milestones,
                               "step_size": max(1, int(round(config.step_size * factor)))}
    if config.max_steps is not None:
        changes["max_steps"] = max(1, int(config.max_steps * factor + 1e-9))
    return dataclasses.replace(config, **changes)


@dataclass
class ScratchResult:
    """What a from-scratch run produced: the architecture, its budget and its training history."""

    budget: str
    spec: ArchSpec
    plan: dict | None
    dense: ArchSpec | None
    params: int
    macs: int
    dense_macs: int | None
    factor: float
    epochs: int
    model: nn.Module = field(repr=False)
    result: Any = field(repr=False)
    config: Any = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "protocol": f"scratch-{self.budget}",
            "arch": self.spec.to_dict(),
            "plan": self.plan,
            "dense_arch": self.dense.to_dict() if self.dense else None,
            "params": self.params,
            "macs": self.macs,
            "dense_macs": self.dense_macs,
            "budget_factor": self.factor,
            "epochs": self.epochs,
            "train": self.config.to_dict(),
            "final": dict(getattr(self.result, "final", {}) or {}),
        }


def train_from_scratch(source: Any, data: DataBundle, config, *, budget: str = "E",
                       dense: str | ArchSpec | dict | None = None, init: str = "family",
                       callbacks=()) -> ScratchResult:
    """Re-initialise the architecture of ``source`` (see :func:`pruned_architecture`) and train it.

    ``budget="E"`` keeps ``config`` as the dense model's recipe; ``budget="B"`` scales it by dense
    MACs / pruned MACs (:func:`scale_schedule`), which needs the dense reference (from the plan,
    the checkpoint, or ``dense``).
    """
    check_choice("Scratch budget", budget, BUDGETS)
    arch = source if isinstance(source, PrunedArchitecture) else pruned_architecture(source, dense)
    if dense is not None and isinstance(source, PrunedArchitecture):
        arch = dataclasses.replace(arch, dense=resolve(dense))
    if init == "constructor" and arch.plan is None and arch.source_plan is not None:
        # Crowley et al.'s slicing: build the base model (its full-width init) and compress it by the plan.
        arch = dataclasses.replace(arch, spec=ArchSpec.from_dict(arch.source_plan["base"]), plan=arch.source_plan)
    spec = fit_spec_to_data(arch.spec, data)
    shape = data_inputs(data)
    probe = _probe_model(spec, arch.plan)
    macs = int(measure(probe, "macs", shape))
    params = int(measure(probe, "params", shape))
    dense_macs = None
    factor = 1.0
    if arch.dense is not None:
        dense_macs = int(measure(_probe_model(fit_spec_to_data(arch.dense, data), None), "macs", shape))
    if budget == "B":
        if dense_macs is None:
            raise PrunelabError("Scratch-B needs the dense model the architecture was pruned from: pass dense=NAME "
                                "(--base), or a checkpoint or plan that records it")
        factor = scratch_b_factor(dense_macs, macs)
        config = scale_schedule(config, factor)
    model, result = build_and_train(spec, data, config, plan=arch.plan, init=init, callbacks=callbacks)
    return ScratchResult(budget, spec, arch.plan, arch.dense, params, macs, dense_macs, factor, config.epochs,
                         model, result, config)


def _probe_model(spec: ArchSpec, plan: dict | None) -> nn.Module:
    import torch

    with torch.random.fork_rng(devices=[]):
        model = create(spec)
        if plan:
            from prunelab.prune.structured.plan import apply_plan

            model = apply_plan(model, plan)
    return model
