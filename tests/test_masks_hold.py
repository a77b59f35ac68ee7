"""Masks hold in every path that trains a masked model; re-pruning never revives weights silently;
a diverging run stops with one line.

Every check here reads the masks straight from the ``<param>_mask`` buffers (or the saved
state_dict) and the weights and optimiser state as tensors, independently of prunelab's mask
helpers. The property tests observe every optimiser step of every trainer a path builds: a
:class:`HoldCheck` callback is appended to each :class:`~prunelab.train.Trainer` made inside
:func:`observed`, and it asserts after each step that each masked weight and its optimiser state
are exactly zero, and that every channel a structured pruner has masked reads as exactly zero.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import prunelab.data as D
from prunelab.checkpoint import load_model
from prunelab.cli import main
from prunelab.errors import PrunelabError
from prunelab.io import save_checkpoint
from prunelab.models import ArchSpec, create
from prunelab.prune.structured import StructuredConfig, StructuredPruner, Target
from prunelab.prune.unstructured import PruneConfig, kept_count, prune, prune_global
from prunelab.train import Callback, TrainConfig, Trainer, train

torch.set_num_threads(1)

MLP = ArchSpec("mlp", {"hidden_widths": [16, 12], "in_features": 64, "num_classes": 10})
FAST = ["--data", "digits", "--batch-size", "64", "--device", "cpu"]


@pytest.fixture(scope="module")
def digits():
    return D.load("digits")


# ----------------------------------------------------------------------------- independent checks
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


def pruned_checkpoint(path, sparsity: float = 0.8, method: str = "uniform", seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = create(MLP)
    prune(model, PruneConfig(method, sparsity, seed=seed), warn=False)
    save_checkpoint(path, arch=MLP.to_dict(), state_dict=model.state_dict())
    return mask_state(model)


# -------------------------------------------------------------------------- regression: finding 1
def test_cli_train_of_a_pruned_checkpoint_keeps_every_pruned_weight_zero(tmp_path, capsys):
    masks = pruned_checkpoint(tmp_path / "p.pt", 0.9, "global")
    pruned = sum(int((~m).sum()) for m in masks.values())
    rc = main(["train", str(tmp_path / "p.pt"), *FAST, "--epochs", "2", "--lr", "0.1", "--out", str(tmp_path / "t.pt")])
    assert rc == 0, capsys.readouterr().err
    assert assert_saved_zero_under_masks(tmp_path / "t.pt", masks) == pruned  # 0 of them leak (all did before)
    assert any(torch.count_nonzero(w) for _, w, _ in masks_of(load_model(tmp_path / "t.pt").model))


def test_plain_train_api_without_callbacks_keeps_masks_and_optimizer_state(digits):
    for optimizer in ("sgd", "adam"):
        torch.manual_seed(0)
        model = create(MLP)
        prune_global(model, 0.7)
        masks = mask_state(model)
        cfg = TrainConfig(epochs=1, batch_size=64, lr=0.05, optimizer=optimizer, weight_decay=5e-3, device="cpu",
                          max_steps=5)
        trainer = Trainer(model, digits, cfg)
        trainer.fit()
        assert assert_zero_under_masks(model, trainer.optimizer) == sum(int((~m).sum()) for m in masks.values())
        assert all(torch.equal(mask_state(model)[k], v) for k, v in masks.items())
        train(model, digits, cfg)  # the one-call API too
        assert assert_zero_under_masks(model) > 0


def test_a_mask_attached_during_training_is_held_from_the_next_step(digits):
    class PruneAtStep(Callback):
        def on_step_end(self, trainer):
            if trainer.step == 2:
                prune_global(trainer.model, 0.6)

    with observed() as checks:
        model = create(MLP)
        Trainer(model, digits, TrainConfig(epochs=1, batch_size=64, lr=0.1, device="cpu", max_steps=6),
                callbacks=[PruneAtStep()]).fit()
    assert checks[0].steps == 6 and checks[0].checked > 0  # steps 1-5 seen at the next batch, step 6 at the end


# -------------------------------------------------------------------------- regression: re-pruning
@pytest.mark.filterwarnings("ignore:layer collapse")
def test_repruning_below_the_present_sparsity_keeps_pruned_weights_unless_regrowth_is_allowed():
    torch.manual_seed(0)
    model = create(MLP)
    prune_global(model, 0.9)
    before = mask_state(model)
    total = sum(m.numel() for m in before.values())
    kept_before = sum(int(m.sum()) for m in before.values())
    assert kept_before == kept_count(total, 0.9)
    with pytest.warns(UserWarning, match=f"{kept_count(total, 0.5) - kept_before:,} already-pruned weights "
                                         "stay pruned") as record:
        report = prune_global(model, 0.5)
    assert "RegrowWarning" in {w.category.__name__ for w in record}
    assert all(torch.equal(mask_state(model)[k], v) for k, v in before.items())
    assert report.kept == kept_before and report.details["kept_pruned"] == kept_count(total, 0.5) - kept_before
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*already-pruned")
        prune_global(model, 0.95)  # a higher target only removes more: no warning
        kept_95 = sum(int(m.sum()) for m in mask_state(model).values())
        assert kept_95 == kept_count(total, 0.95)
        report = prune_global(model, 0.5, allow_regrow=True)
    assert report.kept == kept_count(total, 0.5) and report.details["regrown"] == kept_count(total, 0.5) - kept_95
    assert not any(report.warnings)


def test_cli_reprune_warns_and_allow_regrow_revives(tmp_path, capsys):
    masks = pruned_checkpoint(tmp_path / "p90.pt", 0.9, "global")
    total = sum(m.numel() for m in masks.values())
    revived = kept_count(total, 0.5) - kept_count(total, 0.9)
    args = ["prune", str(tmp_path / "p90.pt"), *FAST, "--sparsity", "0.5", "--epochs", "0", "--json"]
    assert main([*args, "--out", str(tmp_path / "a.pt")]) == 0
    captured = capsys.readouterr()
    assert f"warning: {revived:,} already-pruned weights stay pruned" in captured.err and "--allow-regrow" in captured.err
    summary = json.loads(captured.out)
    assert summary["sparsity"] == pytest.approx(1 - kept_count(total, 0.9) / total)
    assert summary["report"]["details"]["kept_pruned"] == revived and summary["prune"]["allow_regrow"] is False
    assert assert_saved_zero_under_masks(tmp_path / "a.pt", masks) == total - kept_count(total, 0.9)
    assert main([*args, "--allow-regrow", "--out", str(tmp_path / "b.pt")]) == 0
    captured = capsys.readouterr()
    assert "already-pruned" not in captured.err
    assert json.loads(captured.out)["report"]["details"]["regrown"] == revived
    assert assert_saved_zero_under_masks(tmp_path / "b.pt") == total - kept_count(total, 0.5)
    assert main(["prune", str(tmp_path / "p90.pt"), *FAST, "--method", "lowrank", "--sparsity", "0.5",
                 "--allow-regrow"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


# ------------------------------------------------------------------------- regression: divergence
class PoisonBatch(Callback):
    """Fill the inputs of optimiser step ``at`` (counted from 1) with NaN."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_batch_start(self, trainer, x, y):
        if trainer.step + 1 == self.at:
            x.fill_(float("nan"))


