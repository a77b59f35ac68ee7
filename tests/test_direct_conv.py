"""The native direct sparse convolution: outputs equal torch's dense convolution (the reference),
kernel choices that name it survive save / load, and without the native kernel everything still
runs on the matmul lowering."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.export import SparseConv1d, SparseConv2d, apply_choices, convert_to_sparse, load_sparse, save_sparse
from prunelab.export.direct_conv import native_kernel, native_unavailable_reason
from prunelab.export.onnx import relative_error
from prunelab.models import create, resolve
from prunelab.prune.unstructured import prune_global, set_mask

torch.set_num_threads(1)
RTOL = 1e-5
native = pytest.mark.skipif(native_kernel() is None, reason=f"{native_unavailable_reason()}")


def masked_(module: nn.Module, sparsity: float, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    set_mask(module, torch.rand(module.weight.shape, generator=gen) >= sparsity)
    return module


CONVS = {
    "3x3": dict(in_channels=8, out_channels=6, kernel_size=3, padding=1),
    "1x1 no bias": dict(in_channels=8, out_channels=6, kernel_size=1, bias=False),
    "grouped": dict(in_channels=8, out_channels=4, kernel_size=3, padding=1, groups=2),
    "depthwise": dict(in_channels=8, out_channels=8, kernel_size=3, padding=1, groups=8, bias=False),
    "dilated 3x5": dict(in_channels=8, out_channels=6, kernel_size=(3, 5), padding=(2, 1), dilation=(2, 1)),
    "same": dict(in_channels=8, out_channels=6, kernel_size=3, padding="same"),
    "valid 5x5": dict(in_channels=8, out_channels=6, kernel_size=5, padding="valid"),
}


@native
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("sparsity", [0.0, 0.9, 1.0])
@pytest.mark.parametrize("name", list(CONVS))
def test_direct_conv_equals_dense(name, sparsity, batch):
    torch.manual_seed(0)
    conv = masked_(nn.Conv2d(**CONVS[name]), sparsity)
    sparse = SparseConv2d.from_dense(conv, lowering="direct")
    assert sparse.lowering == "direct"
    x = torch.randn(batch, 8, 11, 9)
    want, got = conv(x), sparse(x)
    assert got.shape == want.shape and got.is_contiguous()
    assert relative_error(got, want) <= RTOL
    # any input layout
    assert relative_error(sparse(x.contiguous(memory_format=torch.channels_last)), want) <= RTOL
    assert torch.equal(sparse.dense_weight(), conv.weight.detach())


@native
@settings(max_examples=30, deadline=None)
@given(cin=st.integers(1, 6), cout_per_group=st.integers(1, 4), groups=st.integers(1, 3), kh=st.integers(1, 4),
       kw=st.integers(1, 4), pad=st.integers(0, 2), dil=st.integers(1, 2), size=st.integers(5, 9),
       batch=st.integers(1, 3), sparsity=st.sampled_from([0.0, 0.5, 0.95]), seed=st.integers(0, 100))
def test_direct_conv_property(cin, cout_per_group, groups, kh, kw, pad, dil, size, batch, sparsity, seed):
    torch.manual_seed(seed)
    conv = masked_(nn.Conv2d(cin * groups, cout_per_group * groups, (kh, kw), 1, pad, dil, groups), sparsity, seed)
    x = torch.randn(batch, cin * groups, size, size + 1)
    if min(size + 2 * pad - dil * (kh - 1), size + 1 + 2 * pad - dil * (kw - 1)) < 1:
        return  # no output position
    assert relative_error(SparseConv2d.from_dense(conv, "direct")(x), conv(x)) <= RTOL


@native
def test_direct_conv1d_equals_dense():
    torch.manual_seed(0)
    conv = masked_(nn.Conv1d(6, 8, 5, padding=4, dilation=2), 0.8)
    x = torch.randn(3, 6, 40)
    assert relative_error(SparseConv1d.from_dense(conv, "direct")(x), conv(x)) <= RTOL


def test_direct_lowering_refuses_what_it_cannot_run():
    conv = masked_(nn.Conv2d(4, 4, 3, stride=2, padding=1), 0.5)
    with pytest.raises(PrunelabError, match="stride"):
        SparseConv2d.from_dense(conv, "direct")
    with pytest.raises(PrunelabError, match="float32"):
        SparseConv2d.from_dense(masked_(nn.Conv2d(4, 4, 3).double(), 0.5), "direct")
    with pytest.raises(PrunelabError, match="valid choices"):
        SparseConv2d.from_dense(masked_(nn.Conv2d(4, 4, 3), 0.5), "fastest")


@native
def test_measured_conversion_records_every_lowering_and_round_trips(tmp_path):
    """A stride-1 convolution is timed dense, with the matmul lowering and with the direct kernel;
    the file keeps the lowering chosen and loading rebuilds exactly that."""
    torch.manual_seed(0)
    spec = resolve("resnet20", num_classes=10)
    model = create(spec).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prune_global(model, 0.95)
    converted, report = convert_to_sparse(model, (3, 32, 32), batch_size=2, threads=1, repeats=3,
                                          policy="measure", min_speedup=0.0)
    stride1 = [c for c in report.layers if c.kind == "Conv2d" and c.lowering_ms and "direct" in c.lowering_ms]
    assert len(stride1) >= 15
    for c in stride1:
        assert len(c.lowering_ms) == 2 and set(c.lowering_ms) - {"direct"} <= {"gather", "im2col"}
        assert c.sparse_ms == min(c.lowering_ms.values())
        assert c.kernel == "dense" or c.lowering == min(c.lowering_ms, key=c.lowering_ms.get)
    path = tmp_path / "sparse.pt"
    save_sparse(path, model, report, spec=spec)
    loaded = load_sparse(path)
    assert loaded.report.lowerings() == report.lowerings()
    for name, lowering in report.lowerings().items():
        assert loaded.model.get_submodule(name).lowering == lowering
    x = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        assert relative_error(loaded.model(x), model(x)) <= RTOL


def test_without_the_native_kernel_direct_choices_fall_back(tmp_path, monkeypatch):
    """A file whose choices name the direct kernel still loads where it cannot run (same outputs)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)).eval()
    for layer in (model[0], model[2]):
        masked_(layer, 0.9)
    monkeypatch.setenv("PRUNELAB_NATIVE", "0")
    assert native_kernel() is None and "PRUNELAB_NATIVE=0" in native_unavailable_reason()
    with pytest.warns(UserWarning, match="direct sparse kernel cannot run here"):
        rebuilt = apply_choices(model, {"0": "sparse", "2": "sparse"}, inplace=False,
                                lowerings={"0": "direct", "2": "direct"})
    assert all(rebuilt.get_submodule(n).lowering in ("gather", "im2col") for n in ("0", "2"))
    x = torch.randn(2, 3, 10, 10)
    with torch.inference_mode():
        assert relative_error(rebuilt(x), model(x)) <= RTOL
    # and a conversion here never offers it
    _, report = convert_to_sparse(model, (3, 10, 10), batch_size=2, threads=1, repeats=2)
    assert all(not c.lowering_ms or "direct" not in c.lowering_ms for c in report.layers)
    with pytest.raises(PrunelabError, match="valid choices"):
        apply_choices(model, {"0": "sparse"}, lowerings={"0": "fastest"})


