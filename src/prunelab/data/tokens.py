"""A user's tokenised data: ``--data tokens --data-path FILE`` (int64 token ids, ``[N, T]``).

The file is one of:

* ``.pt``: a tensor ``[N, T]`` of token ids, or a dict ``{"input_ids": [N, T], "labels": ...}``,
  loaded with ``weights_only=True`` (no pickled code runs);
* ``.npy``: an integer array ``[N, T]`` (``allow_pickle=False``; its header is read first, so its size
  is checked before anything is allocated).

Without ``labels`` the labels are the ids themselves, for a causal LM's next-token loss
(:mod:`prunelab.train.losses`: the loss shifts them; ``-100`` marks positions to ignore). With
``labels`` of shape ``[N]`` the set is a sequence classification one (classes ``0 .. max``); of shape
``[N, T]`` they are per-token labels. Samples are split by one permutation drawn with ``seed``:
``test_fraction`` and ``val_fraction`` of them (at least one each when there are 3 or more samples).
The bundle's ``task`` is ``tokens``; ``info["vocab_size"]`` is the largest id + 1.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from prunelab.data.base import DataBundle, Split
from prunelab.data.registry import register_dataset
from prunelab.errors import PrunelabError
from prunelab.io import torch_load
from prunelab.resources import check_tensor

#: the label value a loss ignores
IGNORE_INDEX = -100
#: the largest token file read (elements), a bound on what a typo'd path may claim
MAX_TOKENS = 1 << 31


def _read(path: Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    if path.suffix == ".npy":
        import numpy as np

        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise PrunelabError(f"token file {path} is not a NumPy array file: {exc}") from exc
        _check_size(path, tuple(array.shape))
        return torch.from_numpy(np.array(array)), None
    if path.suffix not in (".pt", ".pth"):
        raise PrunelabError(f"token file {path} must be a .pt / .pth (torch) or .npy (NumPy) file")
    obj = torch_load(path, what="token file")
    if isinstance(obj, dict):
        if "input_ids" not in obj:
            raise PrunelabError(f"token file {path} holds a dict without 'input_ids' (keys: {sorted(map(str, obj))})")
        ids, labels = obj["input_ids"], obj.get("labels")
    else:
        ids, labels = obj, None
    for name, t in (("input_ids", ids), ("labels", labels)):
        if t is not None and not isinstance(t, torch.Tensor):
            raise PrunelabError(f"token file {path}: {name} must be a tensor, got {type(t).__name__}")
    _check_size(path, tuple(ids.shape))
    return ids, labels


def _check_size(path: Path, shape: tuple[int, ...]) -> None:
    if len(shape) != 2 or min(shape) < 1:
        raise PrunelabError(f"token file {path} must hold token ids of shape [N, T], got {list(shape)}")
    if math.prod(shape) > MAX_TOKENS:
        raise PrunelabError(f"token file {path} holds {math.prod(shape):,} tokens; the most is {MAX_TOKENS:,}")
    check_tensor(f"token ids {shape[0]}x{shape[1]} from {path}", shape, itemsize=8)


def _as_ids(t: torch.Tensor, what: str, path: Path, allow_ignore: bool) -> torch.Tensor:
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
        raise PrunelabError(f"token file {path}: {what} must be integers, got {t.dtype}")
    t = t.to(torch.int64)
    low = int(t.min()) if t.numel() else 0
    if low < 0 and not (allow_ignore and bool(((t >= 0) | (t == IGNORE_INDEX)).all())):
        raise PrunelabError(f"token file {path}: {what} must be >= 0" + (f" (or {IGNORE_INDEX} to ignore)"
                                                                        if allow_ignore else "") + f", found {low}")
    return t


def load_tokens(root: str | os.PathLike | None, *, seed: int = 0, val_fraction: float = 0.1,
                test_fraction: float = 0.1) -> DataBundle:
    """Token ids from a file (see the module docstring), split into train / val / test."""
    path = Path(str(root))
    if not path.is_file():
        raise PrunelabError(f"token file {path} not found" if not path.exists() else
                            f"token file {path} is not a file")
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= float(f) < 1.0:
            raise PrunelabError(f"tokens {name} must be in [0, 1), got {f}")
    if val_fraction + test_fraction >= 1.0:
        raise PrunelabError(f"tokens val_fraction + test_fraction must be below 1, got {val_fraction + test_fraction}")
    ids, labels = _read(path)
    ids = _as_ids(ids, "input_ids", path, allow_ignore=False)
    n, t = ids.shape
    if labels is None:
        labels, kind = ids.clone(), "next-token"
    else:
        if labels.shape not in ((n,), (n, t)):
            raise PrunelabError(f"token file {path}: labels must have shape [{n}] or [{n}, {t}], got "
                                f"{list(labels.shape)}")
        labels = _as_ids(labels, "labels", path, allow_ignore=labels.dim() == 2)
        kind = "class" if labels.dim() == 1 else "per-token"
    vocab = int(ids.max()) + 1
    classes = vocab if kind == "next-token" else int(labels.max()) + 1
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    n_test = max(1, round(test_fraction * n)) if test_fraction > 0 and n >= 3 else 0
    n_val = max(1, round(val_fraction * n)) if val_fraction > 0 and n >= 3 else 0
    if n - n_test - n_val < 1:
        raise PrunelabError(f"token file {path} holds {n} sequences: too few for a training split")
    parts = order[n_test + n_val:], order[n_test:n_test + n_val], order[:n_test]
    splits = [Split(ids[p].clone(), labels[p].clone()) for p in parts]
    return DataBundle(f"tokens:{path.name}", *splits, num_classes=classes, input_shape=(t,), task="tokens",
                      info={"vocab_size": vocab, "labels": kind, "path": str(path)})


register_dataset("tokens", load_tokens, needs_root=True,
                 doc="a tokenised file of int64 ids [N, T] (.pt / .npy, --data-path FILE)")
