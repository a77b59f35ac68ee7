"""Model families register themselves with their hooks; the protocols hold no family table.

A user's family, registered from a plugin module with the optional hooks (width units, a width rule,
the Pruning-from-Scratch expansion), runs through the command line and a one-run study without any
other file knowing it. Widths are checked against the hand-scaled values; the registry and the
protocols are checked by reading their source.
"""

from __future__ import annotations

import ast
import importlib
import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from prunelab.models import ArchSpec, create, get_family, list_families
from prunelab.models import registry as registry_module

SRC = Path(__file__).resolve().parents[1] / "src" / "prunelab"

PLUGIN = '''
"""A user's family: a chain of conv-BN-ReLU layers whose widths are its width units."""
from torch import nn

from prunelab.models import WidthUnit, register_family, register_model
from prunelab.models.widths import scale_units


class Chain(nn.Module):
    def __init__(self, widths=(8, 16), num_classes=10, in_channels=1):
        super().__init__()
        layers, c = [], in_channels
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
            c = w
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def units(model):
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    return [WidthUnit(f"layer{i}", f"features.{3 * i + 1}", f"features.{3 * i}", "widths", i, c.out_channels)
            for i, c in enumerate(convs)]


register_family("test-chain", Chain, units=units, input_shape=(1, 8, 8),
                shape_of=lambda kw: (int(kw.get("in_channels", 1)), 8, 8), scale_width=scale_units, expansion="width")
register_model("test-chain", "test-chain", widths=[8, 16], in_channels=1, doc="a user's chain of convolutions")
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    (tmp_path / "prunelab_test_family.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("prunelab_test_family")
    yield "prunelab_test_family"
    sys.modules.pop("prunelab_test_family", None)
    registry_module._FAMILIES.pop("test-chain", None)
    registry_module._MODELS.pop("test-chain", None)


def test_a_registered_family_reduces_and_prunes_through_the_cli(plugin, tmp_path, capsys):
    from prunelab.checkpoint import load_model
    from prunelab.cli import main

    common = ["--data", "digits", "--epochs", "1", "--max-steps", "2", "--json"]
    assert main(["reduce", "test-chain", "--mode", "width", "--multiplier", "0.5", "--no-train",
                 "--out", str(tmp_path / "r"), *common]) == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    assert summary["arch"]["kwargs"]["widths"] == [4, 8]  # 8 x 0.5 and 16 x 0.5, the family's own rule
    assert main(["prune", "test-chain", "--structured", "--criterion", "l1", "--oneshot", "--target-params",
                 "1000", "--out", str(tmp_path / "p.pt"), *common]) == 0, capsys.readouterr().err
    groups = json.loads(capsys.readouterr().out)["groups"]
    assert [g["group"] for g in groups] == ["layer0", "layer1"]  # the family's width units
    loaded = load_model(tmp_path / "p.pt")
    assert [m.out_channels for m in loaded.model.features if isinstance(m, torch.nn.Conv2d)] == \
        [g["after"] for g in groups]
    assert sum(p.numel() for p in loaded.model.parameters()) <= 1000


def test_a_registered_family_runs_in_a_one_run_study(plugin, tmp_path):
    from prunelab.study import load_results, run_study

    spec = tmp_path / "study.yaml"
    spec.write_text(textwrap.dedent(f"""
        name: plugin-family
        plugins: [{plugin}]
        data: {{name: digits}}
        train: {{epochs: 1, batch_size: 64, lr: 0.05, device: cpu, max_steps: 2}}
        models: [{{name: test-chain, label: chain}}]
        methods: [{{name: thinner, kind: reduced, mode: width, tol: 0.05}}]
        targets: [{{params_ratio: 0.5}}]
        seeds: [0]
    """))
    df = load_results(run_study(spec, tmp_path / "study", progress=False).out_dir)
    assert len(df) == 1 and df["status"].iloc[0] == "done"
    dense = sum(p.numel() for p in create("test-chain", num_classes=10).parameters())
    assert abs(df["params"].iloc[0] / (0.5 * dense) - 1) <= 0.05


def test_family_hooks_drive_the_protocols(plugin):
    from prunelab.protocols.pfs import expanded_spec
    from prunelab.protocols.reduced import scale_bottleneck, scale_width

    spec = ArchSpec("test-chain", {"widths": [8, 16], "in_channels": 1})
    assert scale_width(spec, 1.5).kwargs["widths"] == [12, 24]
    assert expanded_spec(spec, 2.0).kwargs["widths"] == [16, 32]  # expansion="width": the family's rule
    assert scale_bottleneck(spec, 0.25).kwargs["widths"] == [2, 4]
    # The zoo's own choices, declared in each family's file.
    assert get_family("resnet_cifar").expansion == "width" and get_family("wrn").expansion == "bottleneck"
    assert get_family("vgg").width_keys == ("cfg",) and get_family("wrn").width_keys == ("block_widths",)
    assert get_family("gru").scale_width is None


def test_a_family_without_hooks_still_registers_and_refuses_width_scaling(tmp_path):
    from prunelab.errors import PrunelabError
    from prunelab.models import register_family
    from prunelab.protocols.reduced import scale_width

    register_family("test-bare", lambda num_classes=10: torch.nn.Linear(4, num_classes), input_shape=(4,))
    try:
        with pytest.raises(PrunelabError, match="no width-multiplier rule for model family 'test-bare'"):
            scale_width(ArchSpec("test-bare", {}), 0.5)
        with pytest.raises(PrunelabError, match="unknown expansion"):
            register_family("test-bad", torch.nn.Identity, expansion="depth")
    finally:
        registry_module._FAMILIES.pop("test-bare", None)


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_the_registry_imports_no_family_and_the_protocols_hold_no_family_table():
    # the registry may use the models package's own helpers (the memory budget, input specs), never a family module
    helpers = {"prunelab.models.budget", "prunelab.models.common", "prunelab.models.inputs"}
    assert not {m for m in _imports(SRC / "models" / "registry.py") if m.startswith("prunelab.models")} - helpers
    families = set(list_families())
    found = []
    for path in sorted((SRC / "protocols").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            keys = node.keys if isinstance(node, ast.Dict) else \
                node.comparators if isinstance(node, ast.Compare) else []
            found += [f"{path.name}: {k.value}" for k in keys
                      if isinstance(k, ast.Constant) and isinstance(k.value, str) and k.value in families]
    assert not found
