"""Checks that masks hold, read independently of prunelab's mask helpers, and the cases the property
tests draw (shared by ``test_masks_hold.py`` and its DDP worker processes).

Masks are found by the ``<param>_mask`` buffer name alone; weights, optimiser state and saved
state_dicts are read as plain tensors. :func:`observed` appends a :class:`HoldCheck` to every
:class:`~prunelab.train.Trainer` built inside it, so any path (CLI, study, API) is checked after
every optimiser step.
"""

from __future__ import annotations

import contextlib
from unittest import mock

import torch
from hypothesis import strategies as st
from torch import nn

from prunelab.checkpoint import load_model
from prunelab.models import ArchSpec
from prunelab.prune.structured import StructuredConfig, StructuredPruner, Target
from prunelab.train import Callback, TrainConfig, Trainer

#: the model every case trains: two hidden Linear-BN-ReLU layers on the 64 pixels of the digits
MLP = ArchSpec("mlp", {"hidden_widths": [16, 12], "in_features": 64, "num_classes": 10})


def masks_of(model: nn.Module) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(param name, param, mask) for every ``<param>_mask`` buffer, found by name alone."""
    params = dict(model.named_parameters())
    return [(key[: -len("_mask")], params[key[: -len("_mask")]], buf)
            for key, buf in model.named_buffers() if key.endswith("_mask") and key[: -len("_mask")] in params]


def assert_zero_under_masks(model: nn.Module, optimizer=None) -> int:
    """Every masked weight, and every optimiser state tensor of its shape, is exactly zero where pruned.
    Returns the number of pruned entries checked."""
    n = 0
    for name, param, mask in masks_of(model):
        pruned = ~mask.bool()
        assert torch.count_nonzero(param.detach()[pruned]) == 0, f"{name}: pruned weights are non-zero"
        state = optimizer.state.get(param, {}) if optimizer is not None else {}
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.shape == param.shape:
                assert torch.count_nonzero(value[pruned]) == 0, f"{name}: optimiser {key} of pruned weights"
        n += int(pruned.sum())
    return n


def assert_saved_zero_under_masks(path, expect_masks: dict[str, torch.Tensor] | None = None) -> int:
    """The same on a written checkpoint, read twice: as raw tensors and through ``load_model``."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state.get("model"))
    n = 0
    for key, mask in state.items():
        if key.endswith("_mask"):
            weight = state[key[: -len("_mask")]]
            assert torch.count_nonzero(weight[~mask]) == 0, f"{key}: saved pruned weights are non-zero"
            n += int((~mask).sum())
            if expect_masks is not None:
                assert torch.equal(mask, expect_masks[key]), f"{key} changed"
    if "format" not in torch.load(path, map_location="cpu", weights_only=True):  # a model checkpoint
        assert assert_zero_under_masks(load_model(path).model) == n
    return n


def mask_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if k.endswith("_mask")}


def dead_channels_read_zero(pruner: StructuredPruner, x: torch.Tensor) -> int:
    """Run ``x`` through the pruner's model and check that every masked channel is exactly zero at each
    of its group's mask points (positions read from the group's members). Returns the entries checked."""
    model, seen, hooks = pruner.model, [], []
    for group in pruner.groups:
        alive = pruner.masks.alive[group.name]
        outputs = {m.module: m for m in group.members if m.kind in ("out", "depthwise")}
        for point in group.mask_points:
            member = outputs[point]
            dead = [i for i, c in zip(member.idxs, member.channels) if not alive[c]]
            if dead:
                hooks.append(model.get_submodule(point).register_forward_hook(
                    lambda _m, _i, out, dead=dead: seen.append(out[:, dead].detach().clone())))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x.to(next(model.parameters()).device))
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    assert all(torch.count_nonzero(s) == 0 for s in seen), "a masked channel is non-zero"
    return sum(s.numel() for s in seen)


class HoldCheck(Callback):
    """After every optimiser step (seen before the next one starts, and at the end): masked weights and
    their optimiser state are zero, and every channel the structured pruners in ``pruners`` built on
    this model have masked reads as zero. ``steps`` counts the steps checked."""

    def __init__(self, pruners: list[StructuredPruner]) -> None:
        self.pruners = pruners
        self.steps = 0
        self.checked = 0

    def check(self, trainer) -> None:
        self.checked += assert_zero_under_masks(trainer.model, trainer.optimizer)
        for pruner in self.pruners:
            if pruner.model is trainer.model:
                self.checked += dead_channels_read_zero(pruner, trainer.data.test.x[:8])

    def on_batch_start(self, trainer, x, y) -> None:
        if trainer.step > 0:
            self.check(trainer)
            self.steps += 1

    def on_fit_end(self, trainer) -> None:
        self.check(trainer)
        self.steps += 1


@contextlib.contextmanager
def observed():
    """Inside: every Trainer gets a :class:`HoldCheck` as its last callback, and every StructuredPruner
    is recorded so the checks can read its masks. Yields the list of checks."""
    checks: list[HoldCheck] = []
    pruners: list[StructuredPruner] = []
    trainer_init, pruner_init = Trainer.__init__, StructuredPruner.__init__

    def init_trainer(self, model, data, config=None, callbacks=(), params=None):
        checks.append(HoldCheck(pruners))
        trainer_init(self, model, data, config, [*callbacks, checks[-1]], params=params)

    def init_pruner(self, *args, **kwargs):
        pruner_init(self, *args, **kwargs)
        pruners.append(self)

    with mock.patch.object(Trainer, "__init__", init_trainer), \
            mock.patch.object(StructuredPruner, "__init__", init_pruner):
        yield checks


# ------------------------------------------------------------------- the cases the property tests draw
#: what the trainer is asked to do (optimiser and its state, weight decay, the run length)
recipes = st.fixed_dictionaries({
    "optimizer": st.sampled_from(["sgd", "adam"]),
    "momentum": st.sampled_from([0.0, 0.9]),
    "nesterov": st.booleans(),
    "weight_decay": st.sampled_from([0.0, 5e-3]),
    "lr": st.sampled_from([0.01, 0.1]),
    "steps": st.integers(2, 5),
    "seed": st.integers(0, 50),
})
#: which weights are masked
masks = st.fixed_dictionaries({
    "method": st.sampled_from(["global", "uniform", "random"]),
    "sparsity": st.sampled_from([0.3, 0.5, 0.75, 0.9]),
})


def recipe_config(r: dict, **kw) -> TrainConfig:
    nesterov = r["nesterov"] and r["optimizer"] == "sgd" and r["momentum"] > 0
    return TrainConfig(epochs=kw.pop("epochs", 1), batch_size=64, lr=r["lr"], optimizer=r["optimizer"],
                       momentum=r["momentum"], nesterov=nesterov, weight_decay=r["weight_decay"], schedule="constant",
                       device="cpu", seed=r["seed"], max_steps=kw.pop("max_steps", r["steps"]), **kw)


structured_cases = st.fixed_dictionaries({
    "criterion": st.sampled_from(["l1", "fisher", "bn", "random"]),
    "every": st.integers(1, 2),
    "per_prune": st.integers(1, 3),
    "ratio": st.sampled_from([0.5, 0.7]),
})


def structured_pruner(model, s: dict, seed: int) -> StructuredPruner:
    params = sum(p.numel() for p in model.parameters())
    cfg = StructuredConfig(criterion=s["criterion"], prune_every=s["every"], channels_per_prune=s["per_prune"],
                           target=Target("params", params * s["ratio"]), seed=seed)
    return StructuredPruner(model, cfg, (1, 8, 8), spec=MLP)
