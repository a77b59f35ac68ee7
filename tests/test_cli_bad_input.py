"""Bad input on every sub-command: one stderr line naming the problem, exit status 2, no traceback,
nothing written (no output file or folder left, inputs and stores untouched).

Every case fails before any training, so the whole file runs in seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prunelab.cli import main
from prunelab.io import save_checkpoint
from prunelab.models import create, resolve
from prunelab.prune.unstructured import prune_global

HAS_PROC = sys.platform.startswith("linux") and Path("/proc/self").exists()
TRAIN = ["--epochs", "1", "--max-steps", "2"]


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> Path:
    """Input files: a checkpoint, a corrupt one, JSON posing as a checkpoint, a checkpoint whose spec
    names another architecture, broken plans and study specs."""
    d = tmp_path_factory.mktemp("fx")
    torch.manual_seed(0)
    cnn, mlp = resolve("cnn"), resolve("mlp")
    save_checkpoint(d / "cnn.pt", arch=cnn.to_dict(), state_dict=create(cnn).state_dict(),
                    meta={"input_shape": [1, 8, 8]})
    save_checkpoint(d / "mlp.pt", arch=mlp.to_dict(), state_dict=create(mlp).state_dict())
    r20 = resolve("resnet20", in_channels=1)
    save_checkpoint(d / "r20.pt", arch=r20.to_dict(), state_dict=create(r20).state_dict(),
                    meta={"input_shape": [1, 8, 8]})
    masked = create(cnn)
    prune_global(masked, 0.5)
    save_checkpoint(d / "cnn-masked.pt", arch=cnn.to_dict(), state_dict=masked.state_dict(),
                    meta={"input_shape": [1, 8, 8]})
    save_checkpoint(d / "wrongarch.pt", arch=mlp.to_dict(), state_dict=create(cnn).state_dict())
    (d / "corrupt.pt").write_bytes(os.urandom(2000))
    (d / "notckpt.json").write_text(json.dumps({"a": 1}))
    (d / "badjson.json").write_text('{"base": ')
    (d / "afile").write_text("a file, not a folder")
    (d / "bad.yaml").write_text("name: x\nmodels: [cnn\n  - : :\n")
    ok = "name: t\ndata: {name: digits}\ntrain: {epochs: 1, max_steps: 2}\nmodels: [mlp]\nmethods: [dense]\n"
    (d / "ok.yaml").write_text(ok)
    (d / "unknown_model.yaml").write_text(ok.replace("[mlp]", "[nosuch]"))
    (d / "no_cifar.yaml").write_text(ok.replace("{name: digits}", f"{{name: cifar10, root: {d / 'nocifar'}}}"))
    (d / "cifar_no_root.yaml").write_text(ok.replace("{name: digits}", "cifar10"))
    (d / "bad_data_option.yaml").write_text(ok.replace("{name: digits}", "{name: digits, options: {bogus: 1}}"))
    (d / "bad_measure.yaml").write_text(ok + "measure: {latency: true, batch_size: 8}\n")
    (d / "bad_kwargs.yaml").write_text(ok.replace("[mlp]", "[{name: mlp, kwargs: {bogus: 3}}]"))
    (d / "sparsity.yaml").write_text(ok.replace("[dense]", "[{name: g, kind: global-magnitude}]")
                                     + "targets: [{sparsity: 1.5}]\n")
    (d / "train_device.yaml").write_text(ok.replace("max_steps: 2}", "max_steps: 2, device: gpu7}"))
    (d / "train_bool.yaml").write_text(ok.replace("max_steps: 2}", "max_steps: 2, augment: 'false'}"))
    (d / "train_int.yaml").write_text(ok.replace("max_steps: 2}", "max_steps: 2.5}"))
    (d / "measure_bool.yaml").write_text(ok + "measure: {latency: maybe}\n")
    (d / "no_targets.yaml").write_text(ok.replace("[dense]", "[dense, {name: g, kind: global-magnitude}]")
                                       + "targets: [{sparsity: []}]\n")
    (d / "no_plugin.yaml").write_text(ok.replace("[dense]", "[{name: p, kind: from-plugin}]")
                                      + "plugins: [prunelab_no_such_plugin]\n")
    return d


# (argv with {fx} for the fixture folder, a word the error line must contain)
CASES = [
    # models / info
    (["models", "--family", "nosuch"], "valid choices"),
    (["info", "nosuch"], "unknown model"),
    (["info", "cnn", "--input-size", "3xfoo"], "3x32x32"),
    (["info", "cnn", "--num-classes", "0"], "num-classes"),
    (["info", "{fx}/missing.pt"], "not found"),
    (["info", "{fx}/corrupt.pt"], "corrupt"),
    (["info", "{fx}/notckpt.json"], "weights-only"),
    (["info", "{fx}/wrongarch.pt"], "does not fit architecture mlp"),
    (["info", "{fx}/cnn.pt", "--input-size", "3x32x32"], "cannot run"),
    # train
    (["train", "--model", "nosuch", "--data", "digits", "--out", "o.pt", *TRAIN], "unknown model"),
    (["train", "nosuch", "--data", "digits", "--out", "o.pt", *TRAIN], "unknown model"),
    (["train", "cnn", "--model", "mlp", "--data", "digits", "--out", "o.pt", *TRAIN], "two models"),
    (["train", "--data", "digits", "--out", "o.pt", *TRAIN], "missing MODEL"),
    (["reduce", "--data", "digits", "--target-params", "1e4", "--out", "od", *TRAIN], "missing MODEL"),
    (["pfs", "cnn", "--model", "mlp", "--data", "digits", "--target-macs-ratio", "0.5", "--out", "od", *TRAIN],
     "two models"),
    (["train", "--model", "cnn", "--data", "nosuch", "--out", "o.pt", *TRAIN], "unknown dataset"),
    (["train", "--model", "cnn", "--data", "digits", "--out", "o.pt", "--epochs", "-1"], "epochs"),
    (["train", "--model", "cnn", "--data", "digits", "--out", "o.pt", "--batch-size", "0", *TRAIN], "batch"),
    (["train", "--model", "cnn", "--data", "digits", "--out", "o.pt", "--momentum", "2", *TRAIN], "momentum"),
    (["train", "--model", "cnn", "--data", "digits", "--out", "o.pt", "--gamma", "-1", *TRAIN], "gamma"),
    (["train", "--model", "cnn", "--data", "digits", "--out", "o.pt", "--resume", *TRAIN], "--state"),
    (["train", "--model", "cnn", "--data", "digits", "--out", "o.pt", "--lr", "nan", *TRAIN], "finite"),
    (["train", "--model", "cnn", "--data", "digits", "--out", "o.pt", "--device", "tpu", *TRAIN], "device"),
    (["train", "--model", "cnn", "--data", "digits", "--out", "o.pt", "--val-fraction", "1.5", *TRAIN],
     "val_fraction"),
    (["train", "--model", "cnn", "--data", "cifar10", "--data-root", "{fx}/nowhere", "--out", "o.pt", *TRAIN],
     "not found"),
    (["train", "--model", "{fx}/corrupt.pt", "--data", "digits", "--out", "o.pt", *TRAIN], "corrupt"),
    (["train", "--model", "cnn", "--data", "digits", "--out", "{fx}/afile/o.pt", *TRAIN], "not a folder"),
    (["train", "--model", "cnn", "--data", "digits", "--out", ".", *TRAIN], "is a folder"),
    # prune, unstructured and structured
    (["prune", "cnn", "--data", "digits", "--sparsity", "1.5", "--out", "o.pt", *TRAIN], "sparsity"),
    (["prune", "cnn", "--data", "digits", "--sparsity", "-0.1", "--out", "o.pt", *TRAIN], "sparsity"),
    (["prune", "cnn", "--data", "digits", "--method", "nosuch", "--sparsity", "0.5"], "invalid choice"),
    (["prune", "cnn", "--data", "digits", "--sparsity", "0.5", "--criterion", "l1", "--out", "o.pt"],
     "--structured"),
    (["prune", "cnn", "--structured", "--data", "digits", "--sparsity", "0.5", "--target-channels", "10",
      "--out", "o.pt"], "--structured"),
    (["prune", "cnn", "--structured", "--data", "digits", "--target-channels", "10", "--data-option",
      "bogus=1", "--out", "o.pt"], "bogus"),
    (["prune", "cnn", "--structured", "--data", "digits", "--target-latency-ms", "1", "--latency-threads",
      "999", "--out", "o.pt"], "thread count"),
    (["prune", "{fx}/wrongarch.pt", "--structured", "--data", "digits", "--target-channels", "10",
      "--out", "o.pt"], "does not fit"),
    (["prune", "cnn", "--structured", "--data", "digits", "--target-channels", "10", "--out",
      "{fx}/afile/o.pt"], "not a folder"),
    # reduce / scratch / copy-profile / pfs
    (["reduce", "--model", "cnn", "--data", "digits", "--target-params", "10000", "--tol", "5", "--out", "od", *TRAIN],
     "tolerance"),
    (["reduce", "--model", "cnn", "--data", "digits", "--target-params", "1e12", "--out", "od", *TRAIN], "unreachable"),
    (["reduce", "--model", "cnn", "--data", "digits", "--multiplier", "0", "--out", "od", *TRAIN], "positive"),
    (["reduce", "--model", "cnn", "--data", "digits", "--target-params", "1e4", "--out", "{fx}/afile", *TRAIN],
     "not a folder"),
    (["scratch", "{fx}/cnn.pt", "--base", "mlp", "--data", "digits", "--out", "od", *TRAIN], "mlp network"),
    (["scratch", "{fx}/badjson.json", "--data", "digits", "--out", "od", *TRAIN], "not valid JSON"),
    (["copy-profile", "{fx}/cnn.pt", "--base", "cnn", "--alpha", "0", "--data", "digits", "--out", "od", *TRAIN],
     "alpha"),
    (["copy-profile", "{fx}/cnn.pt", "--alpha", "0.5", "--target-params", "1000", "--data", "digits", "--out", "od"],
     "exactly one"),
    (["copy-profile", "{fx}/cnn.pt", "--base", "cnn", "--alpha", "1e6", "--data", "digits", "--out", "od", *TRAIN],
     "at most"),
    (["pfs", "--model", "cnn", "--data", "digits", "--target-macs-ratio", "1.5", "--out", "od", *TRAIN], "MACs ratio"),
    (["pfs", "cnn", "--data", "digits", "--target-macs-ratio", "0.5", "--init-from", "{fx}/cnn.pt", "--expansion",
      "1.5", "--out", "od", *TRAIN], "does not apply with --init-from"),
    (["pfs", "{fx}/cnn.pt", "--data", "digits", "--target-macs-ratio", "0.5", "--out", "od", *TRAIN],
     "with --init-from"),
    (["pfs", "resnet32", "--data", "digits", "--target-macs-ratio", "0.5", "--init-from", "{fx}/r20.pt", "--out", "od",
      *TRAIN], "is not the resnet_cifar model asked for"),
    (["scratch", "{fx}/cnn.pt", "--budget", "E", "--data", "digits", "--out", "od", "--max-steps", "2"],
     "give --epochs"),
    (["pfs", "--model", "cnn", "--data", "digits", "--target-macs-ratio", "0.5", "--init-from", "{fx}/mlp.pt",
      "--out", "od", *TRAIN], "mlp network"),
    # bench / export
    (["bench", "cnn", "--threads", "999"], "thread count"),
    (["bench", "cnn", "--out", "results/"], "names a folder"),
    (["prune", "cnn", "--structured", "--data", "digits", "--target-params", "10000", "--round-to", "0",
      "--out", "o.pt"], "round-to must be a whole number of channels >= 1"),
    (["prune", "cnn", "--structured", "--data", "digits", "--target-params", "0", "--out", "o.pt"], ">= 1"),
    (["export", "{fx}/cnn.pt", "--format", "onnx", "--out", "o.onnx", "--policy", "dense"], "--format sparse only"),
    (["export", "{fx}/cnn.pt", "--format", "sparse", "--out", "o.pt", "--static-batch"], "--format onnx only"),
    (["prune", "{fx}/cnn.pt", "--data", "digits", "--sparsity", "0.5", "--criterion", "fisher", "--out", "o.pt"],
     "structured pruning only"),
    (["prune", "{fx}/cnn.pt", "--data", "digits", "--sparsity", "0.5", "--channels-per-prune", "1", "--out", "o.pt"],
     "structured pruning only"),
    (["prune", "{fx}/cnn.pt", "--data", "digits", "--sparsity", "0.5", "--rounds", "3", "--out", "o.pt"],
     "--prune-schedule iterative only"),
    (["prune", "{fx}/cnn.pt", "--data", "digits", "--sparsity", "0.5", "--prune-every", "10", "--out", "o.pt"],
     "--prune-schedule gradual only"),
    (["bench", "cnn", "--batch-sizes", "0"], "batch size"),
    (["bench", "cnn", "--backend", "nosuch"], "valid choices"),
    (["bench", "cnn", "--input-size", "3xfoo"], "3x32x32"),
    (["bench", "cnn", "--min-time", "nan"], "not a finite number"),
    (["bench", "cnn", "--out", "{fx}/afile/b.json"], "not a folder"),
    (["export", "cnn", "--format", "onnx", "--out", "o.onnx", "--opset", "5"], "opset"),
    (["export", "cnn", "--format", "onnx", "--out", "o.onnx", "--opset", "0"], "opset"),
    (["export", "{fx}/notckpt.json", "--format", "onnx", "--out", "o.onnx"], "weights-only"),
    (["export", "{fx}/cnn-masked.pt", "--format", "sparse", "--policy", "dense", "--input-size", "3x32x32",
      "--out", "s.pt"], "cannot run"),
    (["export", "{fx}/cnn.pt", "--format", "sparse", "--out", "s.pt"], "no pruned"),
    (["export", "cnn", "--format", "sparse", "--policy", "nosuch", "--out", "s.pt"], "valid choices"),
    # study / results / report
    (["study", "validate", "{fx}/bad.yaml"], "malformed YAML"),
    (["study", "validate", "{fx}/missing.yaml"], "not found"),
    (["study", "validate", "{fx}/unknown_model.yaml"], "unknown model"),
    (["study", "validate", "{fx}/bad_measure.yaml"], "measure key"),
    (["study", "validate", "{fx}/bad_kwargs.yaml"], "bogus"),
    (["study", "validate", "{fx}/sparsity.yaml"], "sparsity"),
    (["study", "validate", "{fx}/no_cifar.yaml"], "does not exist on this machine"),
    (["study", "validate", "{fx}/cifar_no_root.yaml"], "read from disk"),
    (["study", "validate", "{fx}/bad_data_option.yaml"], "unknown option 'bogus'"),
    (["study", "validate", "{fx}/train_device.yaml"], "train_device.yaml:3: unknown device 'gpu7'"),
    (["study", "validate", "{fx}/train_bool.yaml"], "training setting 'augment' must be true or false"),
    (["study", "validate", "{fx}/train_int.yaml"], "training setting 'max_steps' must be an integer or null"),
    (["study", "validate", "{fx}/measure_bool.yaml"], "measure latency must be true or false"),
    (["study", "validate", "{fx}/no_targets.yaml"], "no_targets.yaml:6: method 'g' expands to no runs"),
    (["study", "validate", "{fx}/no_plugin.yaml"], "plugin module 'prunelab_no_such_plugin' cannot be imported"),
    (["study", "run", "{fx}/train_device.yaml", "--out", "st", "--quiet"], "unknown device 'gpu7'"),
    (["study", "run", "{fx}/bad.yaml", "--out", "st", "--quiet"], "malformed YAML"),
    (["study", "run", "{fx}/ok.yaml", "--out", "st", "--threads", "0", "--quiet"], "thread count"),
    (["study", "run", "{fx}/ok.yaml", "--out", "st", "--workers", "0", "--quiet"], "workers"),
    (["study", "run", "{fx}/ok.yaml", "--out", "st", "--executor", "torchrun", "--nproc-per-node", "0", "--quiet"],
     "nproc-per-node"),
    (["study", "status", "{fx}/nowhere"], "no study"),
    (["results", "{fx}/corrupt.pt"], "not a prunelab store"),
    (["report", "{fx}/nowhere", "--out", "rep"], "no study"),
]

PROC_CASES = [
    (["train", "--model", "cnn", "--data", "digits", "--out", "/proc/x/out.pt", *TRAIN], "cannot write"),
    (["train", "--model", "cnn", "--data", "digits", "--out", "o.pt", "--state", "/proc/x/s.pt", *TRAIN],
     "cannot write"),
    (["export", "cnn", "--format", "onnx", "--out", "/proc/x/o.onnx"], "cannot write"),
    (["study", "run", "{fx}/ok.yaml", "--out", "/proc/x/st", "--quiet"], "cannot write"),
]


def _listing(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*")}


def _run(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    return code, capsys.readouterr().err


def _check(argv, word, fx, tmp_path, monkeypatch, capsys):
    argv = [a.replace("{fx}", str(fx)) for a in argv]
    monkeypatch.chdir(tmp_path)
    inputs = _listing(fx)
    code, err = _run(argv, capsys)
    assert code == 2, (argv, err)
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert word in lines[0], lines[0]
    assert list(tmp_path.iterdir()) == [], "bad input left files behind"
    assert _listing(fx) == inputs, "bad input changed the input folder"


@pytest.mark.parametrize(("argv", "word"), CASES, ids=lambda v: " ".join(v)[:70] if isinstance(v, list) else None)
def test_bad_input_is_one_line_exit_2_nothing_written(argv, word, fx, tmp_path, monkeypatch, capsys):
    _check(argv, word, fx, tmp_path, monkeypatch, capsys)


@pytest.mark.skipif(not HAS_PROC, reason="needs Linux /proc (a folder no one can create files in)")
@pytest.mark.parametrize(("argv", "word"), PROC_CASES, ids=lambda v: " ".join(v)[:70] if isinstance(v, list) else None)
def test_unwritable_output_is_refused_before_any_work(argv, word, fx, tmp_path, monkeypatch, capsys):
    _check(argv, word, fx, tmp_path, monkeypatch, capsys)


def test_bad_input_leaves_an_existing_study_store_untouched(fx, tmp_path, monkeypatch, capsys):
    from prunelab.study.runner import prepare_study

    _, out_dir, store = prepare_study(fx / "ok.yaml", tmp_path / "st")
    store.close()
    before = {p: p.read_bytes() for p in out_dir.rglob("*") if p.is_file()}
    monkeypatch.chdir(tmp_path)
    for argv in (["study", "run", str(fx / "ok.yaml"), "--out", "st", "--threads", "0", "--quiet"],
                 ["study", "run", str(fx / "unknown_model.yaml"), "--out", "st", "--quiet"],
                 ["results", "st", "--output", "st/results.db/table.csv", "--csv"],
                 ["report", "st", "--out", "st/results.db"]):
        code, err = _run(argv, capsys)
        assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, (argv, err)
    after = {p: p.read_bytes() for p in out_dir.rglob("*") if p.is_file()}
    assert after == before


@pytest.mark.parametrize("argv", [
    ["info", "{fx}/corrupt.pt"],
    ["export", "cnn", "--format", "onnx", "--out", "o.onnx", "--opset", "999"],
])
def test_bad_input_in_a_real_process(argv, fx, tmp_path):
    """The installed entry point, in its own process: stderr is one line, stdout stays empty."""
    argv = [a.replace("{fx}", str(fx)) for a in argv]
    code = "import sys; from prunelab.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, *argv], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_a_closed_pipe_ends_quietly(monkeypatch, capsys):
    """`prunelab models | head -1`: the reader goes away; no traceback, the SIGPIPE exit status."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    with open(write_end, "w", buffering=1) as broken:
        monkeypatch.setattr(sys, "stdout", broken)
        code = main(["models"])
    assert code == 141
    assert "Traceback" not in capsys.readouterr().err
