"""Method adapters of studies: every pruning / protocol kind runs through the real runner into a store.

One tiny study per data set (digits, one seed, a few steps) covers every kind; its stored numbers are
checked against the targets and, independently of prunelab's counters, against the checkpoints the
runs wrote (zeros and parameter counts read straight from the saved tensors). Bad parameters are
one-line errors at validation, before anything runs.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prunelab.errors import PrunelabError
from prunelab.study import load_results, run_study
from prunelab.study.results import load_curves, load_layers
from prunelab.study.spec import parse_spec
from prunelab.study.store import ResultsStore

ROOT = Path(__file__).resolve().parents[1]

DIGITS = """
name: methods
data: {name: digits}
train: {epochs: 1, batch_size: 64, lr: 0.05, schedule: cosine, device: cpu, max_steps: 4}
models:
  - {name: cnn, kwargs: {widths: [8, 16, 16]}, label: cnn}
  - {name: wrn-16-1, kwargs: {in_channels: 1, depth: 10}, label: wrn}
  - {name: resnet20, kwargs: {in_channels: 1, depth: 8}, label: resnet}
methods:
  - dense
  - {name: gmp-mt, kind: global-magnitude, mt_percent: 2.0, finetune: {max_steps: 2}}
  - {name: gmp-gradual, kind: global-magnitude, schedule: gradual, gradual: {unit: step, every: 1, end: 3},
     protocols: [finetune, scratch-e]}
  - {name: gmp-iter, kind: global-magnitude, schedule: iterative, rounds: 2, finetune: {max_steps: 1}}
  - {name: layerwise, kind: layerwise-magnitude, finetune: {max_steps: 1}}
  - {name: random, kind: random, uniform: true, budget_cap: 2, protocols: [scratch-b]}
  - {name: snip, kind: snip, batch_size: 32, protocols: [scratch-e]}
  - {name: fisher, kind: fisher, prune_every: 1, channels_per_prune: 8, finetune: {lr: 0.01}, finetune_epochs: 1,
     profile_target: {params_ratio: 0.6}, protocols: [finetune, scratch-e, copy-profile],
     targets: [{params_ratio: 0.4}]}
  - {name: l1, kind: l1, schedule: oneshot, finetune_epochs: 1, targets: [{params: 30000}]}
  - {name: bn, kind: bn-scale, prune_every: 1, channels_per_prune: 8, protocols: [scratch-b],
     targets: [{macs_ratio: 0.6}]}
  - {name: rc, kind: random-channel, prune_every: 1, channels_per_prune: 8, targets: [{params_ratio: 0.5}]}
  - {name: reduced, kind: reduced, mode: bottleneck, tol: 0.1, targets: [{params_ratio: 0.5}]}
  - {name: pfs, kind: pfs, gate_epochs: 1, tol: 0.05, protocols: [scratch-e], targets: [{macs_ratio: 0.5}]}
  - {name: pfs-trained, kind: pfs-trained, gate_epochs: 1, tol: 0.05, protocols: [scratch-b],
     targets: [{macs_ratio: 0.5}]}
targets: [{sparsity: 0.75}]
protocols: [finetune]
seeds: [0]
runs:
  - {model: cnn, methods: [dense, gmp-mt, gmp-gradual, gmp-iter, layerwise, random, snip]}
  - {model: wrn, methods: [dense, fisher, l1, bn, rc, reduced]}
  - {model: resnet, methods: [dense, pfs, pfs-trained]}
