"""``prunelab prune`` and the study kinds run one pipeline: the same settings and seed give the same model.

Every pruning method runs twice: from the command line (``prunelab prune``, in process) and as a run
of a study with the same training recipe, target and seed. The saved checkpoints must hold equal
tensors (weights, masks, BatchNorm statistics; the compressed architecture for channel pruning) and
the reported numbers must agree (accuracies before and after pruning and after fine-tuning, sparsity,
sizes). Each study run shares the study's cached dense model, which the command line trains itself,
so this also checks that both paths train the dense model alike.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import torch

from prunelab.cli import main
from prunelab.study import run_study

# ---------------------------------------------------------------------------------------- unstructured

UNSTRUCTURED_TRAIN = "{epochs: 1, batch_size: 64, lr: 0.05, schedule: cosine, device: cpu, max_steps: 4}"
UNSTRUCTURED_CLI = ["--data", "digits", "--epochs", "1", "--batch-size", "64", "--lr", "0.05", "--schedule",
                    "cosine", "--device", "cpu", "--max-steps", "4", "--seed", "0", "--quiet"]

#: (name, prunelab prune flags, study method entry, target, protocol)
UNSTRUCTURED = [
    ("global", ["--method", "global", "--sparsity", "0.5"], "{kind: global-magnitude}", "{sparsity: 0.5}", None),
    ("global-mt", ["--method", "global", "--sparsity", "0.8", "--mt-percent", "2"],
     "{kind: global-magnitude, mt_percent: 2.0}", "{sparsity: 0.8}", None),
    ("uniform", ["--method", "uniform", "--sparsity", "0.5"], "{kind: layerwise-magnitude}", "{sparsity: 0.5}",
     None),
    ("layerwise", ["--method", "layerwise", "--sparsity", "0.5", "--layer-sparsity", "features.3.*=0.8"],
     "{kind: layerwise-magnitude, layer_sparsity: {'features.3.*': 0.8}}", "{sparsity: 0.5}", None),
    ("random", ["--method", "random", "--sparsity", "0.6"], "{kind: random}", "{sparsity: 0.6}", None),
    ("random-uniform", ["--method", "random-uniform", "--sparsity", "0.6"], "{kind: random, uniform: true}",
     "{sparsity: 0.6}", None),
    ("snip-trained", ["--method", "snip", "--sparsity", "0.5", "--snip-batch", "48", "--pretrain-epochs", "1"],
     "{kind: snip, at: trained, batch_size: 48}", "{sparsity: 0.5}", None),
    ("snip-default-batch", ["--method", "snip", "--sparsity", "0.5", "--pretrain-epochs", "1"],
     "{kind: snip, at: trained}", "{sparsity: 0.5}", None),  # both score one training batch (64) by default
    ("snip-init", ["--method", "snip", "--sparsity", "0.5", "--snip-batch", "48"],
     "{kind: snip, batch_size: 48}", "{sparsity: 0.5}", "scratch-e"),
    ("gradual", ["--method", "global", "--sparsity", "0.6", "--prune-schedule", "gradual", "--prune-unit", "step",
                 "--prune-end", "3"],
     "{kind: global-magnitude, schedule: gradual, gradual: {unit: step, end: 3}}", "{sparsity: 0.6}", None),
    ("iterative", ["--method", "global", "--sparsity", "0.7", "--prune-schedule", "iterative", "--rounds", "2"],
     "{kind: global-magnitude, schedule: iterative, rounds: 2}", "{sparsity: 0.7}", None),
]

# ---------------------------------------------------------------------------------------- structured

# The study fine-tunes at its own default (pytorch-prunes' constant 8e-4) unless told: here it is told
# the recipe the command line uses for both phases.
STRUCTURED_TRAIN = "{epochs: 1, batch_size: 64, lr: 0.05, schedule: constant, device: cpu}"
STRUCTURED_FINETUNE = "finetune: {lr: 0.05, schedule: constant}"
STRUCTURED_CLI = ["--data", "digits", "--epochs", "1", "--batch-size", "64", "--lr", "0.05", "--schedule",
                  "constant", "--device", "cpu", "--seed", "0", "--quiet", "--structured"]
ITER = ["--prune-every", "1", "--channels-per-prune", "16"]
ITER_YAML = "prune_every: 1, channels_per_prune: 16"

STRUCTURED = [
    ("fisher", ["--criterion", "fisher", *ITER, "--target-params", "12000"],
     f"{{kind: fisher, {ITER_YAML}, {STRUCTURED_FINETUNE}}}", "{params: 12000}"),
    ("l1-oneshot", ["--criterion", "l1", "--oneshot", "--target-macs", "400000"],
     f"{{kind: l1, schedule: oneshot, {STRUCTURED_FINETUNE}}}", "{macs: 400000}"),
    ("l1-signed", ["--criterion", "l1-signed", *ITER, "--target-params", "12000"],
     f"{{kind: l1, signed: true, {ITER_YAML}, {STRUCTURED_FINETUNE}}}", "{params: 12000}"),
    ("bn", ["--criterion", "bn", *ITER, "--target-params", "12000"],
     f"{{kind: bn-scale, {ITER_YAML}, {STRUCTURED_FINETUNE}}}", "{params: 12000}"),
    ("random-channel", ["--criterion", "random", *ITER, "--target-params", "12000"],
     f"{{kind: random-channel, {ITER_YAML}, {STRUCTURED_FINETUNE}}}", "{params: 12000}"),
    ("taylor", ["--criterion", "taylor", *ITER, "--target-params", "12000"],
     f"{{kind: structured, criterion: taylor, {ITER_YAML}, {STRUCTURED_FINETUNE}}}", "{params: 12000}"),
    ("apoz-oneshot", ["--criterion", "apoz", "--oneshot", "--prune-every", "2", "--target-params", "12000"],
     f"{{kind: structured, criterion: apoz, schedule: oneshot, prune_every: 2, {STRUCTURED_FINETUNE}}}",
     "{params: 12000}"),
    ("l1-normalized", ["--criterion", "l1-normalized", *ITER, "--target-params", "12000"],
     f"{{kind: structured, criterion: l1-normalized, {ITER_YAML}, {STRUCTURED_FINETUNE}}}", "{params: 12000}"),
]

LOWRANK_TRAIN = "{epochs: 1, batch_size: 64, optimizer: adam, lr: 0.01, device: cpu, max_steps: 3}"
LOWRANK_CLI = ["--data", "mnist1d", "--data-option", "layout=time", "--epochs", "1", "--batch-size", "64",
               "--optimizer", "adam", "--lr", "0.01", "--device", "cpu", "--max-steps", "3", "--seed", "0", "--quiet",
               "--method", "lowrank", "--sparsity", "0.5"]


def _spec(name: str, data: str, train: str, model: str, methods: list[tuple[str, str, str, str | None]]) -> str:
    lines = [f"name: {name}", f"data: {data}", f"train: {train}", f"models: [{model}]", "methods:"]
    for method, entry, target, protocol in methods:
        body = entry.strip()[1:-1]
        extra = f", protocols: [{protocol}]" if protocol else ""
        lines.append(f"  - {{name: {method}, {body}, targets: [{target}]{extra}}}")
    lines += ["protocols: [finetune]", "seeds: [0]"]
    return "\n".join(lines) + "\n"


def _runs(study: Path) -> dict[str, tuple[dict, dict]]:
    with sqlite3.connect(study / "results.db") as c:
        rows = c.execute("SELECT method, status, metrics, artifacts, error FROM runs").fetchall()
    out = {}
    for method, status, metrics, artifacts, error in rows:
        assert status == "done", (method, error)
        out[method] = (json.loads(metrics), json.loads(artifacts))
    return out


@pytest.fixture(scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _study(tmp: Path, text: str) -> tuple[Path, dict]:
    spec = tmp / "spec.yaml"
    spec.write_text(text)
    run_study(spec, tmp / "study", progress=False)
    return tmp / "study", _runs(tmp / "study")


@pytest.fixture(scope="module")
def unstructured_study(tmp_path_factory, one_thread):
    text = _spec("eq-unstructured", "{name: digits}", UNSTRUCTURED_TRAIN, "cnn",
                 [(n, e, t, p) for n, _, e, t, p in UNSTRUCTURED])
    return _study(tmp_path_factory.mktemp("unstructured"), text)


@pytest.fixture(scope="module")
def structured_study(tmp_path_factory, one_thread):
    text = _spec("eq-structured", "{name: digits}", STRUCTURED_TRAIN, "cnn",
                 [(n, e, t, None) for n, _, e, t in STRUCTURED])
    return _study(tmp_path_factory.mktemp("structured"), text)


def _cli(tmp: Path, name: str, model: str, argv: list[str]) -> tuple[dict, dict]:
    out = tmp / f"{name}.pt"
    assert main(["prune", model, *argv, "--out", str(out)]) == 0
    return torch.load(out, map_location="cpu", weights_only=True), json.loads(out.with_suffix(".json").read_text())


def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("name,flags,entry,target,protocol", UNSTRUCTURED, ids=[c[0] for c in UNSTRUCTURED])
def test_unstructured_cli_equals_study(unstructured_study, tmp_path, name, flags, entry, target, protocol):
    study, runs = unstructured_study
    saved, summary = _cli(tmp_path, name, "cnn", [*UNSTRUCTURED_CLI, *flags])
    metrics, artifacts = runs[name]
    stored = torch.load(study / artifacts["checkpoint"], map_location="cpu", weights_only=True)
    _assert_same_state(saved["state_dict"], stored["state_dict"])
    assert any(k.endswith("_mask") for k in saved["state_dict"])  # the masks themselves are compared
    acc = summary["accuracy"]
    assert acc["after"] == metrics["acc"]
    if protocol is None and name != "gradual":
        assert acc["pruned"] == metrics["acc_pruned"]
        assert summary["sparsity"] == metrics["prune_sparsity"]
        assert summary["flops_pruned"] == metrics["flops_pruned"]
    if summary["pretrain_epochs"] > 0:
        assert acc["before"] == metrics["acc_dense"]


def test_random_prunes_the_trained_model(unstructured_study, tmp_path):
    """``prunelab prune --method random`` ranks nothing, but prunes the trained dense model (as the
    study's ``random`` does), not an untrained one."""
    _, summary = _cli(tmp_path, "random", "cnn", [*UNSTRUCTURED_CLI, "--method", "random", "--sparsity", "0.6"])
    assert summary["pretrain_epochs"] == 1


@pytest.mark.parametrize("name,flags,entry,target", STRUCTURED, ids=[c[0] for c in STRUCTURED])
def test_structured_cli_equals_study(structured_study, tmp_path, name, flags, entry, target):
    study, runs = structured_study
    saved, summary = _cli(tmp_path, name, "cnn", [*STRUCTURED_CLI, *flags])
    metrics, artifacts = runs[name]
    stored = torch.load(study / artifacts["checkpoint"], map_location="cpu", weights_only=True)
    _assert_same_state(saved["state_dict"], stored["state_dict"])
    assert saved["plan"]["groups"] == stored["plan"]["groups"]  # the same channels kept, group by group
    assert summary["target"]["reached"]
    acc = summary["accuracy"]
    assert acc["after"] == metrics["acc"]
    assert acc["before"] == metrics["acc_dense"]
    if "pruned" in acc:
        assert acc["pruned"] == metrics["acc_pruned"]
    assert summary["params"]["after"] == metrics["params"]
    assert summary["macs"]["after"] == metrics["macs"]
    assert summary["channels"]["after"] == metrics["channels_after"]


def test_lowrank_cli_equals_study(tmp_path, one_thread):
    text = _spec("eq-lowrank", "{name: mnist1d, options: {layout: time}}", LOWRANK_TRAIN, "fastgrnn",
                 [("lowrank", "{kind: lowrank}", "{sparsity: 0.5}", None)])
    study, runs = _study(tmp_path, text)
    saved, summary = _cli(tmp_path, "lowrank", "fastgrnn", LOWRANK_CLI)
    metrics, artifacts = runs["lowrank"]
    stored = torch.load(study / artifacts["checkpoint"], map_location="cpu", weights_only=True)
    _assert_same_state(saved["state_dict"], stored["state_dict"])
    assert summary["accuracy"]["after"] == metrics["acc"]
    assert summary["accuracy"]["pruned"] == metrics["acc_pruned"]
    assert summary["accuracy"]["before"] == metrics["acc_dense"]


def test_ratio_target_in_prune_equals_the_study(structured_study, tmp_path):
    """``--target-params-ratio`` is the study's ``params_ratio``: a fraction of the unpruned model's
    parameters, counted the same way (the fisher run above aims at 12,000 of cnn's 24,170)."""
    from prunelab.measure import count_params
    from prunelab.models import create, resolve

    ratio = 12000 / count_params(create(resolve("cnn"))).params
    study, runs = structured_study
    saved, summary = _cli(tmp_path, "fisher-ratio", "cnn", [*STRUCTURED_CLI, "--criterion", "fisher", *ITER,
                                                           "--target-params-ratio", repr(ratio)])
    assert summary["target"]["value"] == 12000
    stored = torch.load(study / runs["fisher"][1]["checkpoint"], map_location="cpu", weights_only=True)
    _assert_same_state(saved["state_dict"], stored["state_dict"])
