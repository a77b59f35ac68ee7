"""Structured channel criteria against independent references, and the criterion registry end to end.

References: Torch-Pruning's own importance classes on the same layer (``TaylorImportance``,
``MagnitudeImportance``), einsums of the formulas on activations captured with autograd
(``retain_grad``), zeros counted on the outputs of the ReLU modules themselves, and hand-made scores
whose pruned channels are known in advance.
"""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.models import ArchSpec, create
from prunelab.prune.structured import (
    ChannelMasks,
    Criterion,
    StructuredConfig,
    StructuredPruner,
    Target,
    accumulate,
    channel_scores,
    criterion_names,
    find_groups,
    get_criterion,
    register_criterion,
)

torch.set_num_threads(1)

WRN = ArchSpec("wrn", {"depth": 10, "widths": [4, 8, 8, 8], "in_channels": 1})


class PlainNet(nn.Module):
    """conv (no bias, no BN) -> ReLU -> conv -> pool -> linear: the first conv is one group of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(6, 5, 3, padding=1)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        return self.fc(self.conv2(F.relu(self.conv1(x))).mean((2, 3)))


def _batches(k: int, n: int = 8, shape=(1, 6, 6), classes: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)) for _ in range(k)]


def _digits_like(n: int = 64, classes: int = 10, shape=(1, 8, 8)):
    from prunelab.data.base import DataBundle, Split

    g = torch.Generator().manual_seed(0)
    split = Split(torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g))
    return DataBundle("toy", split, split, split, classes, tuple(shape))


# -- Taylor ---------------------------------------------------------------------------------------------
def test_taylor_on_a_plain_conv_is_torch_pruning_taylor_squared():
    """No BatchNorm: the channel's parameters are its filter. Torch-Pruning's multivariable Taylor
    (|sum g*w| of the root layer) squared, averaged over K batches, is prunelab's score."""
    torch.manual_seed(0)
    model = PlainNet()
    groups = find_groups(model, (1, 6, 6), "all")
    group = groups.by_name()["conv1"]
    assert group.batchnorms == [] and group.producers == ["conv1"]
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 1, 6, 6))
    tp_group = dg.get_pruning_group(model.conv1, tp.prune_conv_out_channels, idxs=list(range(6)))
    masks = ChannelMasks(model, groups)
    taylor = get_criterion("taylor")(model, groups, masks)
    reference = tp.importance.TaylorImportance(group_reduction="first", normalizer=None, multivariable=True)
    want = torch.zeros(6)
    batches = _batches(3)
    for x, y in batches:
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        taylor.end_step()
        want += reference(tp_group).pow(2) / len(batches)
    assert taylor.steps == 3
    torch.testing.assert_close(taylor.scores()["conv1"], want, rtol=1e-5, atol=1e-12)


def test_taylor_with_batchnorm_is_the_squared_gate_gradient():
    """With a BatchNorm the channel's parameters are gamma and beta; gamma*dL/dgamma + beta*dL/dbeta is
    the batch sum of the BN output times its gradient (Molchanov et al.'s gate after BN): einsum."""
    torch.manual_seed(0)
    model = create(WRN)
    groups = find_groups(model, (1, 8, 8), "internal", spec=WRN)
    masks = ChannelMasks(model, groups)
    first = groups.groups[0]
    masks.set_kept(first.name, list(range(1, first.width)))  # a masked channel scores 0
    taylor = get_criterion("taylor")(model, groups, masks)
    captured = {}

    def capture(name):
        def hook(module, inputs, output):  # after the mask hook: the masked activation
            output.retain_grad()
            captured[name] = output
        return hook

    for g in groups:
        model.get_submodule(g.unit.bn).register_forward_hook(capture(g.name))
    want = {g.name: torch.zeros(g.width) for g in groups}
    batches = _batches(2, shape=(1, 8, 8), classes=10)
    model.train()
    for x, y in batches:
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        taylor.end_step()
        for g in groups:
            t = captured[g.name]
            want[g.name] += torch.einsum("nchw,nchw->c", t.detach(), t.grad).pow(2) / len(batches)
    scores = taylor.scores()
    for g in groups:
        torch.testing.assert_close(scores[g.name], want[g.name], rtol=1e-4, atol=1e-10)
    assert scores[first.name][0] == 0


