"""Unstructured pruning: masks, selection, criteria, Minimum Threshold, schedules, diagnostics.

References used here are independent of prunelab: ``torch.nn.utils.prune``, ``torch.kthvalue``,
hand-computed Minimum Threshold allocations, sigmas from the paper's MT percentages, autograd for SNIP, and
forward passes of the model itself for layer collapse.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.models import create, resolve
from prunelab.prune.unstructured import (
    LayerCollapseWarning,
    LayerSelection,
    MaskCallback,
    PruneConfig,
    apply_masks_,
    attach_masks_from_state_dict,
    get_mask,
    kept_count,
    minimum_threshold,
    prune,
    prune_global,
    prune_layerwise,
    prune_random,
    prune_snip,
    prune_uniform,
    select_layers,
    sigma_from_percent,
    strip,
)
from prunelab.prune.unstructured.allocation import check_mt_feasible
from prunelab.prune.unstructured.lowrank import find_lowrank_pairs, prune_lowrank_columns
from prunelab.prune.unstructured.schedules import GradualSchedule, cubic_sparsity, iterative_sparsities
from prunelab.prune.unstructured.topk import keep_largest, kth_smallest

torch.set_num_threads(1)


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    )


def conv_linear(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]


def torch_global_masks(model: nn.Module, amount) -> list[torch.Tensor]:
    """Reference masks from torch.nn.utils.prune.global_unstructured (L1) on a copy of ``model``."""
    ref = copy.deepcopy(model)
    params = [(m, "weight") for m in conv_linear(ref)]
    torch_prune.global_unstructured(params, pruning_method=torch_prune.L1Unstructured, amount=amount)
    return [m.weight_mask.bool() for m, _ in params]


# ------------------------------------------------------------------------------ global vs torch.prune


@pytest.mark.parametrize(("name", "sparsities"), [
    ("resnet20", (0.5, 0.9, 0.98)), ("wrn-16-1", (0.8,)), ("mobilenet-v2-cifar", (0.98,)), ("cnn", (0.5, 0.9)),
    ("mlp", (0.3, 0.95)), ("fastgrnn", (0.9,)),
])
def test_global_masks_match_torch_prune_on_zoo_models(name, sparsities):
    torch.manual_seed(1)
    model = create(name)
    n = sum(m.weight.numel() for m in conv_linear(model))
    for sparsity in sparsities:
        ours = copy.deepcopy(model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LayerCollapseWarning)  # mobilenet-v2-cifar collapses at 98 %
            report = prune_global(ours, sparsity)
        keep = kept_count(n, sparsity)
        assert report.kept == keep and report.total == n
        reference = torch_global_masks(model, n - keep)  # int amount: exactly n - keep pruned
        for m, ref in zip(conv_linear(ours), reference):
            assert torch.equal(get_mask(m), ref), (name, sparsity)


def test_global_masks_match_torch_prune_float_amount_and_zero_weights():
    model = tiny_cnn()
    ours = copy.deepcopy(model)
    prune_global(ours, 0.75)
    for m, ref in zip(conv_linear(ours), torch_global_masks(model, 0.75)):
        assert torch.equal(get_mask(m), ref)
        assert torch.equal(m.weight == 0, ~ref | (m.weight == 0))
    for m in conv_linear(ours):  # pruned entries are exactly zero, kept entries unchanged
        assert torch.all(m.weight[~get_mask(m)] == 0)


def test_large_vector_selection_is_exact():
    """The sampled bracket path (> 1M elements) returns exactly what kthvalue returns."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1_500_000, generator=g).abs()
    for k in (1, 17, 750_000, 1_349_999, 1_500_000):
        assert kth_smallest(x, k) == torch.kthvalue(x, k).values
    few = torch.randint(0, 5, (1_200_000,), generator=g).float()  # heavy ties: the bracket falls back or holds
    for k in (1, 600_000, 1_200_000):
        assert kth_smallest(few, k) == torch.kthvalue(few, k).values
    mask = keep_largest(few, 500_001)
    assert int(mask.sum()) == 500_001
    assert few[mask].min() >= few[~mask].max()