"""

LOWRANK = """
name: lowrank
data: {name: mnist1d, options: {layout: time}}
train: {epochs: 1, batch_size: 64, optimizer: adam, lr: 0.01, device: cpu, max_steps: 3}
models: [{name: fastgrnn, kwargs: {input_size: 1, num_classes: 10}}]
methods: [dense, {name: lowrank, kind: lowrank, finetune: {max_steps: 2}}]
targets: [{sparsity: 0.5}]
seeds: [0]
"""


@pytest.fixture(scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits_study(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("methods")
    spec = out / "spec.yaml"
    spec.write_text(DIGITS)
    result = run_study(spec, out / "study", progress=False)
    return result


def _by(df, method, protocol="finetune", model=None):
    rows = df[(df["method"] == method) & (df["protocol"].fillna("-") == (protocol or "-"))]
    if model is not None:
        rows = rows[rows["model"] == model]
    assert len(rows) == 1, (method, protocol, rows[["model", "method", "protocol"]])
    return rows.iloc[0]


def _artifacts(study: Path) -> dict[str, dict]:
    with ResultsStore.open(study) as store:
        return {rid: json.loads(a or "{}") for rid, a in store.query("SELECT run_id, artifacts FROM runs")}


def _saved_state(study: Path, run_id: str) -> dict[str, torch.Tensor]:
    path = study / _artifacts(study)[run_id]["checkpoint"]
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _weights(state: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Conv / Linear weights (2-D or more, not a mask) of a saved state_dict."""
    return [v for k, v in state.items() if k.endswith(".weight") and v.dim() >= 2]


def test_every_kind_runs_and_reports(digits_study):
    study = digits_study.out_dir
    df = load_results(study)
    assert digits_study.counts["failed"] == 0, digits_study.failures
    assert (df["status"] == "done").all()
    kinds = set(df["kind"])
    assert kinds >= {"dense", "global-magnitude", "layerwise-magnitude", "random", "snip", "fisher", "l1",
                     "bn-scale", "random-channel", "reduced", "pfs", "pfs-trained"}
    for col in ("acc", "loss", "params", "macs", "sparsity", "base_params", "base_macs"):
        assert df[col].notna().all(), col
    assert ((df["acc"] >= 0) & (df["acc"] <= 1)).all()
    pruned = df[df["kind"] != "dense"]
    assert (pruned["params"] < pruned["base_params"]).all()
    layers = load_layers(study)
    assert set(layers["run_id"]) == set(df["run_id"])
    curves = load_curves(study)
    trained = df[~((df["kind"] == "fisher") & (df["protocol"] == "finetune"))]
    assert set(trained["run_id"]) <= set(curves["run_id"])


def test_unstructured_sparsity_is_on_target(digits_study):
    study = digits_study.out_dir
    df = load_results(study)
    for method, protocol in (("gmp-mt", "finetune"), ("gmp-gradual", None), ("gmp-iter", "finetune"),
                             ("layerwise", "finetune"), ("random", "scratch-b"), ("snip", "scratch-e")):
        row = _by(df, method, protocol)
        assert abs(row["sparsity"] - 0.75) < 0.01, (method, row["sparsity"])
        assert row["macs"] < row["base_macs"]
        # Independent of prunelab's counters: the weights saved after training are exactly zero where pruned.
        weights = _weights(_saved_state(study, row["run_id"]))
        total = sum(w.numel() for w in weights)
        zeros = sum(int((w == 0).sum()) for w in weights)
        assert total - zeros == round(0.25 * total) or method == "gmp-gradual", (method, zeros, total)
        assert abs(zeros / total - 0.75) < 0.01
    mt = _by(df, "gmp-mt")
    total = sum(w.numel() for w in _weights(_saved_state(study, mt["run_id"])))
    assert mt["sigma"] == math.floor(total * 2.0 / 100)  # MT 2% of the prunable weights (Gupta et al.)
    assert 0 <= mt["acc_dense"] <= 1 and 0 <= mt["acc_pruned"] <= 1
    # SNIP at initialisation and random retrain from scratch; Scratch-B epochs follow the capped budget.
    assert _by(df, "random", "scratch-b")["budget_factor"] == 2.0


def test_gradual_collapses_the_protocol_axis():
    spec = parse_spec(DIGITS)
    gradual = [r for r in spec.expand() if r.method == "gmp-gradual"]
    assert len(gradual) == 1 and gradual[0].protocol is None