def test_cli_lr_1e30_stops_with_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "d.pt"
    rc = main(["train", "mlp", *FAST, "--epochs", "2", "--lr", "1e30", "--out", str(out), "--state",
               str(tmp_path / "s.pt")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert err.startswith("prunelab train: error: training diverged at epoch 1 step ") and "(lr 1e+30)" in err
    assert "lower the learning rate (--lr)" in err and not out.exists() and not (tmp_path / "s.pt").exists()
    with pytest.warns(RuntimeWarning, match="training diverged at epoch 1"):
        rc = main(["train", "mlp", *FAST, "--epochs", "1", "--lr", "1e30", "--on-nonfinite", "warn", "--out",
                   str(out)])
    assert rc == 0 and out.exists()


def test_divergence_names_the_first_bad_step_and_keeps_the_last_good_state(digits, tmp_path):
    state = tmp_path / "s.pt"
    cfg = TrainConfig(epochs=3, batch_size=128, lr=0.05, device="cpu", checkpoint=str(state))
    spe = Trainer(create(MLP), digits, cfg).steps_per_epoch  # 1295 samples: 11 steps of 128 per epoch
    at = spe + 4  # the 4th step of epoch 2
    with pytest.raises(PrunelabError, match=rf"^training diverged at epoch 2 step {at}: loss is nan \(lr 0.05\)"
                       ) as info:
        Trainer(create(MLP), digits, cfg, callbacks=[PoisonBatch(at)]).fit()
    assert type(info.value).__name__ == "TrainingDiverged" and (info.value.epoch, info.value.step) == (2, at)
    assert torch.load(state, weights_only=True)["step"] == spe  # epoch 1's state; epoch 2's was not written
    # weights gone non-finite on the last step, with every loss finite
    class InfWeight(Callback):
        def on_step_end(self, trainer):
            if trainer.step == 3:
                with torch.no_grad():
                    trainer.model.classifier.bias[0] = float("inf")

    with pytest.raises(PrunelabError, match=r"^training diverged at epoch 1 step 3: weight classifier.bias holds"):
        Trainer(create(MLP), digits, TrainConfig(epochs=1, batch_size=128, device="cpu", max_steps=3),
                callbacks=[InfWeight()]).fit()
    with pytest.raises(PrunelabError, match="unknown on_nonfinite 'ignore'; valid choices: stop, warn"):
        TrainConfig(on_nonfinite="ignore").validate()
