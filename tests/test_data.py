"""Datasets: embedded sets, real formats written as small fixtures, synthetic data, the batch pipeline."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import random
import socket
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import prunelab.data as D
from prunelab.data.base import Augment
from prunelab.data.pipeline import augment_batch, crop_flip, draw_augment_params, pad_batch
from prunelab.errors import PrunelabError

PFS_MEAN = np.array([0.4914, 0.4822, 0.4465])
PFS_STD = np.array([0.2023, 0.1994, 0.2010])


# ----------------------------------------------------------------------------------------- registry
def test_registry_lists_every_dataset_and_rejects_unknown_names_and_options():
    assert D.list_datasets() == sorted(["cifar10", "cifar100", "corpus", "digits", "har", "imagefolder",
                                        "imagefolder-stream", "mnist1d", "synthetic", "tar-shards", "tokens"])
    with pytest.raises(PrunelabError, match="valid choices: cifar10, cifar100, corpus, digits"):
        D.load("imagenet")
    with pytest.raises(PrunelabError, match="unknown option.*'colour'.*valid options: test_fraction"):
        D.load("digits", colour=1)
    with pytest.raises(PrunelabError, match="pass root="):
        D.load("cifar10")


# ----------------------------------------------------------------------------------------- embedded
def test_digits_splits_are_fixed_stratified_and_normalised():
    from sklearn.datasets import load_digits

    raw = load_digits()
    a, b = D.load("digits"), D.load("digits")
    assert a.input_shape == (1, 8, 8) and a.num_classes == 10 and a.task == "image"
    assert len(a.train) + len(a.val) + len(a.test) == len(raw.target) == 1797
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert a.train.x.dtype == torch.float32 and a.train.y.dtype == torch.int64
    # stratified: every class keeps its share in the test split (within one sample)
    counts = np.bincount(raw.target, minlength=10)
    test_counts = np.bincount(a.test.y.numpy(), minlength=10)
    assert np.all(np.abs(test_counts - 0.2 * counts) <= 1)
    # normalised with the training split's statistics
    assert abs(float(a.train.x.mean())) < 1e-4 and abs(float(a.train.x.std()) - 1) < 1e-2
    # the pixels are the sklearn pixels under one affine map
    mean, std = a.info["mean"][0], a.info["std"][0]
    pixels = set(np.round(a.test.x.numpy().ravel() * std + mean, 4).tolist())
    assert pixels <= {float(v) for v in range(17)}
    # a different seed moves the validation split, never the test split
    c = D.load("digits", seed=1)
    assert torch.equal(c.test.y, a.test.y) and not torch.equal(c.val.y, a.val.y)


def test_mnist1d_is_generated_locally_without_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("mnist1d tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    random.seed(5)
    np.random.seed(5)
    py_before, np_before = random.random(), np.random.rand()
    random.seed(5)
    np.random.seed(5)
    b = D.load("mnist1d", num_samples=500)
    assert (random.random(), np.random.rand()) == (py_before, np_before), "global RNGs were disturbed"
    assert b.input_shape == (1, 40) and b.num_classes == 10 and b.task == "sequence"
    assert len(b.train) + len(b.val) == 400 and len(b.test) == 100

    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = 500
    ref = make_dataset(args)
    np.testing.assert_allclose(b.test.x[:, 0].numpy(), ref["x_test"].astype(np.float32))
    assert b.test.y.tolist() == ref["y_test"].tolist()
    t = D.load("mnist1d", num_samples=500, layout="time")
    assert t.input_shape == (40, 1) and torch.equal(t.test.x[..., 0], b.test.x[:, 0])


# ------------------------------------------------------------------------------------------- CIFAR
class Py2Pickler(pickle._Pickler):
    """Writes byte strings as Python 2's cPickle wrote ``str`` (BINSTRING), as in the official CIFAR files."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def py2_dumps(obj: dict) -> bytes:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump({k.encode(): v for k, v in obj.items()})
    return buf.getvalue()


