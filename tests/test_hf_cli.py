"""``prunelab info|prune|bench|export --hf FOLDER`` and ``--data tokens --data-path FILE``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from prunelab.cli import main
from prunelab.models.inputs import run_logits

transformers = pytest.importorskip("transformers")
from hf_tiny import tiny  # noqa: E402
from prunelab.export.hf import load_hf  # noqa: E402
from prunelab.models.hf import MASKS_FILE, load_folder  # noqa: E402

torch.set_num_threads(1)
AUTO = {"bert": "AutoModelForSequenceClassification", "vit": "AutoModelForImageClassification",
        "gpt2": "AutoModelForCausalLM"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hfcli")
    out = {}
    for kind in AUTO:
        model, _ = tiny(kind)
        model.save_pretrained(root / kind)
        out[kind] = root / kind
    return out


@pytest.fixture(scope="module")
def token_file(tmp_path_factory):
    gen = torch.Generator().manual_seed(0)
    seq = torch.stack([torch.roll(torch.arange(16) % 8, int(s)) for s in torch.randint(0, 8, (40,), generator=gen)])
    path = tmp_path_factory.mktemp("tok") / "tokens.pt"
    torch.save(seq, path)
    return path, seq


def test_info_hf_counts_the_folder_on_its_token_inputs(folders, capsys):
    from prunelab.measure import count_macs, count_params

    assert main(["info", "--hf", str(folders["gpt2"]), "--seq-len", "16", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    model = load_folder(folders["gpt2"], seq_len=16)
    assert report["macs"] == count_macs(model.model, model.inputs) == report["flop_counter_macs"]
    assert report["params"] == count_params(model.model).params and report["loss"] == "next-token"
    assert report["inputs"]["tensors"][0]["shape"] == [16] and report["family"] == "hf:GPT2LMHeadModel"
    assert main(["info", "--hf", str(folders["vit"])]) == 0
    assert "input 3x16x16, batch 1" in capsys.readouterr().out


@pytest.mark.parametrize("kind", sorted(AUTO))
def test_prune_hf_out_round_trips_through_from_pretrained(folders, kind, tmp_path, capsys):
    from prunelab.prune.unstructured import prune_global

    out = tmp_path / "pruned"
    assert main(["prune", "--hf", str(folders[kind]), "--sparsity", "0.6", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert 0.55 < summary["sparsity"] < 0.65
    again = getattr(transformers, AUTO[kind]).from_pretrained(str(out), local_files_only=True).eval()
    # prunelab's own pruned model, by the Python API on the same folder with the same settings
    mine = load_folder(folders[kind])
    prune_global(mine.model, 0.6)
    x = mine.inputs.example(3, seed=11)
    with torch.no_grad():
        assert float((run_logits(again, x) - run_logits(mine.model, x)).abs().max()) <= 1e-5
    record = json.loads((out / MASKS_FILE).read_text())
    assert record["summary"]["prune"]["method"] == "global"
    back = load_hf(out)
    assert sum(1 for n, _ in back.model.named_buffers() if n.endswith("_mask")) == len(record["tensors"])


def test_prune_hf_fine_tunes_on_a_token_file(folders, token_file, tmp_path, capsys):
    path, _ = token_file
    out = tmp_path / "lm"
    argv = ["prune", "--hf", str(folders["gpt2"]), "--sparsity", "0.5", "--data", "tokens", "--data-path", str(path),
            "--epochs", "2", "--batch-size", "8", "--lr", "0.05", "--optimizer", "adam", "--device", "cpu",
            "--out", str(out), "--json"]
    assert main(argv) == 0
    acc = json.loads(capsys.readouterr().out)["accuracy"]
    assert set(acc) == {"before", "pruned", "after"} and acc["after"] > acc["pruned"]
    assert (out / "model.safetensors").is_file()


def test_tokens_data_set(token_file, tmp_path):
    from prunelab.data import load

    path, seq = token_file
    data = load("tokens", root=str(path), seed=3)
    assert data.task == "tokens" and data.input_shape == (16,) and data.info["vocab_size"] == 8
    assert len(data.train) + len(data.val) + len(data.test) == 40 and len(data.test) == 4 and len(data.val) == 4
    assert torch.equal(data.train.x, data.train.y)  # next-token labels are the ids
    rows = {tuple(r.tolist()) for r in seq}
    assert all(tuple(r.tolist()) in rows for r in data.test.x)
    npy = tmp_path / "t.npy"
    np.save(npy, seq.numpy().astype(np.int32))
    assert torch.equal(load("tokens", root=str(npy), seed=3).train.x, data.train.x)
    labelled = tmp_path / "cls.pt"
    torch.save({"input_ids": seq, "labels": torch.arange(40) % 3}, labelled)
    cls = load("tokens", root=str(labelled))
    assert cls.num_classes == 3 and cls.train.y.dim() == 1 and cls.info["labels"] == "class"


def test_bench_and_export_hf(folders, tmp_path, capsys):
    assert main(["bench", "--hf", str(folders["bert"]), "--seq-len", "8", "--batch-sizes", "1", "--repeats", "2",
                 "--warmup", "1", "--min-time", "0", "--quiet", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["inputs"]["tensors"][0]["shape"] == [8] and payload["results"][0]["median_ms"] > 0
    pytest.importorskip("onnxruntime")
    onnx_path = tmp_path / "bert.onnx"
    assert main(["export", "--hf", str(folders["bert"]), "--seq-len", "8", "--format", "onnx",
                 "--out", str(onnx_path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["relative_error"] <= 1e-4 and onnx_path.stat().st_size > 0


def _bad(tmp_path, folders, token_file):
    noweights = tmp_path / "noweights"
    noweights.mkdir()
    (noweights / "config.json").write_text((folders["bert"] / "config.json").read_text())
    bad_tokens = tmp_path / "floats.pt"
    torch.save(torch.randn(4, 8), bad_tokens)
    out = str(tmp_path / "out")
    hf = str(folders["gpt2"])
    return [
        (["info", "--hf", str(tmp_path / "missing")], "not found"),
        (["prune", "--hf", str(noweights), "--sparsity", "0.5", "--out", out], "has no weights"),
        (["export", "--hf", str(tmp_path / "missing"), "--format", "onnx", "--out", out + ".onnx"], "not found"),
        (["bench", "--hf", str(noweights), "--quiet"], "has no weights"),
        (["info", "cnn", "--hf", hf], "not both"),
        (["info", "cnn", "--seq-len", "8"], "--seq-len applies to --hf"),
        (["info", "--hf", hf, "--seq-len", "999"], "must be from 1 to the model's 32 positions"),
        (["prune", "--hf", hf, "--sparsity", "0.5", "--epochs", "1", "--out", out], "needs training data"),
        (["prune", "--hf", hf, "--sparsity", "0.5", "--data", "tokens", "--data-path", str(bad_tokens),
          "--out", out], "must be integers"),
        (["prune", "--hf", hf, "--sparsity", "0.5", "--data", "digits", "--out", out], "takes token ids"),
        (["prune", "--hf", hf, "--sparsity", "0.5", "--prune-schedule", "gradual", "--out", out], "oneshot"),
        (["export", "--hf", hf, "--format", "deploy", "--out", out], "--format onnx"),
        (["prune", "cnn", "--sparsity", "0.5", "--out", out], "missing --data"),
        (["info"], "missing MODEL"),
    ]


def test_bad_hf_input_is_one_line_exit_2_nothing_written(folders, token_file, tmp_path, capsys):
    for argv, words in _bad(tmp_path, folders, token_file):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1 and "Traceback" not in err, (argv, err)
        assert not (tmp_path / "out").exists() and not (tmp_path / "out.onnx").exists()

