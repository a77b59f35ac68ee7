"""Checks that masks hold, read independently of prunelab's mask helpers (tests and their DDP workers).

Masks are found by the ``<param>_mask`` buffer name alone; weights, optimiser state and saved
state_dicts are read as plain tensors. :func:`observed` appends a :class:`HoldCheck` to every
:class:`~prunelab.train.Trainer` built inside it, so any path (CLI, study, API) is checked after
every optimiser step.
"""

from __future__ import annotations

import contextlib
from unittest import mock

import torch
from torch import nn

from prunelab.checkpoint import load_model
from prunelab.prune.structured import StructuredPruner
from prunelab.train import Callback, Trainer


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
