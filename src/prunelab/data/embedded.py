"""Datasets that ship with the installed packages: nothing to download, nothing to put anywhere.

* ``digits``: scikit-learn's bundled handwritten digits (UCI ML optdigits test set), 1797 images of
  8x8 pixels with 16 grey levels, 10 classes. Shaped (1, 8, 8) for small CNNs.
* ``mnist1d``: MNIST-1D (Greydanus & Kobak 2020), generated locally from its ten 1-D templates by the
  ``mnist1d`` package (``make_dataset``, never its download path). Sequences of length 40, shaped
  (1, 40) for 1-D CNNs (``layout="channels"``) or (40, 1) for recurrent models (``layout="time"``).
"""

from __future__ import annotations

import random
from functools import lru_cache

import numpy as np

from prunelab.data.base import Augment, DataBundle
from prunelab.data.registry import register_dataset
from prunelab.data.splits import channel_stats, normalize, stratified_split, to_split
from prunelab.errors import PrunelabError, check_choice, require
from prunelab.resources import check_claim

# The test split of the embedded sets never moves with the user's seed: it is drawn once with this seed.
_TEST_SPLIT_SEED = 20180101


def _bundle_from_arrays(name: str, x_trainval: np.ndarray, y_trainval: np.ndarray, x_test: np.ndarray,
                        y_test: np.ndarray, *, val_fraction: float, seed: int, num_classes: int,
                        input_shape: tuple[int, ...], task: str, info: dict) -> DataBundle:
    keep, held = stratified_split(y_trainval, val_fraction, seed)
    return DataBundle(
        name=name,
        train=to_split(x_trainval[keep], y_trainval[keep]),
        val=to_split(x_trainval[held], y_trainval[held]),
        test=to_split(x_test, y_test),
        num_classes=num_classes,
        input_shape=input_shape,
        task=task,
        augment=Augment.none(),
        info=info,
    )


def load_digits(root=None, *, val_fraction: float = 0.1, seed: int = 0, test_fraction: float = 0.2) -> DataBundle:
    """scikit-learn's handwritten digits, (1, 8, 8), 10 classes; stratified test/val splits.

    The test split (``test_fraction`` of each class) is fixed; validation is ``val_fraction`` of the
    rest, drawn with ``seed``. Pixels are scaled by the training split's mean and standard deviation.
    No augmentation: flips and shifts change what an 8x8 digit means.
    """
    datasets = require("sklearn.datasets", "digits", "data", "scikit-learn")
    raw = datasets.load_digits()
    x = raw.data.reshape(-1, 1, 8, 8).astype(np.float32)
    y = raw.target.astype(np.int64)
    trainval, test = stratified_split(y, test_fraction, _TEST_SPLIT_SEED)
    keep, _ = stratified_split(y[trainval], val_fraction, seed)
    mean, std = channel_stats(x[trainval][keep], channel_axis=1)
    x = normalize(x, mean, std, channel_axis=1)
    return _bundle_from_arrays(
        "digits", x[trainval], y[trainval], x[test], y[test], val_fraction=val_fraction, seed=seed,
        num_classes=10, input_shape=(1, 8, 8), task="image",
        info={"source": "sklearn.datasets.load_digits", "mean": mean.tolist(), "std": std.tolist()},
    )


@lru_cache(maxsize=4)
def _mnist1d_arrays(num_samples: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    mnist1d = require("mnist1d.data", "mnist1d", "data", "mnist1d")
    get_dataset_args, make_dataset = mnist1d.get_dataset_args, mnist1d.make_dataset
    args = get_dataset_args()
    args.num_samples = int(num_samples)
    # make_dataset reseeds Python's and NumPy's global generators; leave the caller's state untouched.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        d = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    arrays = (np.asarray(d["x"], dtype=np.float32), np.asarray(d["y"], dtype=np.int64),
              np.asarray(d["x_test"], dtype=np.float32), np.asarray(d["y_test"], dtype=np.int64))
    for a in arrays:
        a.setflags(write=False)
    return arrays


def load_mnist1d(root=None, *, val_fraction: float = 0.1, seed: int = 0, num_samples: int = 5000,
                 layout: str = "channels") -> DataBundle:
    """MNIST-1D generated locally (the package's default recipe: 4000 train / 1000 test, length 40).

    ``make_dataset`` already centres the set and scales it to unit standard deviation, so the values
    are used as generated. ``layout`` is ``channels`` for (1, 40) or ``time`` for (40, 1).
    """
    check_choice("mnist1d layout", layout, ["channels", "time"])
    if int(num_samples) < 100:
        raise PrunelabError(f"mnist1d num_samples must be >= 100, got {num_samples}")
    # make_dataset builds float64 signals of length 40 and several intermediate copies of them
    check_claim(f"mnist1d with {int(num_samples):,} samples", int(num_samples) * 40 * 8 * 6)
    x, y, x_test, y_test = _mnist1d_arrays(int(num_samples))
    length = x.shape[1]
    if layout == "channels":
        x, x_test, shape = x[:, None, :], x_test[:, None, :], (1, length)
    else:
        x, x_test, shape = x[:, :, None], x_test[:, :, None], (length, 1)
    return _bundle_from_arrays(
        "mnist1d", x, y, x_test, y_test, val_fraction=val_fraction, seed=seed, num_classes=10,
        input_shape=shape, task="sequence",
        info={"source": "mnist1d.data.make_dataset", "num_samples": int(num_samples), "layout": layout},
    )


register_dataset("digits", load_digits, doc="scikit-learn handwritten digits, 1x8x8, 10 classes (embedded)")
register_dataset("mnist1d", load_mnist1d, doc="MNIST-1D generated locally, 1x40 sequences, 10 classes (embedded)")
