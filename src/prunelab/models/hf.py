"""Hugging Face model folders: load a local ``save_pretrained`` folder as a model, its inputs and its loss.

A folder holds ``config.json`` and weights (``model.safetensors``, ``pytorch_model.bin`` or a sharded
index of either). :func:`load_folder` reads it with ``local_files_only=True`` (nothing is downloaded,
no remote code runs) through the ``AutoModelFor...`` class of its head, and derives from the config:

* the :class:`~prunelab.models.inputs.InputSpec`: token ids ``(T,)`` in ``[0, vocab_size)`` with ``T``
  the smaller of ``max_position_embeddings`` (``n_positions``) and :data:`DEFAULT_SEQ_LEN` for text;
  ``(num_channels, image_size, image_size)`` floats for images;
* the loss (:mod:`prunelab.train.losses`): ``cross-entropy`` for sequence and image classification,
  ``next-token`` for causal language models.

The heads are a registry (:data:`HEADS`, :func:`register_head`), keyed by the suffix of the config's
``architectures`` entry (``BertForSequenceClassification`` -> ``ForSequenceClassification``).
Writing a (pruned) model back to a folder is :mod:`prunelab.export.hf`.

``transformers`` is the optional extra ``prunelab[hf]``; this module imports it only when called.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from prunelab.errors import PrunelabError, require
from prunelab.models.inputs import InputSpec

#: the file beside the weights that records an unstructured prune's masks (never inside config.json)
MASKS_FILE = "prunelab_masks.json"
#: the sequence length of example inputs when the config allows more
DEFAULT_SEQ_LEN = 128
#: the files that hold a folder's weights (any one is enough)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class Head:
    """A head type: the ``transformers`` auto class that loads it, its loss and how its inputs look.

    ``inputs(config, seq_len)`` builds the :class:`InputSpec`; ``suffixes`` are the endings of
    ``config.architectures[0]`` that select it."""

    name: str
    auto_class: str
    loss: str
    inputs: Callable[[Any, int | None], InputSpec]
    suffixes: tuple[str, ...]


HEADS: dict[str, Head] = {}


def register_head(head: Head) -> Head:
    HEADS[head.name] = head
    return head


def max_positions(config) -> int | None:
    """The longest sequence a text config's position embeddings allow (None when it does not say)."""
    return next((getattr(config, k) for k in ("max_position_embeddings", "n_positions", "max_seq_len")
                 if isinstance(getattr(config, k, None), int)), None)


def _text_inputs(config, seq_len: int | None) -> InputSpec:
    vocab = getattr(config, "vocab_size", None)
    if not isinstance(vocab, int) or vocab < 1:
        raise PrunelabError(f"the config of a {type(config).__name__} has no vocab_size to draw token ids from")
    limit = max_positions(config)
    if seq_len is None:
        seq_len = min(DEFAULT_SEQ_LEN, limit) if limit else DEFAULT_SEQ_LEN
    if seq_len < 1 or (limit is not None and seq_len > limit):
        raise PrunelabError(f"sequence length {seq_len} must be from 1 to the model's {limit} positions")
    return InputSpec.tokens(int(seq_len), vocab)


def _image_inputs(config, seq_len: int | None) -> InputSpec:
    size = getattr(config, "image_size", None)
    channels = getattr(config, "num_channels", 3)
    if isinstance(size, list | tuple):
        h, w = (int(size[0]), int(size[-1]))
    elif isinstance(size, int):
        h = w = size
    else:
        raise PrunelabError(f"the config of a {type(config).__name__} has no image_size for its example inputs")
    return InputSpec.tensor((int(channels), h, w))


register_head(Head("sequence-classification", "AutoModelForSequenceClassification", "cross-entropy", _text_inputs,
                   ("ForSequenceClassification",)))
register_head(Head("image-classification", "AutoModelForImageClassification", "cross-entropy", _image_inputs,
                   ("ForImageClassification", "ForImageClassificationWithTeacher")))
register_head(Head("causal-lm", "AutoModelForCausalLM", "next-token", _text_inputs, ("ForCausalLM", "LMHeadModel")))


@dataclass
class HFModel:
    """A loaded folder: the model (eval mode), its inputs, its loss name and where it came from."""

    model: nn.Module
    inputs: InputSpec
    loss: str
    head: str
    path: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self):
        return self.model.config


@contextlib.contextmanager
def quiet_transformers():
    """No ``transformers`` progress bars (loading / writing shards) inside the block."""
    logging = _transformers().utils.logging
    shown = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            logging.enable_progress_bar()


def _transformers():
    return require("transformers", "Hugging Face model folders (--hf)", "hf")


def check_folder(path: str | os.PathLike) -> Path:
    """The folder, refused in one line when it is missing, has no ``config.json`` or no weights."""
    folder = Path(path)
    if not folder.exists():
        raise PrunelabError(f"Hugging Face folder {path} not found")
    if not folder.is_dir():
        raise PrunelabError(f"--hf {path} is a file; give the folder save_pretrained wrote (config.json and weights)")
    if not (folder / "config.json").is_file():
        raise PrunelabError(f"Hugging Face folder {path} has no config.json")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise PrunelabError(f"Hugging Face folder {path} has no weights (expected one of {', '.join(WEIGHT_FILES)})")
    return folder


def head_of(config) -> Head:
    """The registered head of a config, from its ``architectures`` entry."""
    arch = (getattr(config, "architectures", None) or [""])[0] or ""
    for head in HEADS.values():
        if arch.endswith(head.suffixes):
            return head
    kinds = ", ".join(f"{h.name} (*{'/*'.join(h.suffixes)})" for h in HEADS.values())
    raise PrunelabError(f"unsupported Hugging Face architecture {arch or '(none in config.json)'!r}; "
                        f"supported heads: {kinds}")


def load_folder(path: str | os.PathLike, *, seq_len: int | None = None,
                attn_implementation: str | None = None) -> HFModel:
    """Load a local Hugging Face folder (see the module docstring) in eval mode.

    ``attn_implementation`` (``eager``, ``sdpa``) is passed to ``from_pretrained`` when given. Any
    failure of ``transformers`` (a config it cannot read, weights that do not fit) is one
    :class:`PrunelabError` line naming the folder."""
    folder = check_folder(path)
    tf = _transformers()
    try:
        config = tf.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # transformers raises OSError, ValueError, KeyError ... for a bad config
        raise PrunelabError(f"Hugging Face folder {path}: cannot read config.json: {_first_line(exc)}") from exc
    head = head_of(config)
    kwargs: dict[str, Any] = {"local_files_only": True, "config": config}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    try:
        with quiet_transformers():
            model = getattr(tf, head.auto_class).from_pretrained(str(folder), **kwargs)
    except Exception as exc:  # weights missing, corrupt or of another shape
        raise PrunelabError(f"Hugging Face folder {path}: cannot load the weights: {_first_line(exc)}") from exc
    model.eval()
    inputs = head.inputs(model.config, seq_len)
    return HFModel(model, inputs, head.loss, head.name, str(folder), _read_masks_meta(folder))


def _read_masks_meta(folder: Path) -> dict[str, Any]:
    import json

    path = folder / MASKS_FILE
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PrunelabError(f"Hugging Face folder {folder}: {MASKS_FILE} is not JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise PrunelabError(f"Hugging Face folder {folder}: {MASKS_FILE} must hold a JSON object")
    return meta


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