def test_structured_runs_hit_their_targets_and_share_one_prune(digits_study):
    study = digits_study.out_dir
    df = load_results(study)
    base = int(_by(df, "dense", None, model="wrn")["params"])
    fisher = {p: _by(df, "fisher", p) for p in ("finetune", "scratch-e", "copy-profile")}
    assert fisher["finetune"]["params"] <= round(0.4 * base)
    # Scratch-E trains the same architecture, re-initialised.
    assert fisher["scratch-e"]["params"] == fisher["finetune"]["params"]
    assert fisher["scratch-e"]["macs"] == fisher["finetune"]["macs"]
    assert abs(fisher["copy-profile"]["params"] / (0.4 * base) - 1) <= 0.02
    # The stored parameter count is the checkpoint's: sum of its parameter tensors (no BN statistics).
    state = _saved_state(study, fisher["finetune"]["run_id"])
    numel = sum(v.numel() for k, v in state.items() if not k.endswith(("running_mean", "running_var",
                                                                           "num_batches_tracked")))
    assert numel == fisher["finetune"]["params"]
    assert _by(df, "l1")["params"] <= 30000
    bn = _by(df, "bn", "scratch-b")
    assert bn["macs"] <= round(0.6 * bn["base_macs"]) and bn["budget_factor"] > 1.0
    assert _by(df, "rc")["params"] <= round(0.5 * base)
    assert abs(_by(df, "reduced", None)["params"] / (0.5 * base) - 1) <= 0.1
    # One prune per (criterion, target): finetune, scratch-e and copy-profile at 0.4 share it, the
    # copied profile comes from the prune at 0.6.
    keys = [json.loads(p.read_text()) for p in (study / "artifacts").glob("*/key.json")]
    fisher_prunes = [k for k in keys if k["what"] == "structured-prune" and k["criterion"] == "fisher"]
    assert sorted(next(iter(k["target"].values())) for k in fisher_prunes) == [round(0.4 * base), round(0.6 * base)]
    assert len([k for k in keys if k["what"] == "dense"]) == 3


def test_pfs_structures_meet_the_macs_budget(digits_study):
    df = load_results(digits_study.out_dir)
    for method, protocol in (("pfs", "scratch-e"), ("pfs-trained", "scratch-b")):
        row = _by(df, method, protocol)
        assert abs(row["macs"] / (0.5 * row["base_macs"]) - 1) <= 0.05, (method, row["macs"])
        assert row["gates_selected_by"] in ("heldout", "last")
    assert _by(df, "pfs-trained", "scratch-b")["budget_factor"] > 1.5


def test_lowrank_on_fastgrnn(tmp_path, one_thread):
    spec = tmp_path / "spec.yaml"
    spec.write_text(LOWRANK)
    result = run_study(spec, tmp_path / "study", progress=False)
    assert result.counts["failed"] == 0, result.failures
    df = load_results(result.out_dir)
    row = df[df["method"] == "lowrank"].iloc[0]
    # 89 rank columns (r_W 9 + r_U 80), half of them removed: round(0.5 * 89) = 44 kept (half to even).
    assert row["rank_cell.w1"] + row["rank_cell.u1"] == 44
    assert row["rank_sparsity"] == pytest.approx(45 / 89)
    assert row["params"] < row["base_params"]


def _error(text: str) -> str:
    with pytest.raises(PrunelabError) as info:
        parse_spec(text)
    message = str(info.value)
    assert "\n" not in message
    return message


def _spec(method: str, targets: str = "[{sparsity: 0.5}]", protocols: str = "[finetune]") -> str:
    return (f"name: bad\ndata: digits\nmodels: [cnn]\nmethods:\n  - {method}\n"
            f"targets: {targets}\nprotocols: {protocols}\nseeds: [0]\n")