def test_exact_count_with_ties_and_deterministic_tiebreak():
    scores = torch.tensor([1.0, 2.0, 2.0, 2.0, 3.0, 2.0])
    assert keep_largest(scores, 3).tolist() == [False, True, True, False, True, False]
    model = nn.Sequential(nn.Linear(10, 10, bias=False), nn.Linear(10, 3, bias=False))
    with torch.no_grad():
        for m in model:
            m.weight.fill_(0.5)
    with pytest.warns(LayerCollapseWarning):  # all ties: the earliest 82 positions are kept, layer 1 empties
        report = prune_global(model, 0.37)
    assert report.kept == round(0.63 * 130) == 82 and report.collapsed == ["1"]
    again = copy.deepcopy(model)
    with pytest.warns(LayerCollapseWarning):
        prune_global(again, 0.37)
    assert all(torch.equal(get_mask(a), get_mask(b)) for a, b in zip(model, again))


# ------------------------------------------------------------------------------------------ masks


def test_masks_are_bool_buffers_without_weight_orig():
    model = tiny_cnn()
    prune_global(model, 0.6)
    sd = model.state_dict()
    assert "0.weight_mask" in sd and sd["0.weight_mask"].dtype == torch.bool
    assert not any(k.endswith("_orig") for k in sd)
    assert not any(m._forward_pre_hooks for m in model.modules())
    assert "1.weight_mask" not in sd and "0.bias_mask" not in sd  # BN and biases never pruned


def test_strip_and_attach_round_trip():
    model = tiny_cnn()
    prune_global(model, 0.7)
    with torch.no_grad():
        for m in conv_linear(model):
            m.weight.add_(1.0)  # an update that ignores the masks
    apply_masks_(model)
    assert all(torch.all(m.weight[~get_mask(m)] == 0) for m in conv_linear(model))
    plain = strip(model)
    assert not any(k.endswith("_mask") for k in plain.state_dict())
    assert any(k.endswith("_mask") for k in model.state_dict())  # the original is untouched
    fresh = tiny_cnn()
    fresh.load_state_dict(plain.state_dict(), strict=True)
    for a, b in zip(conv_linear(fresh), conv_linear(model)):
        assert torch.equal(a.weight, b.weight * get_mask(b))
    # attach masks from a state_dict into a fresh model, then load strictly
    other = tiny_cnn()
    attach_masks_from_state_dict(other, model.state_dict())
    other.load_state_dict(model.state_dict(), strict=True)
    assert all(torch.equal(get_mask(a), get_mask(b)) for a, b in zip(conv_linear(other), conv_linear(model)))
    bad = {"0.weight_mask": torch.ones(3, 3, dtype=torch.bool)}
    with pytest.raises(PrunelabError, match="0.weight_mask"):
        attach_masks_from_state_dict(tiny_cnn(), bad)


class _FakeTrainer:
    def __init__(self, model, optimizer):
        self.model, self.optimizer = model, optimizer


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_mask_callback_keeps_zeros_and_clears_optimizer_state(opt):
    model = tiny_cnn()
    prune_global(model, 0.8)
    if opt == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
    cb = MaskCallback()
    trainer = _FakeTrainer(model, optimizer)
    cb.on_fit_start(trainer)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        x = torch.randn(8, 1, 6, 6, generator=g)
        loss = model(x).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        cb.on_step_end(trainer)
    for m in conv_linear(model):
        pruned = ~get_mask(m)
        assert torch.all(m.weight[pruned] == 0)
        for value in optimizer.state[m.weight].values():
            if isinstance(value, torch.Tensor) and value.shape == m.weight.shape:
                assert torch.all(value[pruned] == 0)


def test_masks_survive_training_checkpoint_and_resume(tmp_path):
    from prunelab.checkpoint import load_model
    from prunelab.data import load
    from prunelab.io import save_checkpoint
    from prunelab.train import TrainConfig, Trainer

    data = load("digits")
    torch.manual_seed(0)
    model = create("mlp")
    prune_global(model, 0.7)
    masks = [get_mask(m).clone() for m in conv_linear(model)]
    state = tmp_path / "state.pt"
    cfg = TrainConfig(epochs=2, batch_size=64, lr=0.1, momentum=0.9, weight_decay=5e-3, device="cpu",
                      checkpoint=str(state), max_steps=5)
    Trainer(model, data, cfg, callbacks=[MaskCallback()]).fit()
    resumed = Trainer(model, data, TrainConfig(**{**cfg.to_dict(), "max_steps": 12, "resume": True}),
                      callbacks=[MaskCallback()])
    resumed.fit()
    assert resumed.step == 12
    for m, mask in zip(conv_linear(model), masks):
        assert torch.equal(get_mask(m), mask)
        assert torch.all(m.weight[~mask] == 0)
        assert torch.count_nonzero(m.weight[mask]) > 0
    path = save_checkpoint(tmp_path / "m.pt", arch=resolve("mlp").to_dict(), state_dict=model.state_dict())
    loaded = load_model(path).model
    for a, b in zip(conv_linear(loaded), conv_linear(model)):
        assert torch.equal(get_mask(a), get_mask(b)) and torch.equal(a.weight, b.weight)


