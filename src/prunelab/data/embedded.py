"""Datasets that ship with the installed packages: nothing to download, nothing to put anywhere.

* ``digits``: scikit-learn's bundled handwritten digits (UCI ML optdigits test set), 1797 images of
  8x8 pixels with 16 grey levels, 10 classes. Shaped (1, 8, 8) for small CNNs.
* ``mnist1d``: MNIST-1D (Greydanus & Kobak 2020), generated locally from its ten 1-D templates
  (:mod:`prunelab.data.mnist1d_gen`, the ``mnist1d`` package's ``make_dataset`` recipe in NumPy, never
  a download). Sequences of length 40, shaped (1, 40) for 1-D CNNs (``layout="channels"``) or (40, 1)
  for recurrent models (``layout="time"``).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from prunelab.data.base import Augment, DataBundle
from prunelab.data.registry import register_dataset
from prunelab.data.splits import channel_stats, normalize, stratified_split, to_split
from prunelab.errors import PrunelabError, check_choice, require
from prunelab.resources import check_claim

# The test split of the embedded sets never moves with the user's seed: it is drawn once with this seed.
_TEST_SPLIT_SEED = 20180101
#: an upper bound on generated MNIST-1D samples (each is 40 float32 values; 10M would be 1.6 GB)
MAX_MNIST1D_SAMPLES = 2_000_000


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
def _mnist1d_arrays(num_samples: int, test_fraction: float, iid_noise_scale: float,
                    corr_noise_scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from prunelab.data.mnist1d_gen import MNIST1DArgs, make_dataset

    d = make_dataset(MNIST1DArgs(num_samples=int(num_samples), train_split=1.0 - float(test_fraction),
                                 iid_noise_scale=float(iid_noise_scale), corr_noise_scale=float(corr_noise_scale)))
    arrays = (np.asarray(d["x"], dtype=np.float32), np.asarray(d["y"], dtype=np.int64),
              np.asarray(d["x_test"], dtype=np.float32), np.asarray(d["y_test"], dtype=np.int64))
    for a in arrays:
        a.setflags(write=False)
    return arrays


def load_mnist1d(root=None, *, val_fraction: float = 0.1, seed: int = 0, num_samples: int = 5000,
                 test_fraction: float = 0.2, iid_noise_scale: float = 0.02, corr_noise_scale: float = 0.25,
                 layout: str = "channels") -> DataBundle:
    """MNIST-1D generated locally (the package's default recipe: 4000 train / 1000 test, length 40).

    ``num_samples`` are generated (the package's templates, transforms and seed); the last
    ``test_fraction`` of them is the test split (the package's ``train_split`` is 1 - test_fraction),
    so a larger test split needs no more training data: ``num_samples: 10000, test_fraction: 0.5``
    keeps the standard 5,000 training samples and tests on 5,000 (one sample = 0.02 points).
    ``iid_noise_scale`` and ``corr_noise_scale`` are the generator's white and correlated noise
    (defaults 0.02 and 0.25, the package's): more white noise makes the classes overlap, so no model
    reaches 100% however long it trains. ``make_dataset`` centres the set and scales it to unit standard
    deviation, so the values are used as generated. ``layout`` is ``channels`` for (1, 40) or ``time``
    for (40, 1).
    """
    check_choice("mnist1d layout", layout, ["channels", "time"])
    if int(num_samples) < 100:
        raise PrunelabError(f"mnist1d num_samples must be >= 100, got {num_samples}")
    if int(num_samples) > MAX_MNIST1D_SAMPLES:
        raise PrunelabError(f"mnist1d num_samples must be <= {MAX_MNIST1D_SAMPLES:,}, got {num_samples}")
    if not 0.0 < float(test_fraction) < 1.0:
        raise PrunelabError(f"mnist1d test_fraction must lie in (0, 1), got {test_fraction}")
    for name, value in (("iid_noise_scale", iid_noise_scale), ("corr_noise_scale", corr_noise_scale)):
        if not (math.isfinite(float(value)) and 0.0 <= float(value) <= 10.0):
            raise PrunelabError(f"mnist1d {name} must lie in [0, 10], got {value}")
    # make_dataset builds float64 signals of length 40 and several intermediate copies of them
    check_claim(f"mnist1d with {int(num_samples):,} samples", int(num_samples) * 40 * 8 * 6)
    x, y, x_test, y_test = _mnist1d_arrays(int(num_samples), float(test_fraction), float(iid_noise_scale),
                                           float(corr_noise_scale))
    length = x.shape[1]
    if layout == "channels":
        x, x_test, shape = x[:, None, :], x_test[:, None, :], (1, length)
    else:
        x, x_test, shape = x[:, :, None], x_test[:, :, None], (length, 1)
    return _bundle_from_arrays(
        "mnist1d", x, y, x_test, y_test, val_fraction=val_fraction, seed=seed, num_classes=10,
        input_shape=shape, task="sequence",
        info={"source": "prunelab.data.mnist1d_gen (the mnist1d recipe)", "num_samples": int(num_samples),
              "test_fraction": float(test_fraction), "iid_noise_scale": float(iid_noise_scale),
              "corr_noise_scale": float(corr_noise_scale), "layout": layout},
    )


register_dataset("digits", load_digits, doc="scikit-learn handwritten digits, 1x8x8, 10 classes (embedded)")
register_dataset("mnist1d", load_mnist1d, doc="MNIST-1D generated locally, 1x40 sequences, 10 classes (embedded)")
