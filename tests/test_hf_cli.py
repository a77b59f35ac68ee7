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



def test_train_cli_on_token_data_uses_next_token_and_records_the_inputs(token_file, tmp_path, monkeypatch, capsys):
    """A user family of a tiny LM trains on a token file: the loss defaults to next-token, the
    checkpoint records token inputs, and info counts it on them."""
    path, _ = token_file
    (tmp_path / "tiny_lm_plugin.py").write_text(
        "from torch import nn\n"
        "from prunelab.models import register_family\n"
        "def build(vocab=8, d=16, num_classes=8):\n"
        "    return nn.Sequential(nn.Embedding(vocab, d), nn.Linear(d, vocab))\n"
        "register_family('tinylm', build, input_shape=(16,), task='tokens')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import tiny_lm_plugin  # noqa: F401

    from prunelab.io import save_checkpoint
    from prunelab.models import ArchSpec, create

    ckpt = tmp_path / "lm0.pt"
    save_checkpoint(ckpt, arch=ArchSpec("tinylm").to_dict(), state_dict=create(ArchSpec("tinylm")).state_dict())
    out = tmp_path / "lm.pt"
    assert main(["train", str(ckpt), "--plugin", "tiny_lm_plugin", "--data", "tokens", "--data-path", str(path),
                 "--epochs", "3", "--batch-size", "8", "--lr", "0.5", "--device", "cpu", "--out", str(out),
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["test_acc"] > 0.9 and summary["macs"] == 16 * 16 * 8
    assert summary["inputs"]["tensors"][0]["vocab_size"] == 8
    assert main(["info", str(out), "--plugin", "tiny_lm_plugin", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["macs"] == 16 * 16 * 8


# ------------------------------------------------------------------ prune --hf DIR --structured (issue 13)

#: kind -> (auto class, whether its config can state fewer heads of the same size, params ratio asked)
STRUCTURED = {"bert": ("AutoModelForSequenceClassification", False, 0.7),
              "llama-cls": ("AutoModelForSequenceClassification", True, 0.45),
              "vit": ("AutoModelForImageClassification", True, 0.45),
              "gpt2": ("AutoModelForCausalLM", False, 0.5),
              "llama-gqa": ("AutoModelForCausalLM", True, 0.45)}


def _llama_cls():
    torch.manual_seed(0)
    c = transformers.LlamaConfig(vocab_size=61, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=4, intermediate_size=48, max_position_embeddings=32, num_labels=3,
                                 pad_token_id=0, attn_implementation="eager")
    return transformers.LlamaForSequenceClassification(c).eval()


@pytest.fixture(scope="module")
def sfolders(folders, tmp_path_factory):
    root = tmp_path_factory.mktemp("hfstruct")
    out = dict(folders)
    tiny("llama-gqa")[0].save_pretrained(root / "llama-gqa")
    _llama_cls().save_pretrained(root / "llama-cls")
    out["llama-gqa"], out["llama-cls"] = root / "llama-gqa", root / "llama-cls"
    return out


def _reference(folder, criterion, ratio):
    """prunelab's own compressed model, by the Python API on the same folder and settings."""
    from prunelab.cli.prune_hf import describable_groups
    from prunelab.prune.structured import StructuredConfig, StructuredPruner, Target, find_groups

    loaded = load_folder(folder)
    spec = loaded.inputs
    measured = spec.shape if spec.is_plain else spec
    dense = sum(p.numel() for p in loaded.model.parameters())
    cfg = StructuredConfig(criterion=criterion, schedule="oneshot", uniform=True,
                           target=Target("params", int(ratio * dense)))
    groups = describable_groups(loaded.model, find_groups(loaded.model, measured))
    pruner = StructuredPruner(loaded.model, cfg, spec, groups=groups)
    pruner.prune_oneshot()
    return pruner.compress(), spec, dense


def _heads_of(model):
    from prunelab.prune.structured.transformer import find_units

    return [(a.heads, a.kv_heads) for a in find_units(model).attention]


@pytest.mark.parametrize("kind", list(STRUCTURED))
def test_structured_prune_hf_round_trips_through_from_pretrained(sfolders, kind, tmp_path, capsys):
    auto, heads_prunable, ratio = STRUCTURED[kind]
    out = tmp_path / "pruned"
    assert main(["prune", "--hf", str(sfolders[kind]), "--structured", "--oneshot", "--criterion", "random",
                 "--target-params-ratio", str(ratio), "--out", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    again = getattr(transformers, auto).from_pretrained(str(out), local_files_only=True).eval()
    mine, spec, dense = _reference(sfolders[kind], "random", ratio)
    x = spec.example(3, seed=5)
    with torch.no_grad():
        assert float((run_logits(again, x) - run_logits(mine, x)).abs().max()) <= 1e-5
    # the target, counted on the loaded folder (tied embeddings counted once)
    params = sum(p.numel() for p in again.parameters())
    assert params == summary["params"]["after"] <= int(ratio * dense) and summary["target"]["reached"]
    assert summary["params"]["before"] == dense
    # every layer alike: one head count and one MLP width, the config says them
    heads = set(_heads_of(again))
    original = getattr(transformers, auto).from_pretrained(str(sfolders[kind]), local_files_only=True)
    assert len(heads) == 1
    if heads_prunable:
        assert heads != set(_heads_of(original))  # at 45% of the parameters heads go too
    else:
        assert heads == set(_heads_of(original))
        assert "derives the head size from hidden size / heads" in captured.err
    widths = {g["after"] for g in summary["groups"] if g["group"].endswith(":mlp")}
    assert len(widths) == 1
    assert again.config.to_dict().get("intermediate_size", again.config.to_dict().get("n_inner")) == widths.pop()
    assert "prunable group(s) in scope" in captured.err
    from prunelab.export.hf import PRUNE_FILE

    record = json.loads((out / PRUNE_FILE).read_text())
    assert record["groups"] == summary["groups"] and record["structured"]["uniform"] is True
    assert not (out / MASKS_FILE).exists()


def test_structured_prune_hf_with_data(sfolders, token_file, tmp_path, capsys):
    """Fisher on a token file: one-shot on GPT-2 (next-token loss) with fine-tuning of the compressed
    model, iterative on LLaMA-GQA; both folders load."""
    path, _ = token_file
    common = ["--data", "tokens", "--data-path", str(path), "--batch-size", "8", "--device", "cpu", "--json",
              "--prune-every", "2"]
    out = tmp_path / "gpt2"
    assert main(["prune", "--hf", str(sfolders["gpt2"]), "--structured", "--oneshot", "--criterion", "fisher",
                 "--target-macs-ratio", "0.8", "--epochs", "1", "--lr", "0.01", "--optimizer", "adam",
                 "--out", str(out), *common]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary["accuracy"]) == {"before", "pruned", "after"} and summary["target"]["reached"]
    assert summary["macs"]["after"] <= 0.8 * summary["macs"]["before"]
    transformers.AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True)
    out = tmp_path / "llama"
    assert main(["prune", "--hf", str(sfolders["llama-gqa"]), "--structured", "--criterion", "fisher",
                 "--channels-per-prune", "8", "--target-params-ratio", "0.9", "--epochs", "2",
                 "--out", str(out), *common]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["target"]["reached"] and summary["prunes"] >= 1 and summary["steps"] > 0
    assert sum(p.numel() for p in transformers.AutoModelForCausalLM.from_pretrained(
        str(out), local_files_only=True).parameters()) == summary["params"]["after"]


def test_bench_and_export_read_a_structured_folder(sfolders, tmp_path, capsys):
    out = tmp_path / "vit"
    assert main(["prune", "--hf", str(sfolders["vit"]), "--structured", "--oneshot", "--criterion", "l1",
                 "--target-params-ratio", "0.5", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "AutoModelForImageClassification.from_pretrained" in printed
    assert main(["info", "--hf", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"] == sum(p.numel() for p in load_folder(out).model.parameters())
    assert main(["bench", "--hf", str(out), "--batch-sizes", "1", "--repeats", "2", "--warmup", "1",
                 "--min-time", "0", "--quiet", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["median_ms"] > 0
    pytest.importorskip("onnxruntime")
    onnx_path = tmp_path / "vit.onnx"
    assert main(["export", "--hf", str(out), "--format", "onnx", "--out", str(onnx_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["relative_error"] <= 1e-4


def _bad_structured(tmp_path, sfolders, token_file):
    out = str(tmp_path / "out")
    llama, bert = str(sfolders["llama-gqa"]), str(sfolders["bert"])
    noweights = tmp_path / "noweights"
    noweights.mkdir()
    (noweights / "config.json").write_text((sfolders["llama-gqa"] / "config.json").read_text())
    ratio = ["--structured", "--oneshot", "--criterion", "l1", "--target-params-ratio", "0.5", "--out", out]
    return [
        (["prune", "--hf", str(tmp_path / "missing"), *ratio], "not found"),
        (["prune", "--hf", str(noweights), *ratio], "has no weights"),
        (["prune", "--hf", llama, *ratio, "--round-to", "3"],
         "--round-to 3 does not divide the 2 key/value heads (each with 2 query heads)"),
        (["prune", "--hf", llama, *ratio, "--round-to", "2"], "leaves no smaller multiple of itself for the 2 "
                                                             "key/value heads"),
        (["prune", "--hf", llama, *ratio[:-4], "--target-params-ratio", "0.1", "--out", out],
         "is unreachable: only 62.3% of the model's params is prunable"),
        (["prune", "--hf", llama, *ratio, "--min-channels", "3"], "min-channels 3 is above the width"),
        (["prune", "--hf", llama, "--structured", "--oneshot", "--target-params-ratio", "0.5", "--out", out],
         "--criterion fisher needs data"),
        (["prune", "--hf", llama, "--structured", "--criterion", "l1", "--target-params-ratio", "0.5",
          "--out", out], "add --oneshot"),
        (["prune", "--hf", bert, *ratio, "--pretrain-epochs", "1"], "--pretrain-epochs"),
        (["prune", "--hf", bert, *ratio, "--data", "digits"], "takes token ids"),
        (["prune", "--hf", bert, *ratio[:-2], "--out", out + ".pt"], "looks like a file"),
        (["prune", "--hf", bert, *ratio, "--epochs", "2"], "needs training data"),
    ]


def test_bad_structured_hf_input_is_one_line_exit_2_nothing_written(sfolders, token_file, tmp_path, capsys):
    for argv, words in _bad_structured(tmp_path, sfolders, token_file):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1 and "Traceback" not in err, (argv, err)
        assert not (tmp_path / "out").exists() and not (tmp_path / "out.pt").exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