# -------------------------------------------------------------------------------------- selection


def test_selection_defaults_and_options():
    model = create("resnet20")
    names = [x.name for x in select_layers(model)]
    assert names[0] == "conv1" and names[-1] == "linear"  # first conv and classifier included (Global MP)
    assert len(names) == len(conv_linear(model))
    assert [x.name for x in select_layers(model, LayerSelection(keep_first_dense=True))] == names[1:]
    assert [x.name for x in select_layers(model, LayerSelection(keep_last_dense=True))] == names[:-1]
    assert [x.name for x in select_layers(model, LayerSelection(include_types=("linear",)))] == ["linear"]
    inc = [x.name for x in select_layers(model, LayerSelection(include=("layer3.*",)))]
    assert inc and all(n.startswith("layer3.") for n in inc)
    exc = [x.name for x in select_layers(model, LayerSelection(exclude=("layer3.*", "linear")))]
    assert set(exc) == set(names) - set(inc) - {"linear"}
    with pytest.raises(PrunelabError, match="matches no"):
        select_layers(model, LayerSelection(include=("layer9.*",)))
    with pytest.raises(PrunelabError, match="matches no"):
        select_layers(model, LayerSelection(exclude=("nope",)))
    with pytest.raises(PrunelabError, match="layer type"):
        select_layers(model, LayerSelection(include_types=("lstm",)))
    report = prune_global(model, 0.9, selection=LayerSelection(keep_first_dense=True, keep_last_dense=True))
    assert get_mask(model.conv1) is None and get_mask(model.linear) is None
    assert report.kept == kept_count(report.total, 0.9)


# -------------------------------------------------------------------------------------- criteria


def test_uniform_and_layerwise_match_torch_per_layer():
    model = tiny_cnn()
    ours = copy.deepcopy(model)
    prune_uniform(ours, 0.6)
    for m_ours, m_ref in zip(conv_linear(ours), conv_linear(copy.deepcopy(model))):
        n = m_ref.weight.numel()
        torch_prune.l1_unstructured(m_ref, "weight", amount=n - kept_count(n, 0.6))
        assert torch.equal(get_mask(m_ours), m_ref.weight_mask.bool())
    given = copy.deepcopy(model)
    report = prune_layerwise(given, {"0": 0.25, "3": 0.5}, default=0.2)
    assert report.details["layer_sparsity"] == {"0": 0.25, "3": 0.5, "8": 0.2}
    for m, s in zip(conv_linear(given), (0.25, 0.5, 0.2)):
        assert int(get_mask(m).sum()) == kept_count(m.weight.numel(), s)
    with pytest.raises(PrunelabError, match="matches no selected layer"):
        prune_layerwise(copy.deepcopy(model), {"conv9": 0.5})


def test_random_pruning_is_seeded_and_exact():
    model = tiny_cnn()
    a, b, c = copy.deepcopy(model), copy.deepcopy(model), copy.deepcopy(model)
    ra = prune_random(a, 0.5, seed=3)
    prune_random(b, 0.5, seed=3)
    prune_random(c, 0.5, seed=4)
    assert ra.kept == kept_count(ra.total, 0.5)
    assert all(torch.equal(get_mask(x), get_mask(y)) for x, y in zip(conv_linear(a), conv_linear(b)))
    assert not all(torch.equal(get_mask(x), get_mask(y)) for x, y in zip(conv_linear(a), conv_linear(c)))
    u = copy.deepcopy(model)
    prune_random(u, 0.5, uniform=True, seed=3)
    for m in conv_linear(u):
        assert int(get_mask(m).sum()) == kept_count(m.weight.numel(), 0.5)


def test_snip_scores_match_autograd():
    model = tiny_cnn()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 1, 6, 6, generator=g), torch.randint(0, 5, (16,), generator=g)
    ref = copy.deepcopy(model).train()
    loss = nn.functional.cross_entropy(ref(x), y)
    grads = torch.autograd.grad(loss, [m.weight for m in conv_linear(ref)])
    scores = torch.cat([(m.weight * gr).abs().reshape(-1) for m, gr in zip(conv_linear(ref), grads)])
    n = scores.numel()
    keep = kept_count(n, 0.7)
    expected = torch.zeros(n, dtype=torch.bool)
    expected[torch.topk(scores, keep).indices] = True
    bn_before = model[1].running_mean.clone()
    prune_snip(model, 0.7, (x, y))
    got = torch.cat([get_mask(m).reshape(-1) for m in conv_linear(model)])
    assert torch.equal(got, expected)
    assert torch.equal(model[1].running_mean, bn_before)  # SNIP's forward leaves BN statistics alone