def test_taylor_prunes_iteratively_and_one_shot():
    from prunelab.train import TrainConfig, Trainer

    model = create(WRN)
    cfg = StructuredConfig(criterion="taylor", prune_every=2, channels_per_prune=2, target=Target("channels", 20))
    pruner = StructuredPruner(model, cfg, (1, 8, 8), spec=WRN)
    Trainer(model, _digits_like(), TrainConfig(epochs=50, batch_size=16, lr=0.01, schedule="constant", device="cpu",
                                               augment=False, seed=0), callbacks=[pruner.callback()]).fit()
    assert pruner.masks.remaining == 20 and [h["step"] for h in pruner.history][:2] == [2, 4]
    assert pruner.criterion.steps < 2  # reset at every prune
    oneshot = StructuredPruner(create(WRN), StructuredConfig(criterion="taylor", schedule="oneshot", prune_every=3,
                                                             target=Target("channels", 20)), (1, 8, 8), spec=WRN)
    with pytest.raises(PrunelabError, match="needs training data"):
        oneshot.prune_oneshot()
    oneshot.prune_oneshot(_digits_like(), batch_size=16)
    assert oneshot.masks.remaining == 20 and oneshot.criterion.steps == 0


# -- APoZ -----------------------------------------------------------------------------------------------
def test_apoz_counts_the_zeros_of_the_relu_that_follows():
    """Zeros counted on the outputs of the ReLU modules after each width unit (Hu et al. 2016, eq. 1),
    over the K batches of a one-shot data pass, forward only; a masked channel is all zeros."""
    torch.manual_seed(0)
    model = create(WRN)
    groups = find_groups(model, (1, 8, 8), "internal", spec=WRN)
    masks = ChannelMasks(model, groups)
    first = groups.groups[0]
    masks.set_kept(first.name, list(range(1, first.width)))
    apoz = get_criterion("apoz")(model, groups, masks)
    zeros = {g.name: torch.zeros(g.width) for g in groups}
    seen = dict.fromkeys(zeros, 0)

    def count(name):
        def hook(module, inputs, output):
            zeros[name] += (output == 0).float().sum((0, 2, 3))
            seen[name] += output.shape[0] * output.shape[2] * output.shape[3]
        return hook

    for g in groups:
        relu = model.get_submodule(g.unit.bn.replace("bn2", "relu2"))
        assert isinstance(relu, nn.ReLU)
        relu.register_forward_hook(count(g.name))
    accumulate(model, apoz, _digits_like(), steps=3, batch_size=16)
    assert apoz.steps == 3 and all(v > 0 for v in seen.values())
    scores = apoz.scores()
    for g in groups:
        torch.testing.assert_close(scores[g.name], 1 - zeros[g.name] / seen[g.name])
    assert scores[first.name][0] == 0  # all zeros
    assert all(bool(((s > 0) & (s < 1)).any()) for s in scores.values())  # a real count, not a constant
    assert all(p.grad is None for p in model.parameters())  # forward only


def test_apoz_prunes_to_a_target_one_shot():
    model = create(WRN)
    pruner = StructuredPruner(model, StructuredConfig(criterion="apoz", schedule="oneshot", prune_every=2,
                                                      target=Target("channels", 16)), (1, 8, 8), spec=WRN)
    pruner.prune_oneshot(_digits_like(), batch_size=16)
    assert pruner.masks.remaining == 16 and pruner.reached()


