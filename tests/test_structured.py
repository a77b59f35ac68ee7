"""Structured channel pruning: groups, masks, criteria, selection, cost model, compression, plans.

References independent of prunelab's structured code: an einsum of the Fisher formula on tensors
captured with autograd (``retain_grad``), weights read directly for L1 / BN, forward passes of the
masked model for compression, ``prunelab.measure`` counters for sizes, and ONNX Runtime for export.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.measure import count_macs, count_params
from prunelab.models import ArchSpec, create
from prunelab.prune.structured import (
    ChannelMasks,
    CostModel,
    StructuredConfig,
    StructuredPruner,
    Target,
    apply_plan,
    channel_scores,
    compress,
    find_groups,
    fisher_delta,
    get_criterion,
    make_plan,
    spec_of_compressed,
)
from prunelab.prune.structured.select import select
from prunelab.prune.structured.zero import EmptyConv, ZeroConv

torch.set_num_threads(1)


# -- models ------------------------------------------------------------------------------------------
class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, 1, 1, bias=False)

    def forward(self, x):
        y = self.conv2(F.relu(self.bn2(self.conv1(F.relu(self.bn1(x))))))
        return torch.cat([x, y], 1)


class ConcatDepthwiseNet(nn.Module):
    """Not in the zoo: a dense block (concat), then pointwise - depthwise - pointwise, then a linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 6, 3, 1, 1)
        self.d1 = DenseLayer(6, 3)
        self.d2 = DenseLayer(9, 3)
        self.pw = nn.Conv2d(12, 16, 1)
        self.bnp = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, 2, 1, groups=16)
        self.bnd = nn.BatchNorm2d(16)
        self.pw2 = nn.Conv2d(16, 8, 1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.d2(self.d1(self.stem(x)))
        x = F.relu(self.bnp(self.pw(x)))
        x = F.relu(self.bnd(self.dw(x)))
        return self.fc(self.pw2(x).mean((2, 3)))


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine terms, so a BN beta would leak into a badly masked channel."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_(generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)
            m.weight.data.normal_(generator=g)
            m.bias.data.normal_(generator=g)
    return model


def random_keep(groups, seed: int, vanish: bool = True) -> dict[str, list[int]]:
    g = torch.Generator().manual_seed(seed)
    keep = {}
    for i, gr in enumerate(groups):
        low = 0 if (gr.vanishable and vanish and i % 2 == 0) else 1
        n = low if low == 0 else int(torch.randint(1, gr.width + 1, (1,), generator=g))
        keep[gr.name] = sorted(torch.randperm(gr.width, generator=g)[:n].tolist())
    return keep


def masked_output(model, groups, keep, x):
    masks = ChannelMasks(model, groups, keep)
    model.eval()
    with torch.no_grad():
        out = model(x)
    masks.detach()
    return out


# Small variants of every image family (built with their constructors), with their input shapes.
ZOO = [
    ("wrn", dict(depth=16, widths=[4, 8, 16, 16], in_channels=1), (1, 8, 8)),
    ("densenet", dict(depth=10, growth_rate=4, in_channels=1), (1, 8, 8)),
    ("resnet_cifar", dict(depth=8, widths=[4, 8, 8], shortcut="B"), (3, 8, 8)),
    ("resnet_cifar", dict(depth=8, widths=[4, 8, 8], shortcut="A"), (3, 8, 8)),
    ("vgg", dict(depth=11, width_mult=0.0625), (3, 32, 32)),
    ("mobilenet_v2_cifar", dict(width_mult=0.25), (3, 16, 16)),
    ("mobilenet_v1", dict(width_mult=0.125, num_classes=10), (3, 32, 32)),
    ("mobilenet_v2", dict(width_mult=0.25, num_classes=10), (3, 32, 32)),
    ("resnet", dict(block="bottleneck", layers=[1, 1, 1, 1], width_mult=0.125, num_classes=10), (3, 32, 32)),
    ("resnet", dict(block="basic", layers=[1, 1, 1, 1], width_mult=0.125, num_classes=10), (3, 32, 32)),
    ("cnn", dict(in_channels=1), (1, 8, 8)),
    ("mlp", dict(in_features=64), (64,)),
    ("cnn1d", dict(in_channels=1), (1, 40)),
]


# -- Fisher ------------------------------------------------------------------------------------------
def test_fisher_delta_matches_einsum_of_the_formula():
    g = torch.Generator().manual_seed(0)
    a, grad = torch.randn(5, 3, 4, 4, generator=g), torch.randn(5, 3, 4, 4, generator=g)
    want = torch.einsum("nchw,nchw->nc", a, grad).pow(2).sum(0) / (2 * 5)
    torch.testing.assert_close(fisher_delta(a, grad), want)
    a2, g2 = torch.randn(7, 6, generator=g), torch.randn(7, 6, generator=g)  # Linear outputs: no positions
    torch.testing.assert_close(fisher_delta(a2, g2), (a2 * g2).pow(2).sum(0) / 14)


class TinyBlocks(nn.Module):
    """conv -> BN -> ReLU -> conv, with a residual add, so scope 'all' has a multi-point stream group."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(4)
        self.conv1 = nn.Conv2d(4, 6, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 4, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = F.relu(self.bn0(self.stem(x)))
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return self.fc(F.relu(x + y).mean((2, 3)))


@pytest.mark.parametrize("scope", ["internal", "all"])
def test_fisher_accumulation_over_k_steps_equals_reference(scope):
    torch.manual_seed(0)
    model = TinyBlocks()
    groups = find_groups(model, (1, 6, 6), scope)
    masks = ChannelMasks(model, groups)
    first = groups.groups[0]
    masks.set_kept(first.name, list(range(1, first.width)))  # a masked channel scores 0
    fisher = get_criterion("fisher")(model, groups, masks)
    fisher.start()
    captured: dict[str, torch.Tensor] = {}

    def capture(name):
        def hook(module, inputs, output):  # runs after the mask hook: sees the masked activation
            output.retain_grad()
            captured[name] = output

        return hook

    points = sorted({p for g in groups for p in g.mask_points})
    for p in points:
        model.get_submodule(p).register_forward_hook(capture(p))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    k, n = 3, 8
    reference = {g.name: torch.zeros(g.width) for g in groups}
    g = torch.Generator().manual_seed(1)
    for _ in range(k):
        x, y = torch.randn(n, 1, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        fisher.end_step()
        for grp in groups:
            per_sample = torch.zeros(n, grp.width)
            for p in grp.mask_points:
                member = next(m for m in grp.members if m.module == p)
                t = captured[p]
                s = torch.einsum("nchw,nchw->nc", t.detach(), t.grad)
                per_sample[:, member.channels] += s[:, member.idxs]
            reference[grp.name] += per_sample.pow(2).sum(0) / (2 * n)
        opt.step()
    scores = fisher.scores()
    assert fisher.steps == k
    for grp in groups:
        torch.testing.assert_close(scores[grp.name], reference[grp.name] / k, rtol=1e-5, atol=1e-12)
    assert scores[first.name][0] == 0
    if scope == "all":
        assert any(len(grp.mask_points) > 1 for grp in groups)


def test_l1_signed_and_bn_scores_read_the_unit_layers():
    spec = ArchSpec("wrn", ZOO[0][1])
    model = randomize_bn(create(spec))
    groups = find_groups(model, (1, 8, 8), "internal", spec=spec)
    l1 = channel_scores("l1", model, groups)
    signed = channel_scores("l1-signed", model, groups)
    bn = channel_scores("bn", model, groups)
    for g in groups:
        w = model.get_submodule(g.unit.conv).weight.detach()
        torch.testing.assert_close(l1[g.name], w.abs().sum((1, 2, 3)))
        torch.testing.assert_close(signed[g.name], w.sum((1, 2, 3)))
        torch.testing.assert_close(bn[g.name], model.get_submodule(g.unit.bn).weight.detach().abs())
    r1 = channel_scores("random", model, groups, seed=3)
    r2 = channel_scores("random", model, groups, seed=3)
    assert all(torch.equal(r1[k], r2[k]) for k in r1)


def test_fisher_cost_term_uses_the_exact_freed_size():
    model = ConcatDepthwiseNet()
    groups = find_groups(model, (1, 8, 8), "all")
    cost = CostModel(model, groups)
    alive = {g.name: torch.ones(g.width, dtype=torch.bool) for g in groups}
    full = {g.name: list(range(g.width)) for g in groups}
    freed_params = cost.freed_per_channel(alive, "params")
    freed_macs = cost.freed_per_channel(alive, "macs")
    for g in groups:
        one_less = compress(model, groups, {**full, g.name: list(range(1, g.width))})
        assert freed_params[g.name] == count_params(model).params - count_params(one_less).params
        assert freed_macs[g.name] == count_macs(model, (1, 8, 8)) - count_macs(one_less, (1, 8, 8))


# -- selection -----------------------------------------------------------------------------------------
def test_global_selection_and_width_rules():
    model = ConcatDepthwiseNet()
    groups = find_groups(model, (1, 8, 8), "internal")
    by = groups.by_name()
    assert by["d1.conv1"].vanishable and not by["pw"].vanishable
    alive = {g.name: torch.ones(g.width, dtype=torch.bool) for g in groups}
    scores = {g.name: torch.arange(g.width, dtype=torch.float) + 100 * i for i, g in enumerate(groups)}
    chosen = select(scores, alive, groups, 3)
    assert chosen == [(groups.groups[0].name, 0), (groups.groups[0].name, 1), (groups.groups[0].name, 2)]
    # everything: vanishable groups go to 0, the others keep one channel
    chosen = select(scores, alive, groups, 10_000)
    left = {g.name: g.width - sum(1 for n, _ in chosen if n == g.name) for g in groups}
    assert left == {g.name: 0 if g.vanishable else 1 for g in groups}
    # round_to: widths stay multiples of 8 (pw has 16 channels: 16 -> 8 -> 8 minimum)
    chosen = select({"pw": torch.arange(16.0), **{k: v + 1e6 for k, v in scores.items() if k != "pw"}}, alive,
                    groups, 1, round_to=8)
    assert sorted(c for n, c in chosen) == list(range(8))


def test_uniform_ties_rank_every_layer_together():
    """Uniform pruning (HF folders): each layer's heads / MLP units go together, ranked by the sum of
    their scores (hand computation); plain channel groups stay alone; ties off = global ranking."""
    from types import SimpleNamespace

    from prunelab.prune.structured.select import removal_order, uniform_ties

    att = SimpleNamespace(group_size=2, head_dim=8)

    def group(name, kind, width):
        return SimpleNamespace(name=name, kind=kind, width=width, vanishable=False,
                               structure=att if kind == "heads" else SimpleNamespace())

    groups = [group("l0:heads", "heads", 3), group("l0:mlp", "mlp", 4), group("l1:heads", "heads", 3),
              group("l1:mlp", "mlp", 4), group("pool", "channels", 4)]
    ties = uniform_ties(groups)
    assert ties == [["l0:heads", "l1:heads"], ["l0:mlp", "l1:mlp"]]
    scores = {"l0:heads": torch.tensor([5.0, 1.0, 9.0]), "l1:heads": torch.tensor([2.0, 8.0, 3.0]),
              "l0:mlp": torch.tensor([4.0, 0.5, 7.0, 6.0]), "l1:mlp": torch.tensor([3.5, 9.0, 0.25, 1.0]),
              "pool": torch.tensor([1.6, 10.0, 20.0, 30.0])}
    alive = {g.name: torch.ones(g.width, dtype=torch.bool) for g in groups}
    order = list(removal_order(scores, alive, groups, ties=ties))
    # unit sums: mlp (0.5 + 0.25) = 0.75, pool 1.6, heads (1 + 2) = 3, heads (5 + 3) = 8, mlp (4 + 1) = 5, ...
    assert order[:4] == [[("l0:mlp", 1), ("l1:mlp", 2)], [("pool", 0)], [("l0:heads", 1), ("l1:heads", 0)],
                         [("l0:mlp", 0), ("l1:mlp", 3)]]
    left = {g.name: g.width - sum(1 for u in order for n, _ in u if n == g.name) for g in groups}
    assert left == {"l0:heads": 1, "l1:heads": 1, "l0:mlp": 1, "l1:mlp": 1, "pool": 1}
    assert all(len({n for n, _ in u}) in (1, 2) for u in order)
    # without ties: the global argmin, one channel at a time
    assert list(removal_order(scores, alive, groups))[:2] == [[("l1:mlp", 2)], [("l0:mlp", 1)]]


# -- compression ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("family,kwargs,shape", ZOO, ids=[f"{f}-{i}" for i, (f, _, _) in enumerate(ZOO)])
@pytest.mark.parametrize("scope", ["internal", "all"])
def test_compressed_equals_masked_for_every_zoo_family(family, kwargs, shape, scope):
    spec = ArchSpec(family, kwargs)
    model = randomize_bn(create(spec))
    groups = find_groups(model, shape, scope, spec=spec)
    assert len(groups) > 0
    keep = random_keep(groups, seed=len(family))
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(5))
    want = masked_output(model, groups, keep, x)
    small = compress(model, groups, keep)
    small.eval()
    with torch.no_grad():
        got = small(x)
    assert got.shape == want.shape
    assert float((got - want).abs().max()) <= 1e-4 * max(1.0, float(want.abs().max()))
    # the size estimate equals prunelab.measure's counts of the compressed model
    alive = {g.name: torch.zeros(g.width, dtype=torch.bool).index_fill_(0, torch.tensor(keep[g.name] or [0]),
                                                                        bool(keep[g.name]))
             for g in groups}
    est_params, est_macs = CostModel(model, groups).size(alive)
    assert est_params == count_params(small).params
    assert est_macs == count_macs(small, shape)
    if family == "resnet_cifar" and kwargs["shortcut"] == "A" and scope == "all":
        assert any("padding" in s["reason"] for s in groups.skipped)  # option-A streams are not prunable


@pytest.mark.parametrize("scope", ["internal", "all"])
def test_user_model_with_concat_and_depthwise(scope):
    model = randomize_bn(ConcatDepthwiseNet())
    groups = find_groups(model, (1, 8, 8), scope)
    names = {g.name for g in groups}
    assert {"d1.conv1", "d2.conv1", "pw"} <= names
    dw_group = groups.by_name()["pw"]
    assert {(m.module, m.kind) for m in dw_group.members} >= {("pw", "out"), ("bnp", "out"), ("dw", "depthwise"),
                                                               ("bnd", "out"), ("pw2", "in")}
    if scope == "all":
        stem = groups.by_name()["stem"]  # concat offsets: the stem's channels sit first in both dense inputs
        assert {m.module for m in stem.members if m.kind == "in"} == {"d1.conv1", "d2.conv1", "pw"}
        d1 = groups.by_name()["d1.conv2"]
        assert next(m for m in d1.members if m.module == "pw").idxs == [6, 7, 8]
    keep = random_keep(groups, seed=1, vanish=False)
    keep["d1.conv1"] = []  # the first dense layer adds only zeros
    x = torch.randn(4, 1, 8, 8)
    want = masked_output(model, groups, keep, x)
    small = compress(model, groups, keep).eval()
    with torch.no_grad():
        torch.testing.assert_close(small(x), want, rtol=1e-4, atol=1e-4)
    assert isinstance(small.d1.conv1, EmptyConv) and isinstance(small.d1.conv2, ZeroConv)
    assert small.dw.groups == small.dw.out_channels == len(keep["pw"])


def test_exclusion_by_name_pattern_and_type():
    model = ConcatDepthwiseNet()
    groups = find_groups(model, (1, 8, 8), "all", exclude=["d1.*"])
    # the stem's channels pass through d1.bn1, which keeps its width, so the stem group goes too
    # the logits layer is listed too: every group left out is reported with its reason
    assert {s["group"] for s in groups.skipped} == {"d1.conv1", "d1.conv2", "stem", "fc"}
    assert {g.name for g in groups} == {"d2.conv1", "d2.conv2", "pw", "pw2"}
    groups = find_groups(model, (1, 8, 8), "all", exclude=["Conv2d"])
    assert len(groups) == 0 and all("Conv2d" in s["reason"] for s in groups.skipped if s["group"] != "fc")
    with pytest.raises(PrunelabError, match="matches no module"):
        find_groups(model, (1, 8, 8), "all", exclude=["d9.*"])


def test_unsupported_operation_is_named():
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(1, 4, 1)
            self.b = nn.Conv2d(4, 4, 1)

        def forward(self, x):
            y = self.a(x)
            return self.b(y.flip(1)).mean((2, 3))  # a channel permutation Torch-Pruning cannot map

    groups = find_groups(Bad(), (1, 4, 4), "all")
    assert any("Flip" in s["reason"] for s in groups.skipped)
    with pytest.raises(PrunelabError, match="no prunable channel groups"):
        StructuredPruner(Bad(), StructuredConfig(criterion="l1", target=Target("channels", 1)), (1, 4, 4))


def test_zero_width_block_reduces_to_shortcut_and_exports_to_onnx():
    ort = pytest.importorskip("onnxruntime")
    import io

    spec = ArchSpec("wrn", ZOO[0][1])
    model = randomize_bn(create(spec))
    groups = find_groups(model, (1, 8, 8), "internal", spec=spec)
    keep = {g.name: list(range(g.width)) for g in groups}
    keep["block2.layer.0"] = []
    keep["block3.layer.0"] = [1, 3]
    x = torch.randn(2, 1, 8, 8)
    want = masked_output(model, groups, keep, x)
    small = compress(model, groups, keep).eval()
    assert isinstance(small.block2.layer[0].conv2, ZeroConv)
    buf = io.BytesIO()
    torch.onnx.export(small, (x,), buf, dynamo=False)
    sess = ort.InferenceSession(buf.getvalue())
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(out), want, rtol=1e-4, atol=1e-4)


# -- plans ---------------------------------------------------------------------------------------------
def test_plan_apply_and_spec_of_compressed():
    spec = ArchSpec("densenet", ZOO[1][1])
    model = randomize_bn(create(spec))
    groups = find_groups(model, (1, 8, 8), "internal", spec=spec)
    keep = {g.name: list(range(0, g.width, 3)) for g in groups}
    small = compress(model, groups, keep)
    plan = make_plan(groups, keep, spec.to_dict())
    rebuilt = apply_plan(create(spec), plan)
    rebuilt.load_state_dict(small.state_dict())
    x = torch.randn(2, 1, 8, 8)
    small.eval()
    rebuilt.eval()
    torch.testing.assert_close(rebuilt(x), small(x))
    narrowed = create(spec_of_compressed(plan))
    assert {k: v.shape for k, v in narrowed.state_dict().items()} == {k: v.shape for k, v in small.state_dict().items()}
    bad = copy.deepcopy(plan)
    bad["groups"][0]["width"] += 1
    with pytest.raises(PrunelabError, match="does not fit the base model"):
        apply_plan(create(spec), bad)
    bad = copy.deepcopy(plan)
    bad["groups"][0]["root"] = "dense1.9.conv1"
    with pytest.raises(PrunelabError, match="no layer"):
        apply_plan(create(spec), bad)


def test_composed_plan_of_a_pruned_model():
    spec = ArchSpec("wrn", ZOO[0][1])
    model = randomize_bn(create(spec))
    groups = find_groups(model, (1, 8, 8), "internal", spec=spec)
    keep1 = {g.name: list(range(1, g.width)) for g in groups}
    small = compress(model, groups, keep1)
    plan1 = make_plan(groups, keep1, spec.to_dict())
    groups2 = find_groups(small, (1, 8, 8), "internal", spec=spec)
    keep2 = {g.name: list(range(0, g.width, 2)) for g in groups2}
    smaller = compress(small, groups2, keep2)
    plan = make_plan(groups2, keep2, spec.to_dict(), previous=plan1)
    first = plan["groups"][0]
    assert first["kept"] == keep1[first["name"]][::2]
    rebuilt = apply_plan(create(spec), plan)
    rebuilt.load_state_dict(smaller.state_dict())
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(rebuilt.eval()(x), smaller.eval()(x))


# -- pruner, schedules and targets ----------------------------------------------------------------------
def _digits_like(n: int = 64, classes: int = 10, shape=(1, 8, 8)):
    from prunelab.data.base import DataBundle, Split

    g = torch.Generator().manual_seed(0)
    split = Split(torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g))
    return DataBundle("toy", split, split, split, classes, tuple(shape))


def test_iterative_callback_prunes_every_k_steps_until_the_target():
    from prunelab.train import TrainConfig, Trainer

    spec = ArchSpec("wrn", ZOO[0][1])
    model = create(spec)
    cfg = StructuredConfig(criterion="fisher", prune_every=2, channels_per_prune=3,
                           target=Target("channels", 30), finetune_steps=1)
    pruner = StructuredPruner(model, cfg, (1, 8, 8), spec=spec)
    total = pruner.groups.total_channels
    trainer = Trainer(model, _digits_like(), TrainConfig(epochs=100, batch_size=16, lr=0.01, schedule="constant",
                                                         device="cpu", augment=False, seed=0),
                      callbacks=[pruner.callback()])
    trainer.fit()
    steps = [h["step"] for h in pruner.history]
    assert steps == list(range(2, 2 * len(steps) + 1, 2))
    assert pruner.masks.remaining == 30 and len(steps) == -(-(total - 30) // 3)
    assert trainer.step == steps[-1] + 1  # one fine-tuning step after the target
    small = pruner.compress()
    assert sum(len(r["kept"]) for r in pruner.plan()["groups"]) == 30
    assert count_params(small).params < count_params(model).params


@pytest.mark.parametrize("kind", ["params", "macs"])
def test_oneshot_reaches_a_size_target_exactly_as_counted(kind):
    spec = ArchSpec("densenet", ZOO[1][1])
    model = create(spec)
    base = count_params(model).params if kind == "params" else count_macs(model, (1, 8, 8))
    target = int(base * 0.8)
    pruner = StructuredPruner(model, StructuredConfig(criterion="l1", scope="all", schedule="oneshot",
                                                      target=Target(kind, target)), (1, 8, 8), spec=spec)
    pruner.prune_oneshot()
    small = pruner.compress()
    size = count_params(small).params if kind == "params" else count_macs(small, (1, 8, 8))
    assert size <= target
    # minimal: putting back the last removal unit would overshoot the target (up to one channel unit)
    assert size > target * 0.9


def test_fisher_oneshot_and_round_to():
    spec = ArchSpec("wrn", ZOO[0][1])
    model = create(spec)
    cfg = StructuredConfig(criterion="fisher", schedule="oneshot", prune_every=2, round_to=8,
                           target=Target("channels", 48))
    pruner = StructuredPruner(model, cfg, (1, 8, 8), spec=spec)
    pruner.prune_oneshot(_digits_like(), batch_size=16)
    assert pruner.criterion.steps == 0 and pruner.masks.remaining <= 48
    assert all(w % 8 == 0 for w in pruner.masks.widths().values())


def test_bad_targets_and_settings():
    spec = ArchSpec("wrn", ZOO[0][1])
    model = create(spec)
    params = count_params(model).params
    with pytest.raises(PrunelabError, match="not below"):
        StructuredPruner(model, StructuredConfig(target=Target("params", params + 1)), (1, 8, 8), spec=spec)
    with pytest.raises(PrunelabError, match="unreachable"):
        StructuredPruner(model, StructuredConfig(target=Target("params", 10)), (1, 8, 8), spec=spec)
    with pytest.raises(PrunelabError, match="unknown criterion"):
        StructuredConfig(criterion="obd").validate()
    with pytest.raises(PrunelabError, match="unknown scope"):
        find_groups(model, (1, 8, 8), "everything")
    with pytest.raises(PrunelabError, match="round-to"):
        StructuredConfig(round_to=-8).validate()


def test_latency_target_runs_without_timing_assumptions():
    """Measured latency is replaced by a deterministic stand-in (ms = MACs / 1e5) to test the logic."""
    from prunelab.measure import count_macs
    from prunelab.prune.structured import pruner as pruner_module

    spec = ArchSpec("cnn", {"in_channels": 1})
    offset = {"ms": 0.0}

    def fake_latency(model, input_shape, target):
        return count_macs(model, tuple(input_shape)) / 1e5 + offset["ms"]

    def make(ms: float) -> StructuredPruner:
        config = StructuredConfig(criterion="l1", schedule="oneshot", target=Target("latency_ms", ms))
        return StructuredPruner(create(spec), config, (1, 8, 8), spec=spec)

    mp = pytest.MonkeyPatch()
    mp.setattr(pruner_module, "measure_latency_ms", fake_latency)
    try:
        full = count_macs(create(spec), (1, 8, 8)) / 1e5
        with pytest.raises(PrunelabError, match="not below the model's measured"):
            make(full * 2)
        with pytest.raises(PrunelabError, match="unreachable: removing every prunable channel"):
            make(1e-9)
        pruner = make(full / 2)
        pruner.prune_oneshot()
        assert pruner.reached() and fake_latency(pruner.compress(), (1, 8, 8), None) <= full / 2
        # a target that drifts out of reach after the check (measured noise) is refused, the masks untouched
        pruner = make(full / 2)
        before = pruner.masks.widths()
        offset["ms"] = full
        with pytest.raises(PrunelabError, match="unreachable"):
            pruner.prune_oneshot()
        assert pruner.masks.widths() == before
    finally:
        mp.undo()


DDP_WORKER = """
import sys
import torch
import prunelab.data as D
from prunelab.models import ArchSpec, create
from prunelab.prune.structured import StructuredConfig, StructuredPruner, Target
from prunelab.train import TrainConfig, Trainer
from prunelab.train import distributed as dist

torch.set_num_threads(1)
assert dist.init_from_env() and dist.is_distributed()
spec = ArchSpec("wrn", {"depth": 10, "widths": [4, 8, 8, 8], "in_channels": 1})
model = create(spec)
data = D.load("synthetic", shape="1x8x8", n_train=256, n_val=16, n_test=16, seed=0)
pruner = StructuredPruner(model, StructuredConfig(criterion=sys.argv[2], prune_every=2, channels_per_prune=2,
                                                  target=Target("channels", 12)), (1, 8, 8), spec=spec)
raw = []
original = pruner.criterion.scores
pruner.criterion.scores = lambda: raw.append(original()) or raw[-1]
Trainer(model, data, TrainConfig(epochs=20, batch_size=32, lr=0.01, schedule="constant", device="cpu"),
        callbacks=[pruner.callback()]).fit()
torch.save({"kept": pruner.masks.kept(), "history": pruner.history, "raw": raw[0]},
           f"{sys.argv[1]}/rank{dist.rank()}.pt")
dist.destroy()
"""


@pytest.mark.parametrize("criterion", ["fisher", "apoz"])
def test_accumulated_scores_are_averaged_across_ddp_ranks(criterion, tmp_path):
    """Fisher and APoZ accumulate over each rank's shard; the ranks average before ranking
    (``all_reduce = "mean"``) and so prune the same channels."""
    import os
    import subprocess
    import sys

    script = tmp_path / "worker.py"
    script.write_text(DDP_WORKER)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                           str(script), str(tmp_path), criterion], env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert any(not torch.equal(r0["raw"][k], r1["raw"][k]) for k in r0["raw"])  # ranks saw different shards
    assert r0["history"] == r1["history"] and r0["kept"] == r1["kept"]
    assert sum(len(v) for v in r0["kept"].values()) == 12


def test_cli_warns_when_a_group_collapses_to_one_channel(tmp_path, capsys):
    """L1 sums ranked across layers take the 9-weight filters of the first conv first: say so."""
    from prunelab.cli import main

    torch.manual_seed(0)
    rc = main(["prune", "cnn", "--data", "digits", "--structured", "--criterion", "l1", "--oneshot",
               "--target-params", "12000", "--epochs", "1", "--max-steps", "2", "--out", str(tmp_path / "s.pt"),
               "--json"])
    assert rc == 0
    out, err = capsys.readouterr()
    widths = {g["group"]: g["after"] for g in json.loads(out)["groups"]}
    assert widths["features.0"] == 1  # the independent fact the warning is about
    assert "warning: layer collapse: 1 group(s) kept at most one channel (features.0 16 -> 1)" in err
    from prunelab.checkpoint import load_model

    assert load_model(tmp_path / "s.pt").meta["input_shape"] == [1, 8, 8]  # `info` and `bench` read it


class _UserNet(nn.Module):
    """A user's own network (not in the zoo): a residual add and a strided conv."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.c = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU())
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.a(x)
        x = x + self.b(x)
        return self.fc(self.c(x).mean((2, 3)))


def test_a_registered_user_model_saves_pruned_and_loads_back(tmp_path):
    """The README's recipe for one's own model: register the constructor, prune, save, load."""
    from prunelab.checkpoint import load_model
    from prunelab.models import register_family
    from prunelab.prune.structured import save_pruned

    spec = ArchSpec("test-usernet", {"num_classes": 10})
    with pytest.raises(PrunelabError, match="register_family"):
        pruner = StructuredPruner(_UserNet(), StructuredConfig(criterion="l1", schedule="oneshot",
                                                               target=Target("params", 5000)), (3, 16, 16))
        pruner.prune_oneshot()
        save_pruned(tmp_path / "nospec.pt", pruner.compress(), pruner.plan())
    register_family("test-usernet", _UserNet, input_shape=(3, 16, 16))
    torch.manual_seed(0)
    pruner = StructuredPruner(create(spec).eval(), StructuredConfig(criterion="l1", schedule="oneshot",
                                                                    target=Target("params", 5000)),
                              (3, 16, 16), spec=spec)
    pruner.prune_oneshot()
    small = pruner.compress().eval()
    save_pruned(tmp_path / "user.pt", small, pruner.plan())
    loaded = load_model(tmp_path / "user.pt").model.eval()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), small(x))
    assert sum(p.numel() for p in loaded.parameters()) <= 5000 < sum(p.numel() for p in _UserNet().parameters())


