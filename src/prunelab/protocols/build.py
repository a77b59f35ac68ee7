"""The one step every protocol ends in: build a model from an architecture spec and train it.

Reduced networks (Crowley et al. 2018, sec. 4), pruned architectures trained from scratch
(Scratch-E / Scratch-B, Liu et al. 2019), copied profiles (Crowley et al. 2018) and Pruning from
Scratch (Wang et al. 2020, stage 3) differ only in *which* architecture they hand to this step and
with which training budget. Keeping the step single means the four protocols can be compared at
matched parameters or MACs without any hidden difference in initialisation or training.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from prunelab.data.base import DataBundle
from prunelab.errors import PrunelabError, check_choice
from prunelab.models import ArchSpec, create, fit_spec, get_family, resolve

INITS = ("family", "constructor")


def fit_spec_to_data(spec: ArchSpec, data: DataBundle | None) -> ArchSpec:
    """``spec`` fitted to ``data``'s class count and input size (:func:`prunelab.models.fit_spec`).

    A zoo model registered for CIFAR-10 trains on the embedded digits set only with the digits'
    class count and input channels; every protocol measures and trains the same adapted spec.
    """
    if data is None:
        return spec
    return fit_spec(spec, data.num_classes, data.input_shape)


def data_inputs(data: DataBundle):
    """What a model of ``data`` is measured on: its input shape, or for a bundle of token blocks
    (``task == "tokens"``, e.g. the ``corpus`` data set) an :class:`~prunelab.models.inputs.InputSpec`
    of token ids ``(N, T)`` below its vocabulary (:func:`~prunelab.models.inputs.input_spec_of_data`)."""
    from prunelab.models.inputs import input_spec_of_data

    spec = input_spec_of_data(data)
    return spec.shape if spec.is_plain else spec


def reinitialise(model: nn.Module, spec: ArchSpec) -> nn.Module:
    """Re-initialise ``model`` in place with its family's rule for each layer's *actual* fan.

    Used when the architecture is a base model compressed by a plan (the plan's layers are slices of
    wider ones): Crowley et al.'s reference code keeps the slice of a full-width init, whose He
    std is computed for the unpruned fan-out (``train.py --deploy``); prunelab re-draws it for the
    real sizes. A family without a registered init falls back to each module's ``reset_parameters``
    (PyTorch's default rule, also computed from the actual fan).
    """
    fam = get_family(spec.family)
    if fam.init is not None:
        fam.init(model)
        return model
    for module in model.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
    return model


def build_model(spec: ArchSpec | str | dict, *, plan: dict | None = None, init: str = "family",
                seed: int | None = 0, data: DataBundle | None = None) -> nn.Module:
    """A freshly initialised model of architecture ``spec`` (optionally compressed by ``plan``).

    ``init="family"`` (default): the family's initialisation for the actual layer sizes. Building
    from a narrowed spec already gives that (the constructor initialises what it builds); a plan
    applied to the base model is re-initialised with :func:`reinitialise`.
    ``init="constructor"``: keep whatever the constructor (and, with a plan, the slicing) gives: the
    reference code's behaviour, for bit-for-bit comparisons.
    ``seed`` seeds the initialisation (``None`` leaves the global RNG alone).
    """
    check_choice("initialisation", init, INITS)
    spec = fit_spec_to_data(resolve(spec), data)
    if seed is not None:
        torch.manual_seed(int(seed))
    model = create(spec)
    if plan:
        from prunelab.prune.structured.plan import apply_plan

        model = apply_plan(model, plan)
        if init == "family":
            reinitialise(model, spec)
    return model


def build_and_train(spec: ArchSpec | str | dict, data: DataBundle, config, *, plan: dict | None = None,
                    init: str = "family", callbacks: Sequence = (), params=None,
                    model: nn.Module | None = None) -> tuple[nn.Module, Any]:
    """Build a model of architecture ``spec`` and train it: the last step of every protocol.

    ``config`` is a :class:`prunelab.train.config.TrainConfig`; its ``seed`` also seeds the
    initialisation, so the same seed gives the same model and numbers. ``callbacks`` and
    ``params`` go to the trainer unchanged (``params`` restricts what the optimiser updates).
    ``model`` trains an already built model of that spec instead (used when a caller has to
    modify it first, e.g. attach gates). Returns ``(model, TrainResult)``.
    """
    from prunelab.train import Trainer

    if config is None:
        raise PrunelabError("build_and_train needs a training config")
    if model is None:
        model = build_model(spec, plan=plan, init=init, seed=config.seed, data=data)
    trainer = Trainer(model, data, config, callbacks=tuple(callbacks), params=params)
    result = trainer.fit()
    return trainer.model, result