def _cifar_batch(n: int, rng: np.random.Generator, label_key: str, num_classes: int) -> tuple[dict, np.ndarray]:
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = rng.integers(0, num_classes, size=n).tolist()
    names = [f"{i}.png" for i in range(n)]
    return {"batch_label": "fixture", label_key: labels, "data": data, "filenames": names}, data


def write_cifar10(root: Path, per_batch: int = 6, n_test: int = 5, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = []
    for i in range(1, 6):
        batch, _ = _cifar_batch(per_batch, rng, "labels", 10)
        batches.append(batch)
        (folder / f"data_batch_{i}").write_bytes(py2_dumps(batch))
    test, _ = _cifar_batch(n_test, rng, "labels", 10)
    (folder / "test_batch").write_bytes(py2_dumps(test))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(py2_dumps({"label_names": [n.encode() for n in names]}))
    return {"train": batches, "test": test, "folder": folder}


def _tar(folder: Path, archive: Path) -> None:
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(folder, arcname=folder.name)


def test_cifar10_folder_values_labels_and_val_split(tmp_path):
    fx = write_cifar10(tmp_path)
    b = D.load("cifar10", tmp_path)
    assert b.input_shape == (3, 32, 32) and b.num_classes == 10 and len(b.train) == 30 and len(b.test) == 5
    assert len(b.val) == 0 and b.info["class_names"][3] == "cat"
    # hand computation of one pixel: channel planes are R, G, B of 1024 values each, row-major
    raw = fx["train"][1]["data"][2]  # 3rd image of data_batch_2 -> training index 6 + 2
    img = raw.reshape(3, 32, 32).astype(np.float64) / 255.0
    expect = (img - PFS_MEAN[:, None, None]) / PFS_STD[:, None, None]
    np.testing.assert_allclose(b.train.x[8].numpy(), expect, rtol=1e-5, atol=1e-5)
    assert b.train.y[8].item() == fx["train"][1]["labels"][2]
    assert b.test.y.tolist() == fx["test"]["labels"]
    assert b.augment == Augment(pad=4, flip=True, pad_mode="reflect", fill=tuple(-PFS_MEAN / PFS_STD))
    # PFS 45k/5k convention at fixture scale: the last N training images are the validation split
    v = D.load("cifar10", tmp_path / "cifar-10-batches-py", val_size=4)
    assert len(v.train) == 26 and len(v.val) == 4
    assert torch.equal(v.val.x, b.train.x[26:]) and torch.equal(v.train.x, b.train.x[:26])
    prunes = D.load("cifar10", tmp_path, normalization="pytorch-prunes")
    m, s = np.array([125.3, 123.0, 113.9]) / 255, np.array([63.0, 62.1, 66.7]) / 255
    np.testing.assert_allclose(prunes.train.x[8].numpy(), (img - m[:, None, None]) / s[:, None, None], atol=1e-5)


def test_cifar10_archive_is_read_without_extracting(tmp_path):
    fx = write_cifar10(tmp_path / "src")
    archive = tmp_path / "data" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    _tar(fx["folder"], archive)
    from_dir = D.load("cifar10", tmp_path / "src")
    for root in (archive.parent, archive):
        from_tar = D.load("cifar10", root)
        assert torch.equal(from_tar.train.x, from_dir.train.x) and torch.equal(from_tar.test.y, from_dir.test.y)
    assert sorted(p.name for p in archive.parent.iterdir()) == ["cifar-10-python.tar.gz"]


def test_cifar100_fine_labels(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    train, _ = _cifar_batch(12, rng, "fine_labels", 100)
    train["fine_labels"] = [97, 3, 50] * 4
    train["coarse_labels"] = [0] * 12
    test, _ = _cifar_batch(4, rng, "fine_labels", 100)
    test["coarse_labels"] = [0] * 4
    (folder / "train").write_bytes(pickle.dumps(train, protocol=2))
    (folder / "test").write_bytes(pickle.dumps(test, protocol=2))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"c{i}" for i in range(100)]}, protocol=2))
    _tar(folder, tmp_path / "cifar-100-python.tar.gz")
    b = D.load("cifar100", tmp_path / "cifar-100-python.tar.gz", val_fraction=0.25)
    assert b.num_classes == 100 and len(b.train) == 9 and len(b.val) == 3 and sorted(b.val.y.tolist()) == [3, 50, 97]
    assert sorted(b.train.y.tolist() + b.val.y.tolist()) == sorted(train["fine_labels"])
    assert b.test.y.tolist() == test["fine_labels"] and b.info["class_names"][7] == "c7"


