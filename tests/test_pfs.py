"""Pruning from Scratch: gates, frozen weights, model selection, budgeted structure selection, CLI."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hand_counts import hand_macs
from prunelab.cli import main
from prunelab.errors import PrunelabError
from prunelab.models import ArchSpec, create, width_units
from prunelab.protocols.gates import GateBank, GateClamp, GatePenalty
from prunelab.protocols.pfs import (
    GateSelection,
    PFSConfig,
    budget_macs,
    expanded_spec,
    learn_gates,
    pruning_from_scratch,
    select_structure,
)
from prunelab.train import TrainConfig

torch.set_num_threads(1)

SPEC = ArchSpec("resnet_cifar", {"depth": 8, "in_channels": 1, "num_classes": 10})
SHAPE = (1, 8, 8)


@pytest.fixture(scope="module")
def digits():
    from prunelab.data import load

    return load("digits")


def test_gate_sits_after_bn_before_relu_and_starts_at_one():
    model = create(SPEC).eval()
    x = torch.randn(4, *SHAPE)
    before = model(x)
    units = width_units(model, SPEC)
    bank = GateBank(units).attach(model)
    assert torch.equal(model(x), before)  # all gates 1: the function is unchanged
    bn = model.get_submodule(units[0].bn)
    seen = {}
    bn.register_forward_hook(lambda m, i, o: seen.__setitem__("bn", o), prepend=True)  # before the gate
    model.get_submodule(units[0].bn.replace("bn1", "relu1")).register_forward_hook(
        lambda m, i, o: seen.__setitem__("relu_in", i[0]))
    with torch.no_grad():
        bank.gates[0].zero_()
        bank.gates[0][0] = 0.5
    model(x)
    assert torch.equal(seen["relu_in"][:, 1:], torch.zeros_like(seen["relu_in"][:, 1:]))
    assert torch.allclose(seen["relu_in"][:, 0], 0.5 * seen["bn"][:, 0])
    bank.remove()
    assert not hasattr(model, "pfs_gates")
    assert torch.equal(model(x), before)


def test_penalty_gradient_equals_the_combined_loss_and_clamp_bounds_gates():
    torch.manual_seed(0)
    lam, r = 0.5, 0.2
    x, y = torch.randn(8, *SHAPE), torch.randint(0, 10, (8,))

    def setup():
        torch.manual_seed(1)
        model = create(SPEC)
        for p in model.parameters():
            p.requires_grad_(False)
        bank = GateBank(width_units(model, SPEC)).attach(model)
        with torch.no_grad():
            for g in bank.gates:
                g.uniform_(0.1, 1.0)
        return model, bank

    model, bank = setup()
    gates = torch.cat([g.reshape(-1) for g in bank.gates])
    loss = F.cross_entropy(model(x), y) + lam * (gates.abs().mean() - r) ** 2  # the reference loss, written out
    loss.backward()
    expected = [g.grad.clone() for g in bank.gates]

    model, bank = setup()
    F.cross_entropy(model(x), y).backward()
    GatePenalty(bank, lam, r).on_after_backward(None)
    for g, e in zip(bank.gates, expected):
        assert torch.allclose(g.grad, e, atol=1e-7)
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("pfs_gates"))

    with torch.no_grad():
        bank.gates[0].fill_(-0.3)
        bank.gates[1].fill_(1.7)
    GateClamp(bank).on_step_end(None)
    flat = bank.flat().detach()
    assert float(flat.min()) == 0.0 and float(flat.max()) <= 1.0


def test_learning_leaves_every_non_gate_parameter_bit_identical(digits):
    torch.manual_seed(0)
    model = create(SPEC)
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    pfs = PFSConfig(epochs=2, batch_size=64)
    cfg = TrainConfig(device="cpu", seed=0)
    learning, trained = learn_gates(SPEC, digits, pfs, cfg, model=model)
    assert trained is model and not hasattr(model, "pfs_gates")
    params = dict(model.named_parameters())
    assert set(params) == set(initial)
    for name, p in params.items():
        assert torch.equal(p, initial[name]), name
        assert p.grad is None
    flat = torch.cat(list(learning.gates.values()))
    assert flat.min() >= 0 and flat.max() <= 1 and flat.mean() < 1  # the gates did learn
    assert [h["epoch"] for h in learning.history] == [1, 2]
    assert learning.selected_by in ("heldout", "last")


def test_gate_learning_repeats_with_the_same_seed(digits):
    pfs = PFSConfig(epochs=1, batch_size=64)
    cfg = TrainConfig(device="cpu", seed=3)
    a, _ = learn_gates(SPEC, digits, pfs, cfg)
    b, _ = learn_gates(SPEC, digits, pfs, cfg)
    assert all(torch.equal(a.gates[k], b.gates[k]) for k in a.gates)


class _FakeTrainer:
    epoch = 0


def test_model_selection_rule():
    model = create(SPEC)
    bank = GateBank(width_units(model, SPEC)).attach(model)
    n = bank.flat().numel()
    sel = GateSelection(bank, ratio=0.5)

    def epoch(k, nonzero_fraction, acc):
        with torch.no_grad():
            flat = torch.zeros(n)
            flat[: int(round(nonzero_fraction * n))] = 0.7
            start = 0
            for g in bank.gates:
                g.copy_(flat[start:start + g.numel()])
                start += g.numel()
        sel.on_epoch_end(_FakeTrainer(), {"epoch": k, "val_acc": acc})

    epoch(1, 1.0, 0.90)  # best accuracy but too many live gates
    epoch(2, 0.4, 0.50)
    epoch(3, 0.3, 0.60)  # best among nonzero fraction <= r
    epoch(4, 0.5, 0.55)
    assert sel.best_epoch == 3 and float((torch.cat(list(sel.best.values())) != 0).float().mean()) <= 0.3 + 1 / n
    never = GateSelection(bank, ratio=0.01)
    never.on_epoch_end(_FakeTrainer(), {"epoch": 1, "val_acc": 0.9})
    assert never.best is None


def test_structure_selection_hits_budget_against_unexpanded_model_with_no_empty_unit():
    default = ArchSpec("resnet_cifar", {"depth": 20, "in_channels": 1, "num_classes": 10})
    expanded = expanded_spec(default, 2.0)
    assert expanded.kwargs["widths"] == [32, 64, 128]  # CIFAR ResNet: e also widens the residual stream
    units = width_units(create(expanded), expanded)
    g = torch.Generator().manual_seed(0)
    gates = {u.name: torch.rand(u.width, generator=g) for u in units}
    gates[units[2].name].zero_()  # a unit whose gates all died
    budget, reference = budget_macs(default, SHAPE, macs_ratio=0.5)
    assert reference == hand_macs(create(default), SHAPE)
    s = select_structure(expanded, units, gates, budget, reference, SHAPE, tol=0.01)
    built = create(s.spec)
    assert abs(hand_macs(built, SHAPE) / budget - 1) <= 0.01
    widths = [u.width for u in width_units(built, s.spec)]
    assert min(widths) >= 1 and widths[2] == 1
    # the widths are a global top-k: count, per unit, the k largest gates (numpy, stable on ties)
    flat = np.concatenate([gates[u.name].numpy() for u in units])
    owner = np.concatenate([np.full(u.width, i) for i, u in enumerate(units)])
    top = owner[np.argsort(-flat, kind="stable")[: s.kept]]
    assert widths == [max(1, int((top == i).sum())) for i in range(len(units))]
    # the returned step is the best evaluated one, not the last
    assert abs(s.macs / budget - 1) == min(abs(st["macs"] / budget - 1) for st in s.steps)


def test_budget_below_the_smallest_structure_names_the_numbers():
    expanded = expanded_spec(SPEC, 1.0)
    units = width_units(create(expanded), expanded)
    gates = {u.name: torch.ones(u.width) for u in units}
    budget, reference = budget_macs(SPEC, SHAPE, macs_ratio=0.01)
    with pytest.raises(PrunelabError, match=r"below the smallest legal structure .*: [\d,]+ MACs"):
        select_structure(expanded, units, gates, budget, reference, SHAPE)


def test_pipeline_scratch_b_and_trained_start(digits, tmp_path):
    # ResNet-20: one channel of any unit costs < 2% of the budget, so a structure within 1% exists
    spec = SPEC.with_kwargs(depth=20)
    cfg = TrainConfig(epochs=1, batch_size=64, device="cpu", lr=0.05, max_steps=2)
    pfs = PFSConfig(epochs=1, batch_size=64, expansion=1.5)
    res = pruning_from_scratch(spec, digits, cfg, pfs, macs_ratio=0.5)
    assert abs(res.structure.macs_ratio - 0.5) <= 0.5 * 0.01
    assert res.scratch.budget == "B" and res.scratch.epochs == int(res.structure.reference_macs / res.structure.macs)
    assert res.scratch.spec == res.structure.spec

    from prunelab.io import save_checkpoint

    trained = create(spec)
    path = save_checkpoint(tmp_path / "dense.pt", arch=spec.to_dict(), state_dict=trained.state_dict())
    res2 = pruning_from_scratch(spec, digits, cfg, dataclasses.replace(pfs, expansion=1.0), macs_ratio=0.5,
                                init_from=str(path), train=False)
    assert res2.learning.init_from == str(path) and res2.scratch is None
    assert res2.learning.spec == spec  # gates learned on the trained network itself, not an expanded one


def test_cli_pfs_end_to_end_and_bad_budget(tmp_path, capsys):
    common = ["--model", "resnet20", "--data", "digits", "--gate-epochs", "1", "--gate-batch-size", "64",
              "--epochs", "1", "--max-steps", "2", "--batch-size", "64", "--device", "cpu"]
    assert main(["pfs", *common, "--target-macs-ratio", "0.4", "--out", str(tmp_path / "ok"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert abs(summary["structure"]["macs_ratio"] - 0.4) <= 0.4 * 0.01
    assert min(summary["structure"]["widths"].values()) >= 1
    assert (tmp_path / "ok" / "model.pt").is_file() and (tmp_path / "ok" / "summary.json").is_file()
    from prunelab.io import torch_load

    gates = torch_load(tmp_path / "ok" / "gates.pt")
    assert list(gates["gates"]) == gates["units"] and len(gates["units"]) == 9

    assert main(["pfs", *common, "--target-macs-ratio", "0.02", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "below the smallest legal structure" in err
    assert not (tmp_path / "bad").exists()
