"""Experiment trackers: TensorBoard event files and an MLflow file store, written and read back with the
tools' own readers (EventAccumulator, MlflowClient)."""

from __future__ import annotations

import json
import os
import sys

import pytest

from prunelab.cli import main
from prunelab.errors import MissingExtra
from prunelab.track import flatten, log_run, open_tracker, trajectory

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")

CURVE = [{"epoch": 1, "step": 4, "lr": 0.1, "train_loss": 2.0, "train_acc": 0.3, "val_acc": None, "test_acc": 0.35,
          "phase": "pruning", "time": 1.0},
         {"epoch": 2, "step": 8, "lr": 0.05, "train_loss": 1.5, "train_acc": 0.5, "val_acc": 0.4, "test_acc": 0.45,
          "phase": "finetune", "time": 2.0}]
METRICS = {"acc": 0.45, "acc_dense": 0.6, "acc_pruned": 0.2, "params": 1000, "base_params": 5000, "macs": 9000,
           "base_macs": 40000, "sparsity": 0.8, "note": "text is not a metric"}
CONFIG = {"model": "cnn", "train": {"lr": 0.1, "milestones": [0.5, 0.75]}, "target": {"sparsity": 0.8}, "x": None}


def scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}, acc


def test_the_trajectory_runs_dense_pruned_trained_and_configs_flatten():
    assert trajectory(METRICS) == [{"params": 5000, "macs": 40000, "acc": 0.6}, {"params": 1000, "macs": 9000,
                                   "acc": 0.2}, {"params": 1000, "macs": 9000, "acc": 0.45}]
    assert trajectory({"acc": 0.9, "params": 10, "macs": 20, "base_params": 10, "base_macs": 20}) == \
        [{"params": 10, "macs": 20, "acc": 0.9}]
    assert flatten(CONFIG) == {"model": "cnn", "train.lr": 0.1, "train.milestones": "[0.5, 0.75]",
                               "target.sparsity": 0.8, "x": None}


def test_tensorboard_event_files_hold_the_curve_trajectory_final_metrics_and_config(tmp_path):
    tracker = open_tracker("tensorboard", tmp_path / "tb")
    log_run(tracker, "cnn/gmp 0.8", CONFIG, CURVE, METRICS)
    tracker.close()
    (run,) = list((tmp_path / "tb").iterdir())
    assert run.name == "cnn_gmp_0.8"
    got, acc = scalars(run)
    assert got["curve/train_loss"] == [(1, 2.0), (2, 1.5)] and got["curve/val_acc"] == [(2, pytest.approx(0.4))]
    assert got["prune/params"] == [(0, 5000), (1, 1000), (2, 1000)]
    assert [v for _, v in got["prune/acc"]] == pytest.approx([0.6, 0.2, 0.45])
    assert got["final/acc"] == [(0, pytest.approx(0.45))] and "final/note" not in got
    assert "curve/phase" not in got and "curve/time" not in got
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"train.lr": 0.1' in text


def test_an_mlflow_file_store_holds_params_metric_histories_and_replaces_a_run_logged_again(tmp_path):
    from mlflow.tracking import MlflowClient

    for _ in range(2):
        tracker = open_tracker("mlflow", tmp_path / "ml", experiment="study-a")
        log_run(tracker, "run-1", CONFIG, CURVE, METRICS, tags={"prunelab.run_id": "abc"})
        tracker.close()
    client = MlflowClient(tracking_uri=(tmp_path / "ml").as_uri())
    exp = client.get_experiment_by_name("study-a")
    (run,) = client.search_runs([exp.experiment_id])  # the second export replaced the first
    assert run.data.params["train.lr"] == "0.1" and run.data.params["target.sparsity"] == "0.8"
    assert run.data.tags["prunelab.run_id"] == "abc" and run.info.status == "FINISHED"
    hist = client.get_metric_history(run.info.run_id, "curve/test_acc")
    assert [(m.step, m.value) for m in hist] == [(1, 0.35), (2, 0.45)]
    assert [m.value for m in client.get_metric_history(run.info.run_id, "prune/macs")] == [40000, 9000, 9000]
    assert run.data.metrics["final/sparsity"] == 0.8