def test_round_to_any_multiple_keeps_widths_multiples(tmp_path):
    """--round-to K takes any K >= 1 (as reduce and copy-profile do): every pruned width is a multiple."""
    spec = ArchSpec("cnn", {"in_channels": 1})
    config = StructuredConfig(criterion="l1", schedule="oneshot", round_to=4, target=Target("params", 12000))
    pruner = StructuredPruner(create(spec), config, (1, 8, 8), spec=spec)
    pruner.prune_oneshot()
    widths = pruner.masks.widths()
    assert all(w % 4 == 0 and w >= 4 for w in widths.values()) and pruner.reached()
    with pytest.raises(PrunelabError, match=">= 1"):
        StructuredConfig(round_to=0).validate()


def test_torch_pruning_is_pinned_to_the_tested_releases():
    """pyproject.toml bounds torch-pruning to the releases the structured code is tested with (1.5.0 to
    1.5.2 lack the graph's OUTPUT nodes; 1.7 is not tested), and the installed one is among them."""
    import re
    from importlib.metadata import version
    from pathlib import Path

    from prunelab.prune.structured.groups import TORCH_PRUNING_TESTED

    def parse(v: str) -> tuple[int, ...]:
        return tuple(int(p) for p in v.split("."))

    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    low, high = re.search(r'"torch-pruning>=([\d.]+),<([\d.]+)"', text).groups()
    assert all(parse(low) <= parse(v) < parse(high) for v in TORCH_PRUNING_TESTED)
    assert low == TORCH_PRUNING_TESTED[0]
    assert version("torch-pruning") in TORCH_PRUNING_TESTED