def test_cifar_missing_corrupt_and_malicious_files(tmp_path):
    with pytest.raises(PrunelabError, match=r"CIFAR-10 not found under .*put cifar-10-python.tar.gz or "
                                            r"cifar-10-batches-py/ there"):
        D.load("cifar10", tmp_path)
    fx = write_cifar10(tmp_path / "a")
    # truncated pickle
    (fx["folder"] / "data_batch_3").write_bytes((fx["folder"] / "data_batch_3").read_bytes()[:500])
    with pytest.raises(PrunelabError, match="data_batch_3 is corrupt"):
        D.load("cifar10", tmp_path / "a")
    # a pickle that would run a command is refused before anything runs
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (fx["folder"] / "data_batch_3").write_bytes(pickle.dumps({"data": Evil()}, protocol=2))
    with pytest.raises(PrunelabError, match="not allowed"):
        D.load("cifar10", tmp_path / "a")
    assert not marker.exists()
    # wrong array shape
    (fx["folder"] / "data_batch_3").write_bytes(pickle.dumps({"data": np.zeros((2, 10), np.uint8),
                                                              "labels": [0, 1]}, protocol=2))
    with pytest.raises(PrunelabError, match=r"shape \(N, 3072\)"):
        D.load("cifar10", tmp_path / "a")
    # missing batch file
    (fx["folder"] / "data_batch_3").unlink()
    with pytest.raises(PrunelabError, match="incomplete: data_batch_3 is missing"):
        D.load("cifar10", tmp_path / "a")
    # truncated archive
    good = write_cifar10(tmp_path / "b")
    archive = tmp_path / "c" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    _tar(good["folder"], archive)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(PrunelabError, match="archive .* is corrupt or truncated"):
        D.load("cifar10", archive.parent)
    gz = tmp_path / "d" / "cifar-10-python.tar.gz"
    gz.parent.mkdir()
    gz.write_bytes(gzip.compress(b"not a tar file at all"))
    with pytest.raises(PrunelabError, match="corrupt or truncated"):
        D.load("cifar10", gz)