@pytest.mark.parametrize("method, targets, protocols, expect", [
    ("{name: g, kind: global-magnitude, mtt: 3}", "[{sparsity: 0.5}]", "[finetune]", "unknown parameter(s) ['mtt']"),
    ("{name: g, kind: global-magnitude, mt: 10, mt_percent: 1}", "[{sparsity: 0.5}]", "[finetune]", "not both"),
    ("{name: g, kind: global-magnitude, mt_percent: 150}", "[{sparsity: 0.5}]", "[finetune]", "[0, 100)"),
    ("{name: g, kind: global-magnitude, schedule: iterative}", "[{sparsity: 0.5}]", "[scratch-e]",
     "retrains a one-shot mask"),
    ("{name: g, kind: global-magnitude, schedule: sometimes}", "[{sparsity: 0.5}]", "[finetune]",
     "one of oneshot, gradual, iterative"),
    ("{name: g, kind: global-magnitude, finetune: {epochz: 3}}", "[{sparsity: 0.5}]", "[finetune]",
     "finetune: unknown training setting(s) ['epochz']"),
    ("{name: g, kind: global-magnitude, schedule: gradual, finetune: {epochs: 3}}", "[{sparsity: 0.5}]",
     "[finetune]", "'finetune' does not apply"),
    ("{name: s, kind: snip}", "[{sparsity: 0.5}]", "[finetune]", "SNIP at initialisation"),
    ("{name: f, kind: fisher, scope: everything}", "[{params_ratio: 0.5}]", "[finetune]",
     "scope must be one of internal, all"),
    ("{name: f, kind: fisher, profile_target: {sparsity: 0.5}}", "[{params_ratio: 0.5}]", "[copy-profile]",
     "profile_target must be"),
    ("{name: f, kind: fisher}", "[{sparsity: 0.5}]", "[finetune]", "cannot aim at target 'sparsity'"),
    ("{name: p, kind: pfs-trained, expansion: 2.0}", "[{macs_ratio: 0.5}]", "[scratch-b]", "expansion must be 1.0"),
    ("{name: p, kind: pfs, ratio: 0}", "[{macs_ratio: 0.5}]", "[scratch-b]", "target mean gate r"),
    ("{name: r, kind: reduced, mode: taller}", "[{params_ratio: 0.5}]", "[finetune]",
     "one of width, bottleneck, depth"),
])
def test_bad_parameters_are_one_line_errors(method, targets, protocols, expect):
    assert expect in _error(_spec(method, targets, protocols))


def test_recipes_validate_without_data():
    recipes = sorted((ROOT / "recipes").glob("*.yaml"))
    assert {p.stem for p in recipes} >= {"quickstart", "gupta_small", "gupta_full", "crowley_small", "crowley_full",
                                         "wang_small", "wang_full"}
    for path in recipes:
        runs = parse_spec(path.read_text(), source=str(path)).expand()
        assert runs, path


def test_full_recipe_without_its_data_fails_in_one_line(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: nodata\ndata: {name: cifar10, root: " + str(tmp_path / "missing") + "}\n"
                    "models: [resnet20]\nmethods: [dense]\nseeds: [0]\n")
    proc = subprocess.run([sys.executable, "-m", "prunelab", "study", "run", str(spec), "--out",
                           str(tmp_path / "out"), "--quiet"], capture_output=True, text=True, timeout=120)
    assert "CIFAR-10 not found under" in proc.stderr and proc.stderr.count("\n") == 1
    assert proc.returncode == 2 and not (tmp_path / "out").exists()  # checked before anything is written


def test_a_zoo_model_is_fitted_to_the_study_data_like_prunelab_train(tmp_path):
    """cnn is registered for 1x8x8 digits and mlp for 64 features; on 3x16x16 images a study builds them
    with 3 input channels / 768 input features (what `prunelab train` does), unless kwargs say otherwise."""
    from prunelab.models import create
    from prunelab.study import load_results, run_study

    spec = tmp_path / "spec.yaml"
    spec.write_text("""
name: fit
data: {name: synthetic, options: {shape: 3x16x16, n_train: 64, n_val: 16, n_test: 16}}
train: {epochs: 1, max_steps: 2, batch_size: 16, device: cpu}
models: [cnn, mlp]
methods: [dense]
seeds: [0]
""")
    result = run_study(spec, tmp_path / "out", progress=False)
    assert result.counts["done"] == 2, result.failures
    params = load_results(tmp_path / "out").set_index("model")["params"]
    assert params["cnn"] == sum(p.numel() for p in create("cnn", in_channels=3).parameters())
    assert params["mlp"] == sum(p.numel() for p in create("mlp", in_features=3 * 16 * 16).parameters())