# ---------------------------------------------------------------------------- Minimum Threshold


def _mt_model():
    """Five bias-free Linear layers with sizes 8, 10, 42, 140, 200 (N = 400). In each layer the first
    p_l weights are small and distinct and the rest large, so plain Global MP at 50 % prunes exactly
    p = (4, 6, 36, 54, 100)."""
    sizes, small = [8, 10, 42, 140, 200], [4, 6, 36, 54, 100]
    model = nn.Sequential(*[nn.Linear(n, 1, bias=False) for n in sizes])
    value = 0.0
    with torch.no_grad():
        for m, n, p in zip(model, sizes, small):
            w = torch.empty(n)
            for i in range(n):
                value += 1.0
                w[i] = value * 1e-3 if i < p else 10.0 + value
            m.weight.copy_(w.view(1, n))
    return model, sizes, small


def test_minimum_threshold_matches_hand_computation():
    model, sizes, small = _mt_model()
    plain = copy.deepcopy(model)
    prune_global(plain, 0.5)
    assert [int(get_mask(m).sum()) for m in plain] == [n - p for n, p in zip(sizes, small)]
    # By hand, sigma = 10: layers of 8 and 10 (= sigma) weights stay dense; the 42-weight layer would keep
    # 6 < 10 and is pinned at 10 (32 pruned); the others scale by c: 32 + c * (54 + 100) = 200 -> c = 12/11,
    # i.e. 58.909 and 109.091 pruned; largest remainder rounds to 59 and 109.
    result = minimum_threshold(sizes, small, 10, 200)
    assert result.pruned == [0, 0, 32, 59, 109]
    assert result.factor == pytest.approx(12 / 11) and result.dense == [0, 1] and result.pinned == [2]
    report = prune_global(model, 0.5, mt=10)
    kept = [int(get_mask(m).sum()) for m in model]
    assert kept == [8, 10, 10, 81, 91] and report.kept == 200
    # each layer keeps its own largest weights: in the 140-weight layer the 54 small ones and the 5 smallest
    # large ones go
    w = model[3].weight.view(-1)
    assert torch.equal(get_mask(model[3]).view(-1), w >= torch.sort(w).values[59])


def test_minimum_threshold_percent_and_reference_sigmas():
    # Gupta et al. 2022: absolute sigma from the paper's MT percentages of the conv + linear weights
    assert sigma_from_percent(25_502_912, 0.05) == 12_751
    assert sigma_from_percent(25_502_912, 0.0075) == 1_912
    assert sigma_from_percent(4_209_088, 0.2) == 8_418
    assert sigma_from_percent(2_261_824, 0.02) == 452
    model, _, _ = _mt_model()
    report = prune_global(model, 0.5, mt_percent=2.5)  # 2.5 % of 400 = 10
    assert report.sigma == 10 and [int(get_mask(m).sum()) for m in model] == [8, 10, 10, 81, 91]


def test_minimum_threshold_infeasible_is_reported_up_front():
    model, sizes, _ = _mt_model()
    before = [m.weight.clone() for m in model]
    # 0.9 prunes 360; sigma = 10 allows (42 - 10) + (140 - 10) + (200 - 10) = 352
    with pytest.raises(PrunelabError, match=r"needs 360 of 400 .* allows at most 352 .*sigma <= "):
        prune_global(model, 0.9, mt=10)
    assert all(torch.equal(a, m.weight) for a, m in zip(before, model)) and get_mask(model[0]) is None
    check_mt_feasible(sizes, 0.88, 10)  # 352 to prune: exactly the capacity
    with pytest.raises(PrunelabError, match="minimum threshold"):
        prune(model, PruneConfig("uniform", 0.5, mt=10))


def test_minimum_threshold_when_global_mp_already_complies_is_global_mp():
    model = tiny_cnn()
    ref = copy.deepcopy(model)
    prune_global(ref, 0.5)
    report = prune_global(model, 0.5, mt=1)
    assert report.details["mt_factor"] == 1.0
    assert all(torch.equal(get_mask(a), get_mask(b)) for a, b in zip(conv_linear(model), conv_linear(ref)))


