"""A text corpus that ships with Python, as next-token blocks for the zoo's language model.

``corpus``: the English text of the standard library's ``pydoc_data.topics`` (the help topics of
the interpreter's ``help()``: the language reference's sections on statements, operators, data
model...; about 465,000 characters in Python 3.12), so a language model trains with nothing to
download. The topics are joined in sorted key order, separated by a blank line, and tokenised
deterministically:

* ``level="byte"`` (the default): the UTF-8 bytes, vocabulary 256 (GPT-2's and ByT5's byte alphabet,
  no tokenizer to ship);
* ``level="char"``: one token per character, the vocabulary being the sorted set of characters of the
  whole text (about 100; the same on every machine with the same Python).

The token stream is split *contiguously* into train / validation / test (the last ``val_fraction``
and ``test_fraction`` of the stream, so no block of held-out text is also trained on, as WikiText
and the Penn Treebank splits are contiguous) and each part cut into non-overlapping blocks of
``seq_len`` tokens (a trailing partial block is dropped). A sample is one block: the inputs are its
token ids ``(seq_len,)`` (int64) and the labels are the same ids, since the ``next-token`` loss
(:mod:`prunelab.train.losses`) predicts token ``t + 1`` from position ``t``.

The text differs between Python versions; ``info`` records the version and a SHA-256 of the text,
so two runs can tell whether they saw the same corpus.
"""

from __future__ import annotations

import hashlib
import sys
from functools import lru_cache

import numpy as np
import torch

from prunelab.data.base import Augment, DataBundle, Split
from prunelab.data.registry import register_dataset
from prunelab.errors import PrunelabError, check_choice

LEVELS = ("byte", "char")
#: the longest block a sample may be (a typo such as 10^9 is an error, not an empty data set)
MAX_SEQ_LEN = 65_536


@lru_cache(maxsize=1)
def corpus_text() -> str:
    """The help topics of ``pydoc_data.topics``, in sorted key order, one blank line apart."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # a Python built without its documentation data
        raise PrunelabError("the corpus data set needs the standard library's pydoc_data module, which this "
                            "Python lacks") from None
    return "\n\n".join(topics[k].strip() for k in sorted(topics))


def tokenize(text: str, level: str) -> tuple[np.ndarray, list[str] | None]:
    """Token ids of ``text`` (int64) and, for ``char``, the vocabulary (id -> character)."""
    check_choice("corpus level", level, LEVELS)
    if level == "byte":
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64), None
    vocab = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    return np.fromiter((index[c] for c in text), dtype=np.int64, count=len(text)), vocab


def decode(ids, level: str = "byte", vocab: list[str] | None = None) -> str:
    """Text of token ids (the inverse of :func:`tokenize`; bytes that are not valid UTF-8 are replaced)."""
    ids = [int(i) for i in torch.as_tensor(ids).reshape(-1).tolist()]
    if level == "byte":
        return bytes(ids).decode("utf-8", errors="replace")
    if vocab is None:
        raise PrunelabError("decoding char-level tokens needs the vocabulary (the bundle's info['vocab'])")
    return "".join(vocab[i] for i in ids)


def blocks(ids: np.ndarray, seq_len: int) -> Split:
    """Non-overlapping blocks of ``seq_len`` tokens; inputs and labels are the same ids."""
    n = len(ids) // seq_len
    x = torch.from_numpy(np.ascontiguousarray(ids[: n * seq_len].reshape(n, seq_len)))
    return Split(x, x.clone())


def load_corpus(root=None, *, val_fraction: float = 0.05, seed: int = 0, seq_len: int = 64, level: str = "byte",
                test_fraction: float = 0.05, max_tokens: int | None = None) -> DataBundle:
    """The ``pydoc_data`` text as next-token blocks of ``seq_len`` tokens (byte or char level).

    The stream is the first ``max_tokens`` tokens when given (smaller runs); the last ``test_fraction``
    of it is the test split and the ``val_fraction`` before it the validation split. The split is
    contiguous, so ``seed`` changes nothing here (sample order is the trainer's, seeded there).
    """
    del root, seed
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or not 2 <= seq_len <= MAX_SEQ_LEN:
        raise PrunelabError(f"corpus seq_len must be a whole number in [2, {MAX_SEQ_LEN}], got {seq_len!r}")
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= float(value) < 0.5:
            raise PrunelabError(f"corpus {name} must lie in [0, 0.5), got {value}")
    text = corpus_text()
    ids, vocab = tokenize(text, level)
    if max_tokens is not None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise PrunelabError(f"corpus max_tokens must be a positive whole number, got {max_tokens!r}")
        ids = ids[:max_tokens]
    n_test = int(round(len(ids) * float(test_fraction)))
    n_val = int(round(len(ids) * float(val_fraction)))
    train_ids, val_ids = ids[: len(ids) - n_val - n_test], ids[len(ids) - n_val - n_test: len(ids) - n_test]
    test_ids = ids[len(ids) - n_test:]
    train, val, test = blocks(train_ids, seq_len), blocks(val_ids, seq_len), blocks(test_ids, seq_len)
    if len(train) == 0 or (n_test and len(test) == 0):
        raise PrunelabError(f"corpus of {len(ids):,} tokens has no full block of {seq_len} tokens in each split; "
                            f"use a shorter seq_len or more tokens")
    vocab_size = 256 if level == "byte" else len(vocab)
    info = {"source": "pydoc_data.topics", "python": ".".join(map(str, sys.version_info[:3])),
            "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(), "level": level, "tokens": int(len(ids)),
            "vocab_size": vocab_size, "loss": "next-token", "seq_len": seq_len}
    if vocab is not None:
        info["vocab"] = vocab
    return DataBundle(name="corpus", train=train, val=val, test=test, num_classes=vocab_size,
                      input_shape=(seq_len,), task="tokens", augment=Augment.none(), info=info)


register_dataset("corpus", load_corpus,
                 doc="English text of Python's pydoc_data (help topics), byte/char next-token blocks (embedded)")
