"""Architecture protocols: reduced networks, Scratch-E/B, copied profiles, and their command lines."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from hand_counts import hand_macs
from prunelab.cli import main
from prunelab.errors import PrunelabError
from prunelab.models import ArchSpec, create, resolve, width_units
from prunelab.models.widths import round_width, units_of, with_unit_widths
from prunelab.protocols import (
    build_model,
    copy_profile,
    pruned_architecture,
    read_profile,
    reduce_to_target,
    scale_schedule,
    train_from_scratch,
    transfer_profile,
)
from prunelab.protocols.profile import profile_between, profile_to_target
from prunelab.protocols.reduced import reduce_spec
from prunelab.protocols.scratch import scratch_b_factor
from prunelab.protocols.search import bisect_scalar
from prunelab.protocols.targets import Target
from prunelab.train import TrainConfig

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_digits():
    from prunelab.data import load

    return load("digits")


def n_params(model: nn.Module) -> int:
    # Independent of prunelab.measure: a plain sum over the module's parameters.
    return sum(p.numel() for p in model.parameters())


def internal_plan(spec: ArchSpec, shape, fraction: float, seed: int = 0) -> dict:
    """A block-internal plan keeping a random ``fraction`` of every width unit."""
    from prunelab.prune.structured.groups import find_groups
    from prunelab.prune.structured.plan import make_plan

    model = create(spec)
    groups = find_groups(model, shape, "internal", spec=spec)
    g = torch.Generator().manual_seed(seed)
    keep = {grp.name: sorted(torch.randperm(grp.width, generator=g)[: max(1, int(grp.width * fraction))].tolist())
            for grp in groups}
    return make_plan(groups, keep, spec.to_dict())


# ------------------------------------------------------------------------------------------ reduced


CASES = [
    (ArchSpec("cnn", {"in_channels": 1}), (1, 8, 8), "width"),
    (ArchSpec("mlp", {"in_features": 64}), (64,), "bottleneck"),
    (ArchSpec("resnet_cifar", {"depth": 20, "in_channels": 1}), (1, 8, 8), "width"),
    (ArchSpec("wrn", {"depth": 16, "widen_factor": 2, "in_channels": 1}), (1, 8, 8), "bottleneck"),
    (ArchSpec("densenet", {"depth": 40, "growth_rate": 12, "in_channels": 1}), (1, 8, 8), "bottleneck"),
    (ArchSpec("vgg", {"depth": 11, "width_mult": 0.25, "in_channels": 1}), (1, 8, 8), "width"),
    (ArchSpec("mobilenet_v2_cifar", {"width_mult": 0.5, "in_channels": 1}), (1, 8, 8), "width"),
]


@pytest.mark.parametrize("spec,shape,mode", CASES, ids=[f"{c[0].family}-{c[2]}" for c in CASES])
def test_reduced_search_lands_within_two_percent_of_a_params_target(spec, shape, mode):
    target = Target("params", 0.45 * n_params(create(spec)))
    found = reduce_to_target(spec, mode, target, shape)
    achieved = n_params(create(found.spec))
    assert abs(achieved / target.value - 1) <= 0.02
    assert found.spec.family == spec.family and 0 < found.x < 1


def test_reduced_search_hits_a_macs_target_by_an_independent_count():
    spec = ArchSpec("wrn", {"depth": 16, "widen_factor": 2, "in_channels": 1})
    shape = (1, 8, 8)
    target = Target("macs", 0.3 * hand_macs(create(spec), shape))
    found = reduce_to_target(spec, "width", target, shape)
    assert abs(hand_macs(create(found.spec), shape) / target.value - 1) <= 0.02


def test_width_rounding_to_multiples_of_eight():
    spec = ArchSpec("resnet_cifar", {"depth": 20})
    reduced = reduce_spec(spec, "width", 0.6, round_to=8)
    assert reduced.kwargs["widths"] == [8, 16, 40]  # 9.6 -> 8, 19.2 -> 16, 38.4 -> 40
    assert all(u.width % 8 == 0 for u in width_units(create(reduced), reduced))
    assert round_width(2.4) == 2 and round_width(2.5) == 3 and round_width(0.2) == 1


def test_depth_reduction_picks_the_nearest_legal_depth():
    spec = ArchSpec("resnet_cifar", {"depth": 32, "in_channels": 1})
    sizes = {d: n_params(create(spec.with_kwargs(depth=d))) for d in (8, 14, 20, 26, 32)}
    found = reduce_to_target(spec, "depth", Target("params", sizes[20] * 1.01), (1, 8, 8))
    assert found.spec.kwargs["depth"] == 20 and [s.x for s in found.steps] == [8, 14, 20, 26, 32]


def test_unreachable_target_names_the_numbers():
    spec = ArchSpec("cnn", {"in_channels": 1})
    with pytest.raises(PrunelabError, match=r"unreachable: the smallest .* has [\d,]+ params"):
        reduce_to_target(spec, "width", Target("params", 10), (1, 8, 8))
    with pytest.raises(PrunelabError, match="unreachable: the largest"):
        reduce_to_target(spec, "width", Target("params", 10 * n_params(create(spec))), (1, 8, 8))


# ------------------------------------------------------------------------------------------ scratch


def test_scratch_b_epochs_and_milestones_move_with_the_budget():
    cfg = TrainConfig(epochs=160, milestones=[0.5, 0.75], max_steps=None)
    assert scale_schedule(cfg, 1 / (1 - 0.7)).epochs == 533  # PFS: int(160 / (1 - p))
    assert scale_schedule(cfg, 2.0).milestones == [0.5, 0.75]
    absolute = scale_schedule(dataclasses.replace(cfg, milestones=[80, 120]), 2.0)
    assert absolute.epochs == 320 and absolute.milestones == [160, 240]
    assert scratch_b_factor(300.0, 100.0) == 3.0


def test_scratch_reinitialises_for_the_actual_fan(tmp_path):
    from prunelab.prune.structured.plan import apply_plan, save_pruned

    spec = ArchSpec("wrn", {"depth": 16, "widen_factor": 2})
    plan = internal_plan(spec, (3, 32, 32), 0.25)
    pruned = apply_plan(create(spec), plan)
    with torch.no_grad():  # stands in for fine-tuning: the pruned model's weights moved away from any init
        for p in pruned.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = save_pruned(tmp_path / "pruned.pt", pruned, plan)
    arch = pruned_architecture(str(path))
    assert arch.plan is None and arch.dense == spec
    fresh = build_model(arch.spec, seed=0)
    old = dict(pruned.named_parameters())
    for name, p in fresh.named_parameters():
        assert p.shape == old[name].shape
        if p.dim() > 1:
            assert not torch.any(p == old[name]), name
    # block3.layer.1.conv1: 128 -> 32 output channels; He fan-out std for the real fan-out of 32
    w = fresh.get_submodule("block3.layer.1.conv1").weight
    assert w.shape[0] == 32
    assert abs(w.std().item() / math.sqrt(2 / (9 * 32)) - 1) < 0.05
    assert abs(w.mean().item()) < 0.01
    # the slice of a full-width init keeps the unpruned std, half as large: the test can tell them apart
    sliced = build_model(spec, plan=plan, init="constructor", seed=0).get_submodule("block3.layer.1.conv1").weight
    assert abs(sliced.std().item() / math.sqrt(2 / (9 * 128)) - 1) < 0.05


def test_plan_outside_width_units_is_reinitialised_after_compression():
    from prunelab.prune.structured.groups import find_groups
    from prunelab.prune.structured.plan import make_plan

    spec = ArchSpec("resnet_cifar", {"depth": 8})
    model = create(spec)
    groups = find_groups(model, (3, 32, 32), "all", spec=spec)
    plan = make_plan(groups, {g.name: list(range(g.width // 4)) for g in groups}, spec.to_dict())
    arch = pruned_architecture(plan)
    assert arch.plan is not None  # residual streams pruned: no constructor spec, the plan is kept
    fresh = build_model(arch.spec, plan=arch.plan, seed=3)
    w = fresh.get_submodule("layer3.0.conv2").weight  # 64 -> 16 channels
    assert w.shape[:2] == (16, 16)
    assert abs(w.std().item() / math.sqrt(2 / (9 * 16)) - 1) < 0.1


def test_scratch_e_and_b_train_the_architecture(tiny_digits):
    spec = ArchSpec("cnn", {"in_channels": 1, "widths": [16, 32, 64]})
    plan = internal_plan(spec, (1, 8, 8), 0.5)
    cfg = TrainConfig(epochs=2, batch_size=64, device="cpu", lr=0.05, max_steps=4)
    e = train_from_scratch(plan, tiny_digits, cfg, budget="E")
    b = train_from_scratch(plan, tiny_digits, cfg, budget="B")
    assert e.epochs == 2 and e.config.max_steps == 4
    assert b.factor == pytest.approx(b.dense_macs / b.macs) and b.factor > 1.5
    assert b.epochs == int(2 * b.factor) and b.config.max_steps == int(4 * b.factor)
    assert b.result.final["step"] == int(4 * b.factor)
    assert [u.width for u in width_units(b.model, b.spec)] == [8, 16, 32]


# ------------------------------------------------------------------------------------------ profiles


def test_copied_profile_keeps_per_unit_ratios_up_to_rounding(tiny_digits):
    base = ArchSpec("wrn", {"depth": 16, "widen_factor": 2, "in_channels": 1})
    plan = internal_plan(base, (1, 8, 8), 0.4, seed=1)
    profile = read_profile(plan)
    widths = profile.widths()
    assert [e.base_width for e in profile.entries] == [32, 32, 64, 64, 128, 128]
    member = copy_profile(profile, tiny_digits, target=Target("params", 60000), train=False)
    assert abs(n_params(create(member.spec)) / 60000 - 1) <= 0.02
    new = member.unit_widths()
    for name, w in widths.items():
        assert new[name] >= 1
        assert abs(new[name] - member.alpha * w) <= 0.5 + 1e-9  # alpha x m_b, rounded to whole channels


def test_copied_profile_rounds_unit_by_unit_when_alpha_steps_over_the_band():
    """Rounding every unit at once moves a small network by several percent per step of alpha; a
    target between two such steps is met by rounding units one at a time (each still within one
    channel of alpha x m_b). Independent check: the parameter count of the built model."""
    base = ArchSpec("wrn", {"depth": 16, "widen_factor": 1, "in_channels": 1})
    profile = profile_between(base, base.with_kwargs(block_widths=[5, 3, 9, 7, 20, 11]))
    shape, tol = (1, 8, 8), 0.003
    # A member no single alpha builds: widths at some alpha rounded down, then the k units with the
    # largest remainders rounded up; take the first whose size is off every whole-profile step.
    scaled = {n_params(create(profile.scaled(a))) for a in np.linspace(0.3, 1.2, 901)}
    goal = None
    for alpha in np.linspace(0.5, 0.9, 41):
        exact = {e.name: e.width * alpha for e in profile.entries}
        order = sorted(exact, key=lambda n: exact[n] - math.floor(exact[n]), reverse=True)
        for k in range(1, len(order)):
            widths = {n: max(1, math.floor(v)) + (n in order[:k]) for n, v in exact.items()}
            size = n_params(create(with_unit_widths(profile.pruned, widths)))
            if all(abs(v / size - 1) > 2 * tol for v in scaled):
                goal = size
                break
        if goal is not None:
            break
    assert goal is not None
    target = Target("params", goal)
    with pytest.raises(PrunelabError, match="lands within"):  # one alpha for every unit cannot
        bisect_scalar(profile.scaled, lambda spec: n_params(create(spec)), target, lo=1e-3, hi=2.0, tol=tol)
    member = profile_to_target(profile, target, shape, tol=tol)
    built = n_params(create(member.spec))
    assert abs(built / goal - 1) <= tol and built == member.value
    got = {u.name: u.width for u in units_of(member.spec)}
    for e in profile.entries:
        assert abs(got[e.name] - e.width * member.x) < 1.0 + 1e-9 and got[e.name] >= 1


def test_profile_transfers_across_depth_stage_by_stage():
    src_base = ArchSpec("wrn", {"depth": 40, "widen_factor": 2})
    rng = np.random.default_rng(0)
    bases = [32] * 6 + [64] * 6 + [128] * 6
    kept = [int(rng.integers(1, b + 1)) for b in bases]
    profile = profile_between(src_base, src_base.with_kwargs(block_widths=kept))
    moved = transfer_profile(profile, ArchSpec("wrn", {"depth": 16, "widen_factor": 2}))
    # 6 blocks per stage at positions (i + 0.5) / 6 -> 2 blocks at 0.25 = 3/12 and 0.75 = 9/12:
    # exactly the ratios of source blocks 1 and 4 of each stage.
    expected = []
    for s, base in enumerate((32, 64, 128)):
        for i in (1, 4):
            expected.append(max(1, math.floor(base * kept[6 * s + i] / base + 0.5)))
    assert [e.width for e in moved.entries] == expected


def test_profile_refuses_other_families_and_structures():
    wrn = ArchSpec("wrn", {"depth": 16, "widen_factor": 1})
    profile = profile_between(wrn, wrn.with_kwargs(block_widths=[8, 8, 16, 16, 32, 32]))
    with pytest.raises(PrunelabError, match="wrn network cannot be applied to a resnet_cifar"):
        transfer_profile(profile, resolve("resnet20"))
    basic = ArchSpec("resnet", {"block": "basic", "layers": [1, 1, 1, 1], "width_mult": 0.125, "num_classes": 10})
    bottle = basic.with_kwargs(block="bottleneck")
    p2 = profile_between(basic, reduce_spec(basic, "bottleneck", 0.5))
    with pytest.raises(PrunelabError, match="block structures differ"):
        transfer_profile(p2, bottle)


# ------------------------------------------------------------------------------------------ CLI


def _run(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


TRAIN = ["--data", "digits", "--epochs", "1", "--max-steps", "2", "--batch-size", "64", "--device", "cpu"]


def test_cli_reduce_scratch_copy_profile_end_to_end(tmp_path, capsys):
    code, out, err = _run(["reduce", "--model", "cnn", "--mode", "width", "--target-params", "8000", *TRAIN,
                           "--out", str(tmp_path / "red"), "--json"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert abs(summary["params"] / 8000 - 1) <= 0.02 and (tmp_path / "red" / "model.pt").is_file()
    from prunelab.checkpoint import load_model

    loaded = load_model(tmp_path / "red" / "model.pt")
    assert n_params(loaded.model) == summary["params"] and loaded.meta["protocol"] == "reduced"

    spec = ArchSpec("cnn", {"in_channels": 1, "num_classes": 10})
    (tmp_path / "plan.json").write_text(json.dumps(internal_plan(spec, (1, 8, 8), 0.5)))
    code, out, err = _run(["scratch", str(tmp_path / "plan.json"), "--budget", "B", *TRAIN,
                           "--out", str(tmp_path / "sb"), "--json"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["protocol"] == "scratch-B" and summary["budget_factor"] > 1
    assert summary["epochs"] == int(summary["budget_factor"])

    wrn = ArchSpec("wrn", {"depth": 16, "widen_factor": 1, "in_channels": 1, "num_classes": 10})
    plan = internal_plan(wrn, (1, 8, 8), 0.5)
    (tmp_path / "wrn-plan.json").write_text(json.dumps(plan))
    size = n_params(create(pruned_architecture(plan).spec))
    targets = [int(0.9 * size), int(1.2 * size)]
    code, out, err = _run(["copy-profile", str(tmp_path / "wrn-plan.json"), "--target-params", *map(str, targets),
                           *TRAIN, "--out", str(tmp_path / "cp"), "--json"], capsys)
    assert code == 0, err
    rows = json.loads(out)["members"]
    assert [abs(r["params"] / t - 1) <= 0.02 for r, t in zip(rows, targets)] == [True, True]
    assert (tmp_path / "cp" / "member-1.pt").is_file()


@pytest.mark.parametrize("argv,pattern", [
    (["reduce", "--model", "cnn", "--target-params", "50"], "unreachable"),
    (["reduce", "--model", "cnn", "--mode", "depth", "--target-params", "5000"], "no depth setting"),
    (["copy-profile", "PLAN", "--onto", "resnet20", "--target-params", "5000"], "cannot be applied to a resnet_cifar"),
    (["scratch", "MISSING.pt"], "not found"),
])
def test_cli_bad_input_is_one_line_exit_2_nothing_written(tmp_path, capsys, argv, pattern):
    spec = ArchSpec("wrn", {"depth": 10, "widen_factor": 1, "in_channels": 1, "num_classes": 10})
    (tmp_path / "plan.json").write_text(json.dumps(internal_plan(spec, (1, 8, 8), 0.5)))
    argv = [str(tmp_path / "plan.json") if a == "PLAN" else str(tmp_path / a) if a.endswith(".pt") else a
            for a in argv]
    code, out, err = _run([*argv, *TRAIN, "--out", str(tmp_path / "out")], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and pattern in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_scratch_constructor_init_slices_a_full_width_init(tiny_digits):
    """Crowley et al. (sec. 4.2) slice a fresh full-width init, so a pruned conv keeps the He std of
    its *unpruned* fan-out; the family rule uses the actual one. Hand values: sqrt(2 / (9 * out))."""
    from prunelab.protocols.scratch import train_from_scratch
    from prunelab.train import TrainConfig

    spec = ArchSpec("wrn", {"depth": 16, "widen_factor": 2, "in_channels": 1})
    plan = internal_plan(spec, (1, 8, 8), 0.25, seed=3)
    config = TrainConfig(epochs=1, max_steps=0, device="cpu")
    stds = {}
    for init in ("family", "constructor"):
        torch.manual_seed(0)
        result = train_from_scratch(plan, tiny_digits, config, budget="E", init=init)
        weight = result.model.get_submodule("block3.layer.0.conv1").weight
        stds[init] = (float(weight.detach().std()), weight.shape[0])
    (fam, kept), (con, kept_c) = stds["family"], stds["constructor"]
    assert kept == kept_c == 32  # 25% of the 128 channels of the last group's first block
    assert fam == pytest.approx(math.sqrt(2 / (9 * 32)), rel=0.05)
    assert con == pytest.approx(math.sqrt(2 / (9 * 128)), rel=0.05)