# ---------------------------------------------------------------------------------- bad sparsity


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan")])
def test_sparsity_outside_range(bad):
    with pytest.raises(PrunelabError, match="sparsity"):
        prune_global(tiny_cnn(), bad)


# ----------------------------------------------------------------------------------- schedules


def test_cubic_schedule_values():
    # Zhu & Gupta (2017) eq. 1 by hand: s_t = s_f (1 - (1 - t/n)^3) with s_i = 0
    assert cubic_sparsity(5, final=0.9, start=0, end=10) == pytest.approx(0.9 * (1 - 0.5**3))
    assert cubic_sparsity(0, final=0.9, start=0, end=10) == 0.0
    assert cubic_sparsity(12, final=0.9, start=0, end=10) == 0.9
    sched = GradualSchedule(0.8, start=2, end=9, every=3, unit="step")
    assert [t for t, _ in sched.updates()] == [2, 5, 8, 9]
    assert sched.updates()[-1][1] == 0.8
    assert GradualSchedule(0.9, unit="epoch").resolve(epochs=8, steps_per_epoch=5).end == 6
    with pytest.raises(PrunelabError, match="does not fit"):
        GradualSchedule(0.9, start=0, end=8, unit="epoch").resolve(epochs=8, steps_per_epoch=5)
    rounds = iterative_sparsities(0.875, 3)
    assert rounds == pytest.approx([0.5, 0.75, 0.875])


def test_gradual_pruning_with_trainer_reaches_exact_target_with_nested_masks():
    from prunelab.data import load
    from prunelab.prune.unstructured.schedules import GradualPruning
    from prunelab.train import TrainConfig, Trainer

    data = load("digits")
    torch.manual_seed(0)
    model = create("mlp")
    seen: list[list[torch.Tensor]] = []

    class Spy(GradualPruning):
        def _update(self, trainer, t):
            super()._update(trainer, t)
            seen.append([get_mask(m).clone() for m in conv_linear(trainer.model)])

    cb = Spy(PruneConfig("global", mt=20), GradualSchedule(0.9, start=2, end=10, every=4, unit="step"))
    cfg = TrainConfig(epochs=1, batch_size=64, lr=0.05, device="cpu", max_steps=14)
    Trainer(model, data, cfg, callbacks=[cb]).fit()
    assert [h["time"] for h in cb.history] == [2, 6, 10]
    total = sum(m.weight.numel() for m in conv_linear(model))
    assert cb.history[-1]["sparsity"] == 1 - kept_count(total, 0.9) / total
    for earlier, later in zip(seen, seen[1:]):
        for a, b in zip(earlier, later):
            assert not torch.any(b & ~a)  # nothing regrows
    for m in conv_linear(model):
        assert torch.all(m.weight[~get_mask(m)] == 0)


def test_iterative_pruning_with_rewinding():
    from prunelab.data import load
    from prunelab.prune.unstructured.schedules import prune_iterative, weights_state
    from prunelab.train import TrainConfig

    data = load("digits")
    torch.manual_seed(0)
    model = create("mlp")
    init = weights_state(model)
    cfg = TrainConfig(epochs=1, batch_size=128, lr=0.05, device="cpu", max_steps=3)
    rounds = prune_iterative(model, data, cfg, PruneConfig("global", 0.75), rounds=2, rewind_state=init)
    assert [r.target for r in rounds] == pytest.approx([0.5, 0.75])
    assert rounds[-1].report.kept == kept_count(rounds[-1].report.total, 0.75)
    assert rounds[0].finetuned_metrics is not None and rounds[1].pruned_metrics is not None
    for m in conv_linear(model):
        assert torch.all(m.weight[~get_mask(m)] == 0)


# ---------------------------------------------------------------------------------- diagnostics


