"""The ``corpus`` data set: Python's own help text as next-token blocks, checked against the text."""

from __future__ import annotations

import pytest
import torch

from prunelab.data import registry as D
from prunelab.data.corpus import corpus_text, decode
from prunelab.errors import PrunelabError


def test_byte_blocks_are_the_utf8_text_cut_contiguously():
    from pydoc_data.topics import topics

    d = D.load("corpus", seq_len=32)
    raw = "\n\n".join(topics[k].strip() for k in sorted(topics)).encode("utf-8")
    assert d.task == "tokens" and d.input_shape == (32,) and d.num_classes == 256
    assert d.info["tokens"] == len(raw) and d.info["loss"] == "next-token"
    # train, then validation, then test: consecutive slices of the byte stream, 5% each held out
    n_test, n_val = round(len(raw) * 0.05), round(len(raw) * 0.05)
    starts = {"train": 0, "val": len(raw) - n_val - n_test, "test": len(raw) - n_test}
    for name, start in starts.items():
        split = d.split(name)
        assert split.x.dtype == torch.int64 and torch.equal(split.x, split.y)  # labels are the ids
        assert bytes(split.x[:3].reshape(-1).tolist()) == raw[start:start + 96]
    assert len(d.train) == (len(raw) - n_val - n_test) // 32
    assert decode(d.test.x[0]) == raw[starts["test"]:starts["test"] + 32].decode("utf-8", errors="replace")


def test_char_level_vocabulary_is_the_sorted_characters_and_loading_is_deterministic():
    a = D.load("corpus", seq_len=16, level="char", max_tokens=5000)
    b = D.load("corpus", seq_len=16, level="char", max_tokens=5000, seed=7)
    vocab = sorted(set(corpus_text()))
    assert a.info["vocab"] == vocab and a.num_classes == len(vocab)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.x, b.test.x)
    assert decode(a.train.x[:2], "char", a.info["vocab"]) == corpus_text()[:32]
    assert a.train.x.max() < a.num_classes


@pytest.mark.parametrize("options, message", [
    ({"seq_len": 1}, "seq_len must be a whole number in [2, 65536]"),
    ({"level": "word"}, "valid choices: byte, char"),
    ({"max_tokens": 0}, "max_tokens must be a positive whole number"),
    ({"test_fraction": 0.6}, "test_fraction must lie in [0, 0.5)"),
    ({"seq_len": 4096, "max_tokens": 5000}, "no full block of 4096 tokens"),
])
def test_bad_options_are_one_line(options, message):
    with pytest.raises(PrunelabError) as err:
        D.load("corpus", **options)
    assert message in str(err.value) and "\n" not in str(err.value)
