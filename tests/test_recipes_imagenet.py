"""The ImageNet recipes: valid specs whose data pipeline reads a tiny folder in ImageNet's own layout
(synset folders, .JPEG files at ImageNet sizes) into batches their models accept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import prunelab.data as D
from prunelab.cli import main
from prunelab.models import create, fit_spec, resolve
from prunelab.study import load_spec

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
IMAGENET = ["gupta_imagenet.yaml", "wang_imagenet_resnet50.yaml", "wang_imagenet_mobilenet_v2.yaml"]


@pytest.fixture(scope="module")
def imagenet_like(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    for c, wnid in enumerate(("n01440764", "n01443537")):
        for split, names in (("train", [f"{wnid}_{i}.JPEG" for i in (10026, 10027, 10029)]),
                             ("val", [f"ILSVRC2012_val_{c * 2 + i + 1:08d}.JPEG" for i in range(2)])):
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for j, name in enumerate(names):
                w, h = (500, 375) if j % 2 == 0 else (333, 500)
                Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(folder / name, quality=75)
    return root


@pytest.mark.parametrize("recipe", IMAGENET)
def test_an_imagenet_recipe_validates_and_its_pipeline_feeds_its_models(recipe, imagenet_like, tmp_path, capsys):
    text = (RECIPES / recipe).read_text()
    assert "root: data/imagenet" in text
    # the tiny folder has 3 training images per class: hold out 1 instead of the reference's 50
    spec_file = tmp_path / recipe
    spec_file.write_text(text.replace("root: data/imagenet", f"root: {imagenet_like}")
                         .replace("val_per_class: 50", "val_per_class: 1"))
    assert main(["study", "validate", str(spec_file)]) == 0, capsys.readouterr().err
    spec = load_spec(spec_file)
    data = D.load(spec.data.name, spec.data.root, **{**spec.data.options, "workers": 0})
    assert data.input_shape == (3, 224, 224) and data.num_classes == 2
    assert data.info["class_names"] == ["n01440764", "n01443537"]
    feed = D.Feed(data, batch_size=2)
    x, y = next(iter(feed.epoch(0)))
    assert x.shape == (2, 3, 224, 224) and torch.isfinite(x).all() and y.dtype == torch.int64
    x_test, _ = next(iter(feed.evaluation("test", 2)))
    assert x_test.shape == (2, 3, 224, 224)
    for model in spec.models:
        spec_m = fit_spec(resolve(model.name), data.num_classes, data.input_shape)
        net = create(spec_m).eval()
        with torch.no_grad():
            assert net(x_test).shape == (2, 2)