def test_layer_collapse_detected_and_output_is_input_independent():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 50), nn.ReLU(), nn.Linear(50, 4))
    with torch.no_grad():
        model[2].weight.mul_(1e-3)  # the classifier holds the smallest weights: Global MP empties it
    with pytest.warns(LayerCollapseWarning):
        report = prune_global(model, 0.5, input_shape=(6,))
    assert report.collapsed == ["2"] and report.path_intact is False and report.outputs_connected == 0.0
    x = torch.randn(10, 6)
    assert torch.equal(model(x), model(x[:1]).expand(10, -1))  # independent check: the output is constant
    # no layer is empty, but no path survives: unit 0 of the hidden layer is the only one the input
    # reaches, and the classifier only reads unit 1
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[5.0, 5.0, 5.0], [0.1, 0.1, 0.1]]))
        model[2].weight.copy_(torch.tensor([[0.01, 5.0], [0.01, 5.0]]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LayerCollapseWarning)
        report = prune(model, PruneConfig("layerwise", layer_sparsity={"0": 0.5, "2": 0.5}), input_shape=(3,))
    assert not report.collapsed and report.path_intact is False
    assert any("no longer depends" in w for w in report.warnings)


def test_report_macs_against_hand_counts():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 5 * 5, 3, bias=False))
    report = prune_global(model, 0.8, input_shape=(2, 5, 5))
    conv_kept, fc_kept = (int(get_mask(m).sum()) for m in conv_linear(model))
    # conv MACs = weights x output positions (25); linear MACs = weights (batch 1)
    assert report.macs_dense == 72 * 25 + 300
    assert report.macs_sparse == conv_kept * 25 + fc_kept
    assert report.layers[0].macs_kept == conv_kept * 25
    assert report.flops_pruned == pytest.approx(1 - report.macs_sparse / report.macs_dense)
    table = report.format_table()
    assert "FLOPs pruned" in table and "MACs kept" in table
    assert report.to_dict()["layers"][1]["kept"] == fc_kept


# ------------------------------------------------------------------------------------ FastGRNN


def test_fastgrnn_column_pruning():
    torch.manual_seed(0)
    model = create("fastgrnn", hidden_size=16, u_rank=16)
    pairs = find_lowrank_pairs(model, (5, 9))
    assert [(p.first_name, p.second_name, p.rank) for p in pairs] == [("cell.w1", "cell.w2", 9),
                                                                        ("cell.u1", "cell.u2", 16)]
    ranked = copy.deepcopy(model)
    report = prune_lowrank_columns(ranked, ranks={"cell.w1": 7, "cell.u1": 5}, input_shape=(5, 9))
    # EdgeML's W1 is [in, r]: its column j is row j of w1.weight; the lowest absolute column sums go
    col_sums = model.cell.w1.weight.abs().sum(dim=1)
    kept_cols = set(torch.topk(col_sums, 7).indices.tolist())
    w1_kept = get_mask(ranked.cell.w1).any(dim=1)
    assert set(torch.nonzero(w1_kept).view(-1).tolist()) == kept_cols
    assert torch.equal(get_mask(ranked.cell.w2).any(dim=0), w1_kept)  # coupled column of the second factor
    assert report.details["ranks"]["cell.u1"]["kept"] == 5
    out = ranked(torch.randn(3, 5, 9))
    assert out.shape == (3, 2)
    glob = copy.deepcopy(model)
    rep = prune_lowrank_columns(glob, sparsity=0.5, input_shape=(5, 9))
    assert rep.details["components_kept"] == kept_count(25, 0.5)
    with pytest.raises(PrunelabError, match="unknown low-rank factor"):
        prune_lowrank_columns(copy.deepcopy(model), ranks={"cell.x": 3}, input_shape=(5, 9))


def test_fastgrnn_global_column_pruning_keeps_a_column_per_factor():
    """W's columns have smaller sums than U's: global ranking alone would take W to rank 0, cutting
    the input off. Each pair keeps its strongest column; the rest are ranked globally (hand check)."""
    torch.manual_seed(0)
    model = create("fastgrnn", hidden_size=16, u_rank=16)
    with torch.no_grad():
        model.cell.w1.weight.mul_(1e-3)  # every W column now scores below every U column
    w_sums = model.cell.w1.weight.abs().sum(dim=1) * model.cell.w2.weight.abs().sum(dim=0)
    glob = copy.deepcopy(model)
    rep = prune_lowrank_columns(glob, sparsity=0.5, input_shape=(5, 9))
    assert rep.details["components_kept"] == kept_count(25, 0.5)
    w_kept = torch.nonzero(get_mask(glob.cell.w1).any(dim=1)).view(-1).tolist()
    assert len(w_kept) == 1
    assert w_kept[0] in (int(model.cell.w1.weight.abs().sum(dim=1).argmax()), int(w_sums.argmax()))
    x = torch.randn(4, 5, 9)
    assert not torch.allclose(glob(x), glob(torch.zeros_like(x)))  # the output still depends on the input
    with pytest.raises(PrunelabError, match=r"must be in \[1, 9\]"):
        prune_lowrank_columns(copy.deepcopy(model), ranks={"cell.w1": 0}, input_shape=(5, 9))