# -- L1 and its normalised form -------------------------------------------------------------------------
def test_l1_normalized_is_torch_pruning_magnitude_with_mean_normaliser():
    torch.manual_seed(0)
    model = create(WRN)
    groups = find_groups(model, (1, 8, 8), "internal", spec=WRN)
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 1, 8, 8))
    reference = tp.importance.MagnitudeImportance(p=1, group_reduction="first", normalizer="mean")
    scores = channel_scores("l1-normalized", model, groups)
    l1 = channel_scores("l1", model, groups)
    for g in groups:
        conv = model.get_submodule(g.unit.conv)
        tp_group = dg.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=list(range(g.width)))
        torch.testing.assert_close(scores[g.name], reference(tp_group))
        torch.testing.assert_close(l1[g.name], conv.weight.detach().abs().sum((1, 2, 3)))
    # Pruned channels leave the mean: the live ones are compared with each other.
    masks = ChannelMasks(model, groups)
    first = groups.groups[0]
    masks.set_kept(first.name, [0, 1])
    live = get_criterion("l1-normalized")(model, groups, masks).scores()[first.name]
    torch.testing.assert_close(live, l1[first.name] / l1[first.name][:2].mean())


def test_l1_normalized_does_not_collapse_the_first_layer_as_global_l1_does(tmp_path):
    """Unnormalised global L1 takes the small first-layer filters of the digits CNN down to one channel
    (tests/test_structured.py checks the warning); normalised by each layer's mean it does not."""
    spec = ArchSpec("cnn", {"in_channels": 1})
    widths = {}
    for crit in ("l1", "l1-normalized"):
        torch.manual_seed(0)
        pruner = StructuredPruner(create(spec), StructuredConfig(criterion=crit, schedule="oneshot",
                                                                 target=Target("params", 12000)), (1, 8, 8), spec=spec)
        pruner.prune_oneshot()
        widths[crit] = pruner.masks.widths()
    assert widths["l1"]["features.0"] == 1
    assert widths["l1-normalized"]["features.0"] > 4


