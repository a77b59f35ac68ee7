"""``prunelab prune`` (unstructured): end to end on the embedded digits data, and bad input."""

from __future__ import annotations

import json

import pytest
import torch

from prunelab.checkpoint import load_model
from prunelab.cli import main
from prunelab.io import save_checkpoint
from prunelab.models import create, resolve
from prunelab.prune.unstructured import get_mask, kept_count

torch.set_num_threads(1)

FAST = ["--data", "digits", "--epochs", "1", "--max-steps", "4", "--batch-size", "64", "--lr", "0.05",
        "--device", "cpu"]


def test_oneshot_global_writes_checkpoint_and_summary(tmp_path, capsys):
    out = tmp_path / "pruned.pt"
    rc = main(["prune", "mlp", *FAST, "--sparsity", "0.8", "--pretrain-epochs", "1", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "total (selected)" in text and "FLOPs pruned" in text and "accuracy: before" in text
    summary = json.loads(out.with_suffix(".json").read_text())
    total = summary["report"]["total"]
    assert summary["report"]["kept"] == kept_count(total, 0.8)
    assert set(summary["accuracy"]) == {"before", "pruned", "after"}
    assert summary["macs_dense"] > summary["macs_sparse"] > 0 and 0 < summary["flops_pruned"] < 1
    model = load_model(out).model
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert sum(int(get_mask(m).sum()) for m in layers) == kept_count(total, 0.8)
    assert all(torch.all(m.weight[~get_mask(m)] == 0) for m in layers)


def test_gradual_with_mt_prints_json(capsys):
    rc = main(["prune", "mlp", *FAST[:2], "--epochs", "3", "--batch-size", "128", "--device", "cpu",
               "--sparsity", "0.9", "--mt-percent", "1", "--prune-schedule", "gradual", "--prune-end", "1", "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert [u["time"] for u in summary["gradual"]["updates"]] == [0, 1]
    report = summary["report"]
    assert report["sigma"] == int(report["total"] * 0.01)
    assert report["kept"] == kept_count(report["total"], 0.9)
    assert all(layer["kept"] >= report["sigma"] for layer in report["layers"])


def test_oneshot_from_checkpoint_with_uniform_and_layer_options(tmp_path, capsys):
    src = tmp_path / "dense.pt"
    model = create("cnn")
    save_checkpoint(src, arch=resolve("cnn").to_dict(), state_dict=model.state_dict())
    rc = main(["prune", str(src), *FAST, "--method", "uniform", "--sparsity", "0.5", "--keep-first-dense",
               "--exclude", "classifier*", "--epochs", "0", "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["pretrain_epochs"] == 0  # checkpoints are never pretrained
    layers = {x["name"]: x for x in summary["report"]["layers"]}
    assert not layers["features.0.conv"]["pruned"] and layers["features.0.conv"]["sparsity"] == 0
    pruned = [x for x in layers.values() if x["pruned"]]
    assert pruned and all(x["kept"] == kept_count(x["numel"], 0.5) for x in pruned)


@pytest.mark.parametrize(("extra", "message"), [
    (["--sparsity", "1.0"], "sparsity must be in [0, 1)"),
    (["--sparsity", "-0.2"], "sparsity must be in [0, 1)"),
    (["--sparsity", "0.99", "--mt", "5000"], "minimum threshold"),
    (["--sparsity", "0.5", "--exclude", "nothing.here"], "matches no"),
    (["--sparsity", "0.5", "--include", "layer9*"], "matches no"),
    (["--method", "layerwise", "--layer-sparsity", "hidden.0.fc"], "NAME=VALUE"),
    (["--method", "uniform", "--sparsity", "0.5", "--mt", "10"], "minimum threshold applies to global"),
    (["--sparsity", "0.5", "--rewind-epoch", "1"], "iterative"),
])
def test_bad_input_exits_2_without_writing(tmp_path, capsys, extra, message):
    out = tmp_path / "x.pt"
    rc = main(["prune", "mlp", *FAST, "--pretrain-epochs", "0", "--out", str(out), *extra])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_of_another_architecture_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    save_checkpoint(bad, arch=resolve("cnn").to_dict(), state_dict=create("mlp").state_dict())
    out = tmp_path / "x.pt"
    rc = main(["prune", str(bad), *FAST, "--sparsity", "0.5", "--out", str(out)])
    assert rc == 2
    assert "does not fit" in capsys.readouterr().err
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_model_that_does_not_fit_the_data_exits_2(tmp_path, capsys):
    out = tmp_path / "x.pt"
    rc = main(["prune", "fastgrnn", *FAST, "--sparsity", "0.5", "--out", str(out)])
    assert rc == 2
    assert "does not accept digits inputs" in capsys.readouterr().err
    three = tmp_path / "three.pt"
    spec = resolve("mlp", num_classes=3)
    save_checkpoint(three, arch=spec.to_dict(), state_dict=create(spec).state_dict())
    rc = main(["prune", str(three), *FAST, "--sparsity", "0.5", "--out", str(out)])
    assert rc == 2
    assert "has 10 classes" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["three.pt"]
