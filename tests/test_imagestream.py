"""Streamed image folders and tar shards: the ImageNet crops and colour ops against hand computations,
memory that does not grow with the folder, corrupt files, unsafe shards, mismatched classes."""

from __future__ import annotations

import io
import json
import random
import subprocess
import sys
import tarfile
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

import prunelab.data as D
from prunelab.data.imagenet import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PCA_EIGVAL,
    PCA_EIGVEC,
    EvalCrop,
    ImageNetBatch,
    TrainCrop,
    color_jitter,
    pca_lighting,
    random_resized_box,
)
from prunelab.data.shards import write_shards
from prunelab.errors import PrunelabError


def make_folder(root, n_train: int, n_val: int = 4, size=(40, 30), classes=("cat", "dog"), seed: int = 0):
    """An ImageNet-style folder of random JPEGs: n_train (and n_val) images per class."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                a = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
                Image.fromarray(a).save(d / f"{c}_{i:05d}.jpg", quality=80)
    return root


SMALL = {"size": 16, "resize": 18, "workers": 0}


# ------------------------------------------------------------------------------------------- crops
def test_random_resized_boxes_stay_inside_the_image_in_the_scale_and_ratio_ranges():
    rng = random.Random(0)
    for _ in range(300):  # images whose own aspect ratio is in range: a fallback is the whole image
        w = rng.randint(100, 600)
        h = int(w * rng.uniform(3 / 4, 4 / 3))
        left, top, cw, ch = random_resized_box(w, h, (0.25, 1.0), (3 / 4, 4 / 3), rng)
        assert left >= 0 and left + cw <= w and top >= 0 and top + ch <= h
        if (cw, ch) != (w, h):  # not the fallback
            assert 0.25 * w * h * 0.8 <= cw * ch <= w * h * 1.05
            assert 3 / 4 * 0.8 <= cw / ch <= 4 / 3 * 1.25
    # a 400x10 strip fits no crop of scale >= 0.9 and ratio <= 4/3: the largest centred one in ratio
    assert random_resized_box(400, 10, (0.9, 1.0), (3 / 4, 4 / 3), random.Random(1)) == (193, 0, 13, 10)


def test_the_evaluation_crop_is_resize_256_then_centre_crop_224_by_hand():
    rng = np.random.default_rng(0)
    img = Image.fromarray((rng.random((375, 500, 3)) * 255).astype(np.uint8))
    out = EvalCrop(224, 256)(img)
    # shorter side 375 -> 256, longer 500 -> int(256 * 500 / 375) = 341; top round(32/2) = 16, left round(117/2) = 58
    expected = img.resize((341, 256), Image.BILINEAR).crop((58, 16, 282, 240))
    assert out.size == (224, 224) and np.array_equal(np.asarray(out), np.asarray(expected))
    tall = Image.fromarray((rng.random((500, 300, 3)) * 255).astype(np.uint8))
    assert np.array_equal(np.asarray(EvalCrop(224, 256)(tall)),
                          np.asarray(tall.resize((256, 426), Image.BILINEAR).crop((16, 101, 240, 325))))


def test_the_training_crop_is_the_drawn_box_resized_and_flipped_by_its_seed():
    rng = np.random.default_rng(1)
    img = Image.fromarray((rng.random((60, 80, 3)) * 255).astype(np.uint8))
    crop = TrainCrop(32, (0.08, 1.0), flip=True)
    r = random.Random(7)
    left, top, w, h = random_resized_box(80, 60, (0.08, 1.0), (3 / 4, 4 / 3), r)
    flipped = r.random() < 0.5
    expected = img.crop((left, top, left + w, top + h)).resize((32, 32), Image.BILINEAR)
    if flipped:
        expected = expected.transpose(Image.FLIP_LEFT_RIGHT)
    out = crop(img, random.Random(7))
    assert np.array_equal(np.asarray(out), np.asarray(expected))
    assert np.array_equal(np.asarray(crop(img, random.Random(7))), np.asarray(out))


def _gray(img):
    return 0.2989 * img[0] + 0.587 * img[1] + 0.114 * img[2]


def test_colour_jitter_and_lighting_match_per_image_formulas():
    x = torch.rand(6, 3, 5, 4, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    out = color_jitter(x, 0.4, 0.4, 0.4, g)
    g.manual_seed(3)  # the same draws, replayed one image at a time
    u = torch.rand(6, 3, generator=g, dtype=torch.float64)
    order = torch.rand(6, 3, generator=g).argsort(1)
    for n in range(6):
        img = x[n].clone()
        for op in order[n].tolist():
            f = 0.6 + 0.8 * float(u[n, op])
            if op == 0:
                img = (f * img).clamp(0, 1)
            elif op == 1:
                img = (f * img + (1 - f) * float(_gray(img).mean())).clamp(0, 1)
            else:
                img = (f * img + (1 - f) * _gray(img)).clamp(0, 1)
        assert torch.allclose(out[n], img, atol=1e-12)
    g.manual_seed(5)
    lit = pca_lighting(x, 0.1, g)
    g.manual_seed(5)
    alpha = torch.randn(6, 3, generator=g, dtype=torch.float64) * 0.1
    for n in range(6):
        rgb = [sum(PCA_EIGVEC[c][k] * float(alpha[n, k]) * PCA_EIGVAL[k] for k in range(3)) for c in range(3)]
        assert torch.allclose(lit[n], x[n] + torch.tensor(rgb, dtype=torch.float64).view(3, 1, 1), atol=1e-12)
    # evaluation: uint8 -> [0, 1] -> ImageNet normalisation, no random op
    pixel = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    want = [(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
    assert torch.allclose(ImageNetBatch(0.4, 0.1)(pixel, None)[0, :, 0, 0], torch.tensor(want))


# ------------------------------------------------------------------------------------------ folders
def test_a_streamed_folder_has_the_layout_splits_and_gives_the_same_batches_with_any_workers(tmp_path):
    root = make_folder(tmp_path / "f", 9, 3)
    data = D.load("imagefolder-stream", root, val_per_class=2, jitter=0.4, lighting=0.1, **SMALL)
    assert (data.num_classes, len(data.train), len(data.val), len(data.test)) == (2, 14, 4, 6)
    assert data.info["class_names"] == ["cat", "dog"] and data.input_shape == (3, 16, 16)
    assert data.val.dataset.crop is data.val.dataset.eval_crop  # held-out images get the evaluation crop
    a = D.Feed(data, batch_size=4)
    b = D.Feed(D.load("imagefolder-stream", root, val_per_class=2, jitter=0.4, lighting=0.1, size=16, resize=18,
                      workers=2), batch_size=4)
    first = [(x, y) for x, y in a.epoch(1)]
    second = [(x, y) for x, y in b.epoch(1)]
    assert len(first) == 4 and all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1])
                                   for p, q in zip(first, second))
    assert not torch.equal(first[0][0], next(iter(a.epoch(2)))[0])  # a new epoch, new crops
    tests = [x for x, _ in a.evaluation("test", 4)]
    assert sum(len(x) for x in tests) == 6 and all(x.shape[1:] == (3, 16, 16) for x in tests)


def test_tar_shards_give_the_folders_numbers_and_refuse_unsafe_members(tmp_path):
    root = make_folder(tmp_path / "f", 5, 2)
    counts = write_shards(root, tmp_path / "s", samples_per_shard=3)
    assert counts == {"train": 4, "val": 2}
    folder = D.Feed(D.load("imagefolder-stream", root, **SMALL), batch_size=4)
    shards = D.Feed(D.load("tar-shards", tmp_path / "s", **SMALL), batch_size=4)
    assert shards.data.info["class_names"] == ["cat", "dog"]
    for (x1, y1), (x2, y2) in zip(folder.epoch(0), shards.epoch(0), strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)

    def shard(members, mode="w"):
        bad = tmp_path / f"bad{len(list(tmp_path.iterdir()))}"
        (bad / "x").mkdir(parents=True)
        for split in ("train", "val"):
            with tarfile.open(bad / f"{split}-000000.tar", mode) as tar:
                for info, data in members:
                    tar.addfile(info, io.BytesIO(data) if data is not None else None)
        return bad

    def member(name, data=b"", kind=tarfile.REGTYPE):
        info = tarfile.TarInfo(name)
        info.type, info.size = kind, len(data) if kind == tarfile.REGTYPE else 0
        if kind == tarfile.SYMTYPE:
            info.linkname = "/etc/passwd"
        return info, data if kind == tarfile.REGTYPE else None

    jpg = (root / "train" / "cat" / "cat_00000.jpg").read_bytes()
    cases = {
        "unsafe path": [member("../evil.jpg", jpg), member("../evil.cls", b"0")],
        "link or device": [member("a.jpg", kind=tarfile.SYMTYPE)],
        "no .cls label": [member("a.jpg", jpg)],
        "not a class index": [member("a.jpg", jpg), member("a.cls", b"cat")],
    }
    for problem, members in cases.items():
        with pytest.raises(PrunelabError, match=problem):
            D.load("tar-shards", shard(members), **SMALL)
    with pytest.raises(PrunelabError, match="not a plain tar file"):
        D.load("tar-shards", shard([member("a.jpg", jpg), member("a.cls", b"0")], mode="w:gz"), **SMALL)


def test_bad_folders_are_one_line_errors(tmp_path):
    empty = tmp_path / "empty"
    (empty / "train" / "a").mkdir(parents=True)
    (empty / "train" / "b").mkdir()
    (empty / "val").mkdir()
    with pytest.raises(PrunelabError, match="class folder train/a holds no images"):
        D.load("imagefolder-stream", empty)
    root = make_folder(tmp_path / "f", 3, 1)
    (root / "val" / "eel").mkdir()
    with pytest.raises(PrunelabError, match="class folder 'eel' in val/ has no counterpart in train/"):
        D.load("imagefolder-stream", root)
    with pytest.raises(PrunelabError, match="would leave none for training"):
        D.load("imagefolder-stream", make_folder(tmp_path / "g", 3, 1), val_per_class=3)


def test_a_corrupt_jpeg_mid_epoch_stops_with_its_name_or_is_skipped_and_counted(tmp_path, capsys):
    from prunelab.cli import main

    root = make_folder(tmp_path / "f", 8, 2)
    broken = root / "train" / "dog" / "dog_00003.jpg"
    broken.write_bytes(broken.read_bytes()[:200])  # truncated in the middle of its scan data
    out = tmp_path / "m.pt"
    args = ["train", "cnn", "--data", "imagefolder-stream", "--data-root", str(root), "--data-option", "size=16",
            "--data-option", "resize=18", "--data-option", "workers=0", "--epochs", "2", "--batch-size", "4",
            "--device", "cpu", "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "dog_00003.jpg cannot be read" in err and "corrupt=skip" in err, err
    assert not out.exists()
    assert main([*args, "--data-option", "corrupt=skip"]) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert err.count("skipped 1 unreadable sample(s)") == 2 and "dog_00003.jpg" in err  # once per epoch
    assert out.is_file()
    # a folder whose classes are not the recorded model's: one line, exit 2, nothing written
    other = make_folder(tmp_path / "o", 2, 1, classes=("ant", "bee"))
    again = tmp_path / "again.pt"
    assert main(["train", str(out), "--data", "imagefolder-stream", "--data-root", str(other), "--data-option",
                 "size=16", "--data-option", "resize=18", "--data-option", "workers=0", "--epochs", "1",
                 "--device", "cpu", "--out", str(again)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "was trained on classes cat, dog but dataset imagefolder-stream has ant, bee" in err
    assert not again.exists()


PEAK = textwrap.dedent('''
    import json, sys
    import torch
    import prunelab.data as D
    torch.set_num_threads(1)

    def status(key):  # KiB, from the kernel's accounting of this process
        with open("/proc/self/status") as fh:
            return int(next(line for line in fh if line.startswith(key)).split()[1])

    name, peaks = sys.argv[1], []
    for root in sys.argv[2:]:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset the peak resident size (VmHWM) to the current one
        before = status("VmRSS:")
        options = {"size": 64, "resize": 72, "workers": 0} if name == "imagefolder-stream" else {"size": 64}
        data = D.load(name, root, **options)
        feed = D.Feed(data, batch_size=16)
        for _ in range(2):
            for x, y in feed.epoch(0):
                pass
        for x, y in feed.evaluation("test", 16):
            pass
        del data, feed
        peaks.append(status("VmHWM:") - before)  # peak growth while loading and reading this folder
    print(json.dumps(peaks))
''')


def test_peak_memory_of_a_streamed_folder_does_not_grow_with_the_number_of_images(tmp_path):
    small = make_folder(tmp_path / "small", 24, 4, size=(96, 72))
    large = make_folder(tmp_path / "large", 216, 4, size=(96, 72), seed=1)
    script = tmp_path / "peak.py"
    script.write_text(PEAK)

    def peaks(name):
        # the small folder twice: the first pass warms the allocators and Pillow up
        r = subprocess.run([sys.executable, str(script), name, str(small), str(small), str(large)],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        return json.loads(r.stdout)[1:]

    streamed = peaks("imagefolder-stream")
    # 384 more images: 18 MiB more as float tensors in memory; the stream's peak stays within 2 MiB
    assert streamed[1] - streamed[0] < 2 * 1024, streamed
    in_memory = peaks("imagefolder")  # the same measurement catches a loader that holds the folder
    grown = 384 * 3 * 64 * 64 * 4 / 1024
    assert in_memory[1] - in_memory[0] > 0.5 * grown, in_memory