# -- the registry ---------------------------------------------------------------------------------------
PLUGIN = '''
"""A user's criterion, registered from outside the package: channel index order, so the channels
that go are known in advance (the highest indices of every group first)."""
import torch
from prunelab.prune.structured import Criterion, register_criterion


@register_criterion
class HighIndexFirst(Criterion):
    name = "test-high-index-first"
    summary = "test criterion: higher channel index, lower score"

    def scores(self):
        return {g.name: -torch.arange(g.width, dtype=torch.float) for g in self.groups}
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    (tmp_path / "prunelab_test_criterion.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    module = importlib.import_module("prunelab_test_criterion")
    yield "prunelab_test_criterion"
    import sys

    sys.modules.pop("prunelab_test_criterion", None)
    from prunelab.prune.structured import criterion as registry

    registry._CRITERIA.pop(module.HighIndexFirst.name, None)


def _prefix_kept(plan: dict) -> None:
    """Every group of the plan kept its lowest channel indices, the order the plugin's scores dictate."""
    pruned = [g for g in plan["groups"] if len(g["kept"]) < g["width"]]
    assert pruned
    assert all(g["kept"] == list(range(len(g["kept"]))) for g in plan["groups"])


def test_a_registered_criterion_runs_through_the_cli(plugin, tmp_path, capsys):
    from prunelab.checkpoint import load_model
    from prunelab.cli import build_parser, main

    assert "test-high-index-first" in criterion_names()
    help_text = build_parser("prune").format_help() + _subparser_help("prune")
    assert "test-high-index-first" in help_text
    rc = main(["prune", "cnn", "--data", "digits", "--structured", "--criterion", "test-high-index-first",
               "--oneshot", "--target-params", "12000", "--epochs", "1", "--max-steps", "2",
               "--out", str(tmp_path / "p.pt"), "--json"])
    assert rc == 0, capsys.readouterr().err
    _prefix_kept(load_model(tmp_path / "p.pt").plan)
    assert json.loads(capsys.readouterr().out)["structured"]["criterion"] == "test-high-index-first"


def _subparser_help(command: str) -> str:
    import argparse

    from prunelab.cli import build_parser

    parser = build_parser(command)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command].format_help()


def test_a_registered_criterion_runs_in_a_one_run_study(plugin, tmp_path):
    from prunelab.study import load_results, run_study

    spec = tmp_path / "study.yaml"
    spec.write_text(textwrap.dedent(f"""
        name: plugin-criterion
        plugins: [{plugin}]
        data: {{name: digits}}
        train: {{epochs: 1, batch_size: 64, lr: 0.05, device: cpu, max_steps: 2}}
        models: [{{name: cnn, label: cnn}}]
        methods: [{{name: mine, kind: structured, criterion: test-high-index-first, schedule: oneshot,
                    finetune_epochs: 0}}]
        targets: [{{params_ratio: 0.5}}]
        seeds: [0]
    """))
    result = run_study(spec, tmp_path / "study", progress=False)
    df = load_results(result.out_dir)
    assert len(df) == 1 and set(df["status"]) == {"done"}  # one run (the dense model is its artifact)
    keys = [json.loads(p.read_text()) for p in (result.out_dir / "artifacts").glob("*/key.json")]
    prune = next(k for k in keys if k["what"] == "structured-prune")
    assert prune["criterion"] == "test-high-index-first"
    from prunelab.checkpoint import load_model

    folder = next(p.parent for p in (result.out_dir / "artifacts").glob("*/key.json")
                  if json.loads(p.read_text())["what"] == "structured-prune")
    _prefix_kept(load_model(folder / "model.pt").plan)


def test_study_criterion_choices_come_from_the_registry(tmp_path):
    from prunelab.study.spec import parse_spec

    text = """
        name: bad
        data: {name: digits}
        models: [cnn]
        methods: [{name: m, kind: structured, criterion: hrank}]
        targets: [{params_ratio: 0.5}]
    """
    with pytest.raises(PrunelabError, match="parameter criterion must be one of .*taylor.*, got 'hrank'"):
        parse_spec(textwrap.dedent(text))


def test_registry_refuses_malformed_criteria():
    class NoName(Criterion):
        pass

    class BadNeeds(Criterion):
        name = "test-bad-needs"
        needs = frozenset({"labels"})

    with pytest.raises(PrunelabError, match="non-empty 'name'"):
        register_criterion(NoName)
    with pytest.raises(PrunelabError, match="unknown needs"):
        register_criterion(BadNeeds)
    with pytest.raises(PrunelabError, match="subclass"):
        register_criterion(dict)
    assert {"fisher", "l1", "l1-signed", "l1-normalized", "bn", "random", "taylor", "apoz"} <= set(criterion_names())
    with pytest.raises(PrunelabError, match="accumulates over training batches"):
        model = create(WRN)
        channel_scores("taylor", model, find_groups(model, (1, 8, 8), spec=WRN))


@pytest.mark.parametrize("criterion", ["taylor", "apoz", "l1-normalized"])
def test_new_criteria_run_from_the_cli_and_validate_in_studies(criterion, tmp_path, capsys):
    from prunelab.cli import main
    from prunelab.study.spec import parse_spec

    rc = main(["prune", "cnn", "--data", "digits", "--structured", "--criterion", criterion, "--oneshot",
               "--prune-every", "2", "--target-params", "12000", "--epochs", "0", "--json"])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    assert summary["target"]["reached"] and summary["params"]["after"] <= 12000
    spec = parse_spec(textwrap.dedent(f"""
        name: ok
        data: {{name: digits}}
        models: [cnn]
        methods: [{{name: m, kind: structured, criterion: {criterion}}}]
        targets: [{{params_ratio: 0.5}}]
    """))
    assert spec.methods[0].params["criterion"] == criterion


def test_the_readme_criterion_example_works():
    """The README's L2 example, executed as written, scores each unit's conv filters by their L2 norm."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("### Your own channel criterion"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    from prunelab.prune.structured import criterion as registry

    try:
        exec(compile(code, "README.md", "exec"), {})
        model = create(WRN)
        groups = find_groups(model, (1, 8, 8), "internal", spec=WRN)
        scores = channel_scores("l2", model, groups)
        for g in groups:
            w = model.get_submodule(g.unit.conv).weight.detach()
            torch.testing.assert_close(scores[g.name], w.pow(2).sum((1, 2, 3)).sqrt())
        assert "l2" in criterion_names()
    finally:
        registry._CRITERIA.pop("l2", None)
