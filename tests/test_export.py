"""ONNX export: ONNX Runtime (an independent implementation) must reproduce eager PyTorch."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from prunelab.checkpoint import load_model
from prunelab.cli import main
from prunelab.errors import PrunelabError
from prunelab.export import SparseLinear, onnx_bytes_of, ort_session, to_onnx
from prunelab.io import save_checkpoint
from prunelab.models import create, resolve
from prunelab.prune.unstructured import prune_global

torch.set_num_threads(1)


def ort_output(path_or_bytes, x: torch.Tensor) -> np.ndarray:
    session = ort_session(path_or_bytes, threads=1)
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def eager_output(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return model.eval()(x).numpy()


@pytest.mark.parametrize("name, shape", [("cnn", (1, 8, 8)), ("mlp", (64,)), ("resnet20", (3, 32, 32))])
def test_onnx_equals_eager_at_any_batch(tmp_path, name, shape):
    torch.manual_seed(0)
    model = create(name).eval()
    result = to_onnx(model, shape, tmp_path / "m.onnx")
    assert result.relative_error is not None and result.relative_error <= 1e-4
    onnx.checker.check_model(str(tmp_path / "m.onnx"))
    for batch in (1, 5):  # the batch dimension is dynamic
        x = torch.randn(batch, *shape)
        np.testing.assert_allclose(ort_output(tmp_path / "m.onnx", x), eager_output(model, x), rtol=1e-4, atol=1e-5)


def test_compressed_model_with_irregular_widths_exports(tmp_path):
    model = create("resnet20", block_widths=[3, 16, 5, 7, 32, 1, 64, 9, 2]).eval()
    to_onnx(model, (3, 32, 32), tmp_path / "small.onnx")
    x = torch.randn(2, 3, 32, 32)
    np.testing.assert_allclose(ort_output(tmp_path / "small.onnx", x), eager_output(model, x), rtol=1e-4, atol=1e-5)


def test_masked_model_exports_without_its_masks(tmp_path):
    model = create("cnn").eval()
    prune_global(model, 0.8)
    to_onnx(model, (1, 8, 8), tmp_path / "masked.onnx")
    graph = onnx.load(str(tmp_path / "masked.onnx")).graph
    assert not any("mask" in init.name for init in graph.initializer)
    x = torch.randn(3, 1, 8, 8)
    np.testing.assert_allclose(ort_output(tmp_path / "masked.onnx", x), eager_output(model, x), rtol=1e-4, atol=1e-5)


def test_static_batch_and_model_mode_restored():
    model = create("mlp").train()
    data = onnx_bytes_of(model, (64,), dynamic_batch=False, batch_size=2)
    dims = onnx.load_from_string(data).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [2, 64]
    assert model.training


def test_sparse_modules_have_no_onnx_form():
    with pytest.raises(PrunelabError, match="no ONNX form"):
        onnx_bytes_of(nn.Sequential(SparseLinear(torch.eye(4))), (4,))


def test_unknown_exporter_is_one_line():
    with pytest.raises(PrunelabError, match="unknown ONNX exporter 'tflite'"):
        onnx_bytes_of(create("mlp"), (64,), exporter="tflite")


def test_cli_export_onnx_from_checkpoint(tmp_path, capsys):
    ckpt = tmp_path / "cnn.pt"
    save_checkpoint(ckpt, arch=resolve("cnn").to_dict(), state_dict=create("cnn").state_dict())
    out = tmp_path / "cnn.onnx"
    assert main(["export", str(ckpt), "--format", "onnx", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["path"] == str(out) and summary["relative_error"] <= 1e-4
    x = torch.randn(4, 1, 8, 8)
    np.testing.assert_allclose(ort_output(out, x), eager_output(load_model(ckpt).model, x), rtol=1e-4, atol=1e-5)


def test_cli_export_bad_input_exits_2(tmp_path, capsys):
    bogus = tmp_path / "x.pt"
    bogus.write_bytes(b"\x00garbage")
    assert main(["export", str(bogus), "--format", "onnx", "--out", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err
    assert "x.pt" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.onnx").exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "mlp", "--format", "tflite", "--out", str(tmp_path / "x.tfl")])
    assert exit_info.value.code == 2
