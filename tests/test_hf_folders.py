"""Hugging Face folders: load (config + weights, local files only), write back, round trip through
``AutoModelFor....from_pretrained`` for sequence classification, image classification and causal LM."""

from __future__ import annotations

import json

import pytest
import torch

from prunelab.errors import PrunelabError
from prunelab.models.inputs import InputSpec, logits_of, run_logits

transformers = pytest.importorskip("transformers")
from hf_tiny import VOCAB, tiny  # noqa: E402
from prunelab.export.hf import load_hf, register_config_rule, write_folder  # noqa: E402
from prunelab.models.hf import MASKS_FILE, load_folder  # noqa: E402

torch.set_num_threads(1)
KINDS = {"bert": ("sequence-classification", "cross-entropy", "AutoModelForSequenceClassification"),
         "vit": ("image-classification", "cross-entropy", "AutoModelForImageClassification"),
         "gpt2": ("causal-lm", "next-token", "AutoModelForCausalLM")}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for kind in KINDS:
        model, _ = tiny(kind)
        model.save_pretrained(root / kind)
        out[kind] = root / kind
    return out


def _max_diff(a: torch.nn.Module, b: torch.nn.Module, spec: InputSpec) -> float:
    x = spec.example(3, seed=7)
    with torch.no_grad():
        return float((run_logits(a, x) - run_logits(b, x)).abs().max())


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_load_folder_gives_model_inputs_and_loss(folders, kind):
    head, loss, _ = KINDS[kind]
    loaded = load_folder(folders[kind])
    assert loaded.head == head and loaded.loss == loss and not loaded.model.training
    if kind == "vit":
        assert loaded.inputs == InputSpec.tensor((3, 16, 16))
    else:  # token ids up to the vocabulary, as long as the config's 32 positions allow
        assert loaded.inputs.vocab_size == VOCAB and loaded.inputs.seq_len == 32
    reference, _ = tiny(kind)
    assert _max_diff(loaded.model, reference, loaded.inputs) <= 1e-6  # the folder loads with sdpa attention
    assert load_folder(folders[kind], seq_len=8).inputs.seq_len in (None, 8)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_masked_round_trip_through_from_pretrained(folders, kind, tmp_path):
    from prunelab.prune.unstructured import prune_global
    from prunelab.prune.unstructured.masks import mask_counts

    loaded = load_folder(folders[kind])
    report = prune_global(loaded.model, 0.5)
    assert report.kept < report.total
    out = write_folder(loaded.model, tmp_path / "out", summary={"method": "global", "sparsity": 0.5})
    auto = getattr(transformers, KINDS[kind][2])
    again = auto.from_pretrained(str(out), local_files_only=True).eval()
    assert _max_diff(again, loaded.model, loaded.inputs) <= 1e-5
    record = json.loads((out / MASKS_FILE).read_text())
    assert record["summary"]["method"] == "global" and 0.45 < record["sparsity"] < 0.55
    config = json.loads((out / "config.json").read_text())
    assert not any("mask" in k or "prunelab" in k for k in config)
    assert not any(k.endswith("_mask") for k in again.state_dict())
    # prunelab reads the folder back with its masks re-attached from the zeros
    back = load_hf(out)
    assert mask_counts(back.model) == mask_counts(loaded.model)
    assert _max_diff(back.model, loaded.model, loaded.inputs) <= 1e-5


def test_compressed_model_with_config_fields(folders, tmp_path):
    """A structured result: the FFN width halved in every layer, written with its config field."""
    loaded = load_folder(folders["bert"])
    model = loaded.model
    keep = torch.arange(0, 64, 2)
    for layer in model.bert.encoder.layer:
        up, down = layer.intermediate.dense, layer.output.dense
        new_up, new_down = torch.nn.Linear(32, 32), torch.nn.Linear(32, 32)
        with torch.no_grad():
            new_up.weight.copy_(up.weight[keep])
            new_up.bias.copy_(up.bias[keep])
            new_down.weight.copy_(down.weight[:, keep])
            new_down.bias.copy_(down.bias)
        layer.intermediate.dense, layer.output.dense = new_up, new_down
    with pytest.raises(Exception):  # noqa: B017 - without the config field the folder does not load
        write_folder(model, tmp_path / "bad")
        transformers.AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "bad"))
    out = write_folder(model, tmp_path / "small", config_fields={"intermediate_size": 32})
    again = transformers.AutoModelForSequenceClassification.from_pretrained(str(out), local_files_only=True).eval()
    assert again.config.intermediate_size == 32 and _max_diff(again, model, loaded.inputs) <= 1e-5
    assert not (out / MASKS_FILE).exists()


def test_config_rules_and_bad_fields(folders, tmp_path):
    loaded = load_folder(folders["gpt2"])
    rule = register_config_rule(lambda m: {"n_inner": 4 * m.config.n_embd} if hasattr(m.config, "n_inner") else {})
    out = write_folder(loaded.model, tmp_path / "ruled")
    assert json.loads((out / "config.json").read_text())["n_inner"] == 128
    from prunelab.export import hf as hf_export

    hf_export._CONFIG_RULES.remove(rule)
    with pytest.raises(PrunelabError, match="has no field 'no_such_field'"):
        write_folder(loaded.model, tmp_path / "x", config_fields={"no_such_field": 1})
    assert not (tmp_path / "x").exists()
    with pytest.raises(PrunelabError, match="not a Hugging Face model"):
        write_folder(torch.nn.Linear(2, 2), tmp_path / "y")


def test_rewriting_an_existing_folder_replaces_it_whole(folders, tmp_path):
    loaded = load_folder(folders["vit"])
    out = write_folder(loaded.model, tmp_path / "vit")
    (out / "stale.txt").write_text("old")
    write_folder(loaded.model, tmp_path / "vit")
    assert not (out / "stale.txt").exists() and (out / "config.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vit"]


def test_bad_folders_are_one_line(folders, tmp_path):
    cases = [(tmp_path / "missing", "not found"), (folders["bert"] / "config.json", "is a file")]
    empty = tmp_path / "empty"
    empty.mkdir()
    cases.append((empty, "has no config.json"))
    noweights = tmp_path / "noweights"
    noweights.mkdir()
    (noweights / "config.json").write_text((folders["bert"] / "config.json").read_text())
    cases.append((noweights, "has no weights"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((folders["bert"] / "config.json").read_text())
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    cases.append((broken, "cannot load the weights"))
    for path, words in cases:
        with pytest.raises(PrunelabError, match=words) as info:
            load_folder(path)
        assert "\n" not in str(info.value)


def test_logits_of_hf_outputs_match_their_logits(folders):
    loaded = load_folder(folders["gpt2"])
    x = loaded.inputs.example(2)
    with torch.no_grad():
        out = loaded.model(x)
    assert logits_of(out) is out.logits and out.logits.shape == (2, 32, VOCAB)
