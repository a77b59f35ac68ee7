"""The embedded benchmark: MNIST-1D generated in NumPy (equal to the reference package), its options,
the zoo's families as 1-D networks, and model selection that never reads the test split."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import prunelab.data as D
from prunelab.data.base import Split
from prunelab.data.mnist1d_gen import MNIST1DArgs, _gaussian_smooth, make_dataset
from prunelab.errors import PrunelabError
from prunelab.measure import count_params
from prunelab.models import create, fit_spec, resolve

torch.set_num_threads(1)


@pytest.mark.parametrize("kw", [{"num_samples": 600}, {"num_samples": 1000, "train_split": 0.5,
                                                       "iid_noise_scale": 0.05, "corr_noise_scale": 0.4}])
def test_generator_equals_the_mnist1d_package(kw):
    pytest.importorskip("mnist1d")
    from mnist1d.data import get_dataset_args
    from mnist1d.data import make_dataset as reference

    args = get_dataset_args()
    for k, v in kw.items():
        setattr(args, k, v)
    state = np.random.get_state()
    ref = reference(args)
    np.random.set_state(state)
    before = np.random.get_state()[1].copy()
    ours = make_dataset(MNIST1DArgs(**kw))
    assert np.array_equal(np.random.get_state()[1], before)  # the global generator is left alone
    for key in ("x", "x_test"):
        np.testing.assert_allclose(ours[key], ref[key], rtol=0, atol=1e-12)
    for key in ("y", "y_test"):
        assert np.array_equal(ours[key], ref[key])


def test_smoothing_equals_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    noise = np.random.default_rng(0).normal(size=(5, 72))
    np.testing.assert_allclose(_gaussian_smooth(noise), ndimage.gaussian_filter1d(noise, 2, axis=-1), atol=1e-14)


def test_benchmark_splits_and_noise():
    b = D.load("mnist1d", num_samples=2000, test_fraction=0.5)
    assert len(b.test) == 1000 and len(b.train) + len(b.val) == 1000 and b.input_shape == (1, 40)
    noisy = D.load("mnist1d", num_samples=2000, test_fraction=0.5, iid_noise_scale=0.05)
    assert torch.equal(noisy.test.y, b.test.y) and not torch.allclose(noisy.test.x, b.test.x)
    assert noisy.info["iid_noise_scale"] == 0.05
    for bad in ({"test_fraction": 1.0}, {"iid_noise_scale": -1.0}, {"num_samples": 10**8}):
        with pytest.raises(PrunelabError, match="mnist1d"):
            D.load("mnist1d", **bad)


@pytest.mark.parametrize("name", ["wrn-16-1", "resnet20", "vgg11-bn"])
def test_zoo_families_fit_one_dimensional_signals(name):
    spec = fit_spec(resolve(name), 10, (1, 40))
    assert spec.kwargs["dims"] == 1 and spec.kwargs["in_channels"] == 1
    model = create(spec)
    assert model(torch.randn(2, 1, 40)).shape == (2, 10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Conv1d)]
    assert convs and all(isinstance(m, torch.nn.Conv1d) for m in convs)
    assert "dims" not in fit_spec(resolve(name), 10, (3, 32, 32)).kwargs  # images keep the 2-D default spec


def test_one_dimensional_wrn_counts_by_hand():
    # WRN-16-1 on 1 x 40: kernel 3 instead of 3 x 3; blocks (in, mid, out, projection) per group
    blocks = [(16, 16, 16, False), (16, 16, 16, False), (16, 32, 32, True), (32, 32, 32, False),
              (32, 64, 64, True), (64, 64, 64, False)]
    total = 1 * 16 * 3  # stem
    for cin, mid, cout, proj in blocks:
        total += 2 * cin + cin * mid * 3 + 2 * mid + mid * cout * 3 + (cin * cout if proj else 0)
    total += 2 * 64 + 64 * 10 + 10  # final BN, classifier
    assert count_params(create(fit_spec(resolve("wrn-16-1"), 10, (1, 40)))).params == total == 61018


def test_a_one_dimensional_network_prunes_and_compresses():
    from prunelab.prune.structured import StructuredConfig, StructuredPruner, Target

    spec = fit_spec(resolve("resnet20", depth=8), 10, (1, 40))
    model = create(spec).eval()
    base = count_params(model).params
    pruner = StructuredPruner(model, StructuredConfig(criterion="l1", schedule="oneshot",
                                                      target=Target("params", base // 2)), (1, 40), spec=spec)
    pruner.prune_oneshot()
    small = pruner.compress()  # checked equal to the masked network by the pruner
    assert count_params(small).params <= base // 2 * 1.05 and small(torch.randn(3, 1, 40)).shape == (3, 10)


# ---------------------------------------------------------------- model selection never reads the test split


def _scrambled_test(data):
    g = torch.Generator().manual_seed(1)
    test = Split(torch.randn(data.test.x.shape, generator=g), torch.randint(0, data.num_classes, data.test.y.shape,
                                                                            generator=g))
    return dataclasses.replace(data, test=test)


def test_training_is_the_same_whatever_the_test_split_holds():
    from prunelab.train import TrainConfig, train

    data = D.load("digits")
    states = []
    for bundle in (data, _scrambled_test(data)):
        torch.manual_seed(0)
        model = create(fit_spec(resolve("mlp"), 10, (1, 8, 8)))
        result = train(model, bundle, TrainConfig(epochs=2, batch_size=128, lr=0.05, progress=False, seed=0))
        states.append((model.state_dict(), [r["val_acc"] for r in result.history], result.final["test_acc"]))
    (a, val_a, test_a), (b, val_b, test_b) = states
    assert all(torch.equal(a[k], b[k]) for k in a) and val_a == val_b  # the model reported is the last epoch's
    assert test_a != test_b


def test_pfs_gate_selection_never_reads_the_test_split():
    from prunelab.protocols import PFSConfig, learn_gates
    from prunelab.train import TrainConfig

    data = D.load("digits")
    cfg = PFSConfig(epochs=3, batch_size=64, ratio=0.5)
    runs = []
    for bundle in (data, _scrambled_test(data)):
        learning, _ = learn_gates("cnn", bundle, cfg, TrainConfig(seed=0, progress=False))
        runs.append(learning)
    a, b = runs
    assert a.selected_by == b.selected_by and a.selected_epoch == b.selected_epoch
    assert a.history == b.history and all(torch.equal(a.gates[k], b.gates[k]) for k in a.gates)