# -------------------------------------------------------------------------------------- imagefolder
def _png(path: Path, color: tuple[int, int, int], size=(12, 10)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def write_imagefolder(root: Path) -> None:
    colors = {"cat": (200, 30, 10), "dog": (10, 220, 40)}
    for cls, color in colors.items():
        for i in range(3):
            _png(root / "train" / cls / f"{i}.png", color)
        _png(root / "val" / cls / "0.png", color)


def test_imagefolder_loads_classes_in_sorted_order(tmp_path):
    write_imagefolder(tmp_path)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    b = D.load("imagefolder", tmp_path, size=8)
    assert b.input_shape == (3, 8, 8) and b.num_classes == 2 and b.info["class_names"] == ["cat", "dog"]
    assert len(b.train) == 6 and len(b.test) == 2 and b.test.y.tolist() == [0, 1]
    # constant-colour images stay constant; undo the normalisation and compare with the colour by hand
    mean, std = np.array(b.info["mean"]), np.array(b.info["std"])
    raw = b.test.x.numpy() * std[None, :, None, None] + mean[None, :, None, None]
    np.testing.assert_allclose(raw[0], np.broadcast_to(np.array([200, 30, 10])[:, None, None] / 255, (3, 8, 8)),
                               atol=1e-5)
    # the per-channel mean of the training split is the mean colour
    np.testing.assert_allclose(mean, (np.array([200, 30, 10]) + np.array([10, 220, 40])) / 2 / 255, atol=1e-6)
    assert b.augment.pad == 1 and b.augment.flip
    grey = D.load("imagefolder", tmp_path, size=8, channels=1)
    assert grey.input_shape == (1, 8, 8)


def test_imagefolder_layout_and_corrupt_errors(tmp_path):
    with pytest.raises(PrunelabError, match="missing train/ folder.*expected .*/train/<class>/<images>"):
        D.load("imagefolder", tmp_path)
    write_imagefolder(tmp_path)
    _png(tmp_path / "val" / "bird" / "0.png", (0, 0, 0))
    with pytest.raises(PrunelabError, match="class folder 'bird' in val/ has no counterpart in train/"):
        D.load("imagefolder", tmp_path, size=8)
    (tmp_path / "val" / "bird" / "0.png").unlink()
    (tmp_path / "val" / "bird").rmdir()
    (tmp_path / "train" / "dog" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with pytest.raises(PrunelabError, match=r"image .*dog/1.png is corrupt"):
        D.load("imagefolder", tmp_path, size=8)


# ------------------------------------------------------------------------------------------ UCI-HAR
def write_har(root: Path, n_train: int = 8, n_test: int = 6, seed: int = 0) -> dict:
    from prunelab.data.har import SIGNALS

    rng = np.random.default_rng(seed)
    base = root / "UCI HAR Dataset"
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        signals = {}
        (base / split / "Inertial Signals").mkdir(parents=True)
        for c, sig in enumerate(SIGNALS):
            values = (10 * c + rng.normal(size=(n, 128))).astype(np.float32)
            signals[sig] = values
            lines = "\n".join("  " + "  ".join(f"{v:.7e}" for v in row) for row in values)
            (base / split / "Inertial Signals" / f"{sig}_{split}.txt").write_text(lines + "\n")
        labels = (np.arange(n) % 6) + 1
        (base / split / f"y_{split}.txt").write_text("\n".join(str(v) for v in labels) + "\n")
        subjects = np.repeat(np.arange(1, n // 2 + 1), 2)[:n]
        (base / split / f"subject_{split}.txt").write_text("\n".join(str(v) for v in subjects) + "\n")
        out[split] = (signals, labels, subjects)
    return out


def test_har_sequences_channel_order_normalisation_and_har2(tmp_path):
    from prunelab.data.har import SIGNALS

    fx = write_har(tmp_path)
    b = D.load("har", tmp_path, val_fraction=0.0)
    assert b.input_shape == (128, 9) and b.num_classes == 6 and b.task == "sequence"
    assert b.train.y.tolist() == (fx["train"][1] - 1).tolist()
    raw = np.stack([fx["train"][0][s] for s in SIGNALS], axis=-1).astype(np.float64)
    mean, std = raw.mean(axis=(0, 1)), raw.std(axis=(0, 1))
    np.testing.assert_allclose(b.train.x.numpy(), (raw - mean) / std, atol=1e-4)
    # HAR-2 (Kusupati et al. 2018): {Sitting, Laying, Walking_Upstairs} vs {Standing, Walking, Walking_Downstairs}
    h2 = D.load("har", tmp_path, binary=True, val_fraction=0.0)
    by_name = {"WALKING": 1, "WALKING_UPSTAIRS": 0, "WALKING_DOWNSTAIRS": 1, "SITTING": 0, "STANDING": 1, "LAYING": 0}
    names = ["WALKING", "WALKING_UPSTAIRS", "WALKING_DOWNSTAIRS", "SITTING", "STANDING", "LAYING"]
    assert h2.num_classes == 2
    assert h2.test.y.tolist() == [by_name[names[v - 1]] for v in fx["test"][1]]
    # validation by subject: int(4 subjects * 0.1 + 1) = 1 subject held out, disjoint from training
    v = D.load("har", tmp_path, val_fraction=0.1)
    assert len(v.val) == 2 and len(v.train) == 6


def test_har_missing_and_corrupt(tmp_path):
    with pytest.raises(PrunelabError, match="UCI-HAR not found under .*extract 'UCI HAR Dataset.zip' there"):
        D.load("har", tmp_path)
    write_har(tmp_path)
    f = tmp_path / "UCI HAR Dataset" / "test" / "Inertial Signals" / "body_gyro_y_test.txt"
    f.write_text(" ".join(["1.0"] * 100))
    with pytest.raises(PrunelabError, match="body_gyro_y_test.txt is corrupt: line 1 has 100 values, expected 128"):
        D.load("har", tmp_path)
    f.write_text("\n".join([" ".join(["1.0"] * 128)] * 2))
    with pytest.raises(PrunelabError, match="body_gyro_y_test.txt is corrupt: expected 6 rows of 128"):
        D.load("har", tmp_path)
    f.write_text("1.0 abc\n")
    with pytest.raises(PrunelabError, match="body_gyro_y_test.txt is corrupt"):
        D.load("har", tmp_path)


# ---------------------------------------------------------------------------------------- synthetic
def test_synthetic_shapes_determinism_and_learnable_signal():
    a = D.load("synthetic", shape="3x16x16", n_train=400, n_val=50, n_test=200, seed=3)
    b = D.load("synthetic", shape=(3, 16, 16), n_train=400, n_val=50, n_test=200, seed=3)
    c = D.load("synthetic", shape=(3, 16, 16), n_train=400, n_val=50, n_test=200, seed=4)
    assert torch.equal(a.train.x, b.train.x) and not torch.equal(a.train.x, c.train.x)
    assert a.train.x.shape == (400, 3, 16, 16) and len(a.val) == 50 and a.augment.pad == 2
    # a nearest-class-mean rule fitted on train beats chance by far on test (independent of prunelab)
    means = torch.stack([a.train.x[a.train.y == k].mean(0) for k in range(10)]).flatten(1)
    pred = torch.cdist(a.test.x.flatten(1), means).argmin(1)
    assert (pred == a.test.y).float().mean() > 0.6
    seq = D.load("synthetic", shape="32x5", n_train=64, n_val=0, n_test=8)
    vec = D.load("synthetic", shape=[7], n_train=64, n_val=0, n_test=8)
    assert seq.task == "sequence" and seq.train.x.shape == (64, 32, 5) and not seq.augment.active
    assert vec.task == "vector" and vec.train.x.shape == (64, 7) and len(vec.val) == 0
    with pytest.raises(PrunelabError, match="1 to 3 positive dimensions"):
        D.load("synthetic", shape="1x2x3x4")


# ------------------------------------------------------------------------------------------ pipeline
def test_crop_flip_matches_per_sample_slicing():
    x = torch.randn(5, 3, 6, 7)
    dy, dx = torch.tensor([0, 1, 4, 2, 3]), torch.tensor([4, 0, 2, 1, 3])
    flip = torch.tensor([True, False, True, False, False])
    for mode in ("reflect", "zeros"):
        out = crop_flip(pad_batch(x, 2, mode), 6, 7, dy, dx, flip)
        ref = F.pad(x, (2, 2, 2, 2), mode="reflect" if mode == "reflect" else "constant")
        for i in range(5):
            crop = ref[i, :, dy[i]:dy[i] + 6, dx[i]:dx[i] + 7]
            assert torch.equal(out[i], crop.flip(-1) if flip[i] else crop)


def test_zero_padding_fills_with_the_normalised_black_pixel():
    fill = (-1.0, -2.0, 0.5)
    padded = pad_batch(torch.zeros(1, 3, 2, 2), 1, "zeros", fill)
    assert padded[0, :, 0, 0].tolist() == list(fill) and padded[0, :, 1, 1].tolist() == [0.0, 0.0, 0.0]


def test_augment_batch_equals_a_per_sample_reference_with_the_same_draws():
    x = torch.randn(16, 3, 8, 8)
    aug = Augment(pad=2, flip=True, pad_mode="reflect")
    out = augment_batch(x, aug, torch.Generator().manual_seed(7))
    dy, dx, flip = draw_augment_params(16, aug, torch.Generator().manual_seed(7))
    for i in range(16):
        img = F.pad(x[i:i + 1], (2, 2, 2, 2), mode="reflect")[0, :, dy[i]:dy[i] + 8, dx[i]:dx[i] + 8]
        assert torch.equal(out[i], img.flip(-1) if flip[i] else img)
    assert augment_batch(torch.randn(4, 10, 3), aug).shape == (4, 10, 3)  # sequences pass through
    # shifts uniform on 0..2*pad and flips with probability 1/2, independently
    dy, dx, flip = draw_augment_params(50_000, aug, torch.Generator().manual_seed(0))
    for d in (dy, dx):
        counts = torch.bincount(d, minlength=5).float() / 50_000
        assert d.min() == 0 and d.max() == 4 and torch.allclose(counts, torch.full((5,), 0.2), atol=0.01)
    assert abs(flip.float().mean() - 0.5) < 0.01 and abs(flip[dy == 0].float().mean() - 0.5) < 0.02
    _, _, never = draw_augment_params(100, Augment(pad=2, flip=False), torch.Generator().manual_seed(0))
    assert not never.any()


def test_batches_iterates_a_split_in_order():
    b = D.load("synthetic", shape="4", n_train=10, n_val=0, n_test=7)
    got = list(D.batches(b, "test", 3))
    assert [len(y) for _, y in got] == [3, 3, 1]
    assert torch.equal(torch.cat([x for x, _ in got]), b.test.x)


def test_restricted_unpickler_accepts_python2_style_bytes():
    from prunelab.data.cifar import safe_unpickle

    arr = np.arange(6, dtype=np.uint8).reshape(2, 3)
    payload = pickle.dumps({b"data": arr, b"labels": [1, 2]}, protocol=2)
    obj = safe_unpickle(payload)
    assert np.array_equal(obj[b"data"], arr)
    buf = io.BytesIO()
    pickle.dump({"x": eval}, buf, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="eval is not allowed"):
        safe_unpickle(buf.getvalue())


@pytest.mark.parametrize(("edit", "message"), [
    (lambda rows: rows[:3] + [rows[3].rsplit(None, 1)[0], rows[4] + " 0.5"] + rows[5:], "line 4 has 127 values"),
    (lambda rows: [rows[0].replace(rows[0].split()[5], "nan", 1)] + rows[1:], "line 1 holds nan"),
    (lambda rows: rows[:2] + [rows[2].replace(rows[2].split()[0], "1e99", 1)] + rows[3:], "line 3 holds inf"),
])
def test_har_rows_must_be_whole_and_finite(tmp_path, edit, message):
    """A row of the wrong length shifts every later window even when the total count still fits; a
    NaN or inf would poison its channel's normalisation: both are refused with the line."""
    write_har(tmp_path)
    path = tmp_path / "UCI HAR Dataset" / "train" / "Inertial Signals" / "body_acc_x_train.txt"
    path.write_text("\n".join(edit(path.read_text().splitlines())) + "\n")
    with pytest.raises(PrunelabError, match=message):
        D.load("har", tmp_path)


def test_imagefolder_skips_hidden_files_and_refuses_decompression_bombs(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("a", "b"):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            Image.new("RGB", (12, 12), (40, 80, 120)).save(d / "x.png")
            (d / "._x.png").write_bytes(b"\x00\x05\x16\x07 macOS metadata")
    b = D.load("imagefolder", tmp_path, size=8)
    assert len(b.train) + len(b.val) == 2 and len(b.test) == 2
    bomb = tmp_path / "train" / "a" / "bomb.png"
    Image.new("L", (200, 200)).save(bomb)
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 100  # Pillow's own guard, lowered so a small file trips it
    try:
        with pytest.raises(PrunelabError, match="too large to decode safely"):
            D.load("imagefolder", tmp_path, size=8)
    finally:
        Image.MAX_IMAGE_PIXELS = limit


@pytest.mark.parametrize(("options", "message"), [
    ({"flip": "maybe"}, "option 'flip' must be true or false"),
    ({"pad": "abc"}, "option 'pad' must be a whole number"),
    ({"pad": -3}, "pad must be a whole number of pixels >= 0"),
    ({"pad": 100}, "must be smaller than the 16x16 images"),
])
def test_data_options_are_checked_against_their_types_and_ranges(options, message):
    with pytest.raises(PrunelabError, match=message):
        D.load("synthetic", shape="3x16x16", n_train=32, n_val=8, n_test=8, **options)
