"""MNIST-1D generated in NumPy: the recipe of Greydanus & Kobak (2020), vectorised.

The reference generator (the ``mnist1d`` package, ``mnist1d.data.make_dataset``) transforms one
sample at a time and builds two SciPy interpolators per sample, and importing it imports matplotlib
and requests; generating 10,000 samples takes seconds per process. This module draws the same random
numbers in the same order from a private ``numpy.random.RandomState`` seeded like the reference
(``np.random.seed(42)``), so it returns the reference's arrays (equal to rounding, tested against the
package where it is installed), and does the arithmetic on whole arrays: no SciPy, no global random
state touched.

Per sample of class ``y`` (templates of 12 points, ``mnist1d.data.get_templates``): pad with
36 to 60 zeros, stretch linearly to 72 points, scale by 1 +/- 0.2, rotate by 0 to 47 steps, replace
the zeros by Gaussian-smoothed noise (``corr_noise_scale``, sigma 2), add white noise
(``iid_noise_scale``), shear, and resample linearly to 40 points. Then the set is shuffled,
centred and scaled to unit standard deviation, and split (the last ``1 - train_split`` is the test set).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TEMPLATES = np.asarray([
    [5, 6, 6.5, 6.75, 7, 7, 7, 7, 6.75, 6.5, 6, 5],
    [5, 3, 3, 3.4, 3.8, 4.2, 4.6, 5, 5.4, 5.8, 5, 5],
    [5, 6, 6.5, 6.5, 6, 5.25, 4.75, 4, 3.5, 3.5, 4, 5],
    [5, 6, 6.5, 6.5, 6, 5, 5, 6, 6.5, 6.5, 6, 5],
    [5, 4.4, 3.8, 3.2, 2.6, 2.6, 5, 5, 5, 5, 5, 5],
    [5, 3, 3, 3, 3, 5, 6, 6.5, 6.5, 6, 4.5, 5],
    [5, 4, 3.5, 3.25, 3, 3, 3, 3, 3.25, 3.5, 4, 5],
    [5, 7, 7, 6.6, 6.2, 5.8, 5.4, 5, 4.6, 4.2, 5, 5],
    [5, 4, 3.5, 3.5, 4, 5, 5, 4, 3.5, 3.5, 4, 5],
    [5, 4, 3.5, 3.5, 4, 5, 5, 5, 5, 4.7, 4.3, 5],
])


@dataclass(frozen=True)
class MNIST1DArgs:
    """The generator's settings; the defaults are the reference's (``get_dataset_args``)."""

    num_samples: int = 5000
    train_split: float = 0.8
    template_len: int = 12
    padding: tuple[int, int] = (36, 60)
    scale_coeff: float = 0.4
    max_translation: int = 48
    corr_noise_scale: float = 0.25
    iid_noise_scale: float = 2e-2
    shear_scale: float = 0.75
    final_seq_length: int = 40
    seed: int = 42


def templates() -> np.ndarray:
    """The ten digit templates, whitened and scaled as the reference does (each starts and ends at 0)."""
    x = TEMPLATES.astype(np.float64).copy()
    x -= x.mean(1, keepdims=True)
    x /= x.std(1, keepdims=True)
    x -= x[:, :1]
    return x / 6.0


def _resample(x: np.ndarray, n: int) -> np.ndarray:
    """Linear interpolation of ``x`` (on an even grid over [0, 1]) at ``n`` even points (``interp1d``)."""
    return np.interp(np.linspace(0, 1, n), np.linspace(0, 1, len(x)), x)


def _gaussian_smooth(noise: np.ndarray, sigma: float = 2.0, truncate: float = 4.0) -> np.ndarray:
    """``scipy.ndimage.gaussian_filter1d(noise, sigma, axis=-1)`` with its defaults (mode ``reflect``:
    the edge sample repeated, radius ``int(truncate * sigma + 0.5)``), on every row at once."""
    radius = int(truncate * float(sigma) + 0.5)
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    weights /= weights.sum()
    padded = np.pad(noise, [(0, 0), (radius, radius)], mode="symmetric")
    out = np.zeros_like(noise)
    for w, k in zip(weights, range(2 * radius + 1)):
        out += w * padded[:, k:k + noise.shape[1]]
    return out


def make_dataset(args: MNIST1DArgs = MNIST1DArgs()) -> dict[str, np.ndarray]:
    """``{"x", "y", "x_test", "y_test"}`` as the reference's ``make_dataset(args)`` returns them."""
    rng = np.random.RandomState(args.seed)
    base = templates() + 1e-8  # the reference's eps, so template values are never exactly zero
    low, high = args.padding
    length = args.template_len + high
    per_class = args.num_samples // len(base)
    n = per_class * len(base)
    labels = np.repeat(np.arange(len(base)), per_class)
    pads = np.empty(n, dtype=np.int64)
    scales = np.empty(n)
    shifts = np.empty(n, dtype=np.int64)
    corr = np.empty((n, length))
    iid = np.empty((n, length))
    shears = np.empty(n)
    for i in range(n):  # the reference's draws, in its order
        pads[i] = low + int(rng.rand() * (high - low + 1))
        scales[i] = 1 + args.scale_coeff * (rng.rand() - 0.5)
        shifts[i] = rng.choice(args.max_translation)
        corr[i] = args.corr_noise_scale * rng.randn(length)
        iid[i] = args.iid_noise_scale * rng.randn(length)
        shears[i] = args.shear_scale * (rng.rand() - 0.5)
    x = np.empty((n, length))
    for i in range(n):
        x[i] = _resample(np.concatenate([base[labels[i]], np.zeros(pads[i])]), length)
    x *= scales[:, None]
    x = np.stack([np.roll(row, k) for row, k in zip(x, shifts)])
    signal = x != 0
    x = np.where(signal, x, _gaussian_smooth(corr)) + iid
    x -= shears[:, None] * np.linspace(-0.5, 0.5, length)[None, :]
    x = np.stack([_resample(row, args.final_seq_length) for row in x])
    order = rng.permutation(n)
    x, labels = x[order], labels[order]
    x = (x - x.mean()) / x.std()
    split = int(n * args.train_split)
    return {"x": x[:split], "y": labels[:split], "x_test": x[split:], "y_test": labels[split:]}