STUDY = """name: tracked
data: {name: synthetic}
models: [m]
methods: [{name: quick, kind: noop, epochs: 3}]
targets: [{sparsity: [0.5, 0.9]}]
seeds: 1
"""


def test_a_study_logs_its_runs_and_results_exports_an_existing_store(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    spec = tmp_path / "s.yaml"
    spec.write_text(STUDY + "tracker: {name: tensorboard, dir: " + str(tmp_path / "tb") + "}\n")
    assert main(["study", "run", str(spec), "--out", str(tmp_path / "st"), "--quiet"]) == 0, capsys.readouterr().err
    assert "tracker: 2 runs in" in capsys.readouterr().out
    runs = sorted((tmp_path / "tb").iterdir())
    assert len(runs) == 2
    store_rows = json.loads(_results_json(tmp_path / "st", capsys))
    got, _ = scalars(runs[0])
    first = next(r for r in store_rows if runs[0].name.endswith(r["run_id"][:8]))
    assert got["final/acc"][0][1] == pytest.approx(first["acc"])
    assert len(got["curve/loss"]) == 3
    # an existing store, exported to MLflow
    assert main(["results", str(tmp_path / "st"), "--to", "mlflow"]) == 0
    folder = tmp_path / "st" / "tracking" / "mlflow"
    client = MlflowClient(tracking_uri=folder.as_uri())
    found = client.search_runs([client.get_experiment_by_name("tracked").experiment_id])
    assert sorted(r.data.tags["prunelab.run_id"] for r in found) == sorted(r["run_id"] for r in store_rows)
    assert {r.data.params["target.sparsity"] for r in found} == {"0.5", "0.9"}


def _results_json(study, capsys) -> str:
    capsys.readouterr()
    assert main(["results", str(study), "--json"]) == 0
    return capsys.readouterr().out


def test_training_from_the_cli_logs_its_curve_and_a_missing_extra_is_one_line(tmp_path, capsys, monkeypatch):
    out = tmp_path / "m.pt"
    args = ["train", "cnn", "--data", "synthetic", "--data-option", "shape=1x8x8", "--data-option", "n_train=128",
            "--data-option", "n_test=32", "--epochs", "2", "--device", "cpu", "--json", "--out", str(out)]
    assert main([*args, "--tracker", "tensorboard", "--tracker-dir", str(tmp_path / "tb")]) == 0
    summary = json.loads(capsys.readouterr().out)
    got, _ = scalars(tmp_path / "tb" / "m")
    assert [v for _, v in got["curve/train_loss"]] == pytest.approx([r["train_loss"] for r in summary["history"]])
    assert got["final/acc"][0][1] == pytest.approx(summary["test_acc"])
    assert got["prune/params"] == [(0, summary["params"])]
    # a tracker whose extra is missing: one line naming the extra, exit 2, nothing written
    monkeypatch.setitem(sys.modules, "mlflow", None)
    other = tmp_path / "n.pt"
    assert main([*args[:-1], str(other), "--tracker", "mlflow", "--tracker-dir", str(tmp_path / "ml")]) == 2
    err = capsys.readouterr().err
    assert err == "prunelab train: error: --tracker mlflow needs mlflow: pip install 'prunelab[mlflow]'\n"
    assert not other.exists() and not (tmp_path / "ml").exists()
    with pytest.raises(MissingExtra):
        open_tracker("mlflow", tmp_path / "ml")
    assert main([*args, "--tracker", "wandb"]) == 2
    assert "unknown tracker 'wandb'; valid choices: mlflow, tensorboard" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["m.pt", "tb"]