def test_without_a_compiler_conversion_still_works(tmp_path):
    """No C++ compiler (CXX that fails, an empty extensions folder): the kernel is not offered, with
    a reason, and sparse conversion runs on the matmul lowerings with the same outputs."""
    import os
    import subprocess
    import sys

    code = (
        "import torch, warnings\n"
        "from torch import nn\n"
        "from prunelab.export import convert_to_sparse\n"
        "from prunelab.export.direct_conv import native_kernel, native_unavailable_reason\n"
        "from prunelab.prune.unstructured import prune_global\n"
        "assert native_kernel() is None\n"
        "print(native_unavailable_reason())\n"
        "torch.manual_seed(0)\n"
        "m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)).eval()\n"
        "warnings.simplefilter('ignore'); prune_global(m, 0.9)\n"
        "_, report = convert_to_sparse(m, (3, 10, 10), batch_size=2, threads=1, policy='sparse')\n"
        "assert report.relative_error <= 1e-5 and report.lowerings()\n"
        "assert 'direct' not in report.lowerings().values()\n"
    )
    env = {**os.environ, "CXX": "/bin/false", "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext")}
    env.pop("PRUNELAB_NATIVE", None)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "could not be built here" in proc.stdout


@native
def test_bench_runs_the_lowerings_the_file_records(tmp_path, capsys):
    """`prunelab bench FILE --sparse` must time the model the file describes: direct layers stay direct."""
    import json

    from prunelab.cli import main
    from prunelab.io import save_checkpoint

    torch.manual_seed(0)
    spec = resolve("cnn")
    model = create(spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prune_global(model, 0.9)
    ckpt, out = tmp_path / "masked.pt", tmp_path / "sparse.pt"
    save_checkpoint(ckpt, arch=spec.to_dict(), state_dict=model.state_dict(), meta={"input_shape": [1, 8, 8]})
    assert main(["export", str(ckpt), "--format", "sparse", "--out", str(out), "--policy", "sparse",
                 "--threads", "1", "--json"]) == 0
    recorded = {c["name"]: c["lowering"] for c in json.loads(capsys.readouterr().out)["layers"]
                if c["kernel"] == "sparse" and c["lowering"]}
    assert recorded and set(recorded.values()) == {"direct"}
    assert main(["bench", str(out), "--sparse", "--batch-sizes", "2", "--threads", "1", "--warmup", "1",
                 "--repeats", "2", "--min-time", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sparse"]["lowerings"] == recorded
