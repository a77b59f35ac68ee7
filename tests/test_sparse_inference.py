"""Sparse-kernel inference: outputs equal the dense masked model's (torch's own dense kernels are the
reference), kernel choices are recorded, and the converted model saves and loads without pickle."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from prunelab.checkpoint import load_model
from prunelab.cli import main
from prunelab.errors import PrunelabError
from prunelab.export import (
    SparseConv1d,
    SparseConv2d,
    SparseLinear,
    apply_choices,
    convert_to_sparse,
    load_sparse,
    relative_error,
    save_sparse,
)
from prunelab.io import save_checkpoint, torch_load
from prunelab.models import create, resolve
from prunelab.prune.unstructured import prune_global, prune_uniform, set_mask

torch.set_num_threads(1)
RTOL = 1e-5


def masked_(module: nn.Module, sparsity: float, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    set_mask(module, torch.rand(module.weight.shape, generator=gen) >= sparsity)
    return module


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("sparsity", [0.0, 0.9, 1.0])
def test_sparse_linear_equals_dense(bias, sparsity):
    dense = masked_(nn.Linear(40, 24, bias=bias), sparsity)
    sparse = SparseLinear.from_dense(dense)
    assert sparse.nnz == int((dense.weight != 0).sum())
    for x in (torch.randn(7, 40), torch.randn(2, 3, 40), torch.randn(5, 40).t().contiguous().t()):
        assert relative_error(sparse(x), F.linear(x, dense.weight, dense.bias)) <= RTOL
    assert torch.equal(sparse.dense_weight(), dense.weight.detach())


CONVS = {
    "3x3": dict(in_channels=8, out_channels=12, kernel_size=3, padding=1),
    "1x1": dict(in_channels=8, out_channels=12, kernel_size=1, bias=False),
    "3x3 stride 2": dict(in_channels=8, out_channels=12, kernel_size=3, stride=2, padding=1),
    "1x1 stride 2": dict(in_channels=8, out_channels=12, kernel_size=1, stride=2, bias=False),
    "grouped": dict(in_channels=8, out_channels=12, kernel_size=3, padding=1, groups=4),
    "depthwise": dict(in_channels=8, out_channels=8, kernel_size=3, padding=1, groups=8, bias=False),
    "dilated 3x5": dict(in_channels=8, out_channels=6, kernel_size=(3, 5), padding=(2, 1), dilation=(2, 1)),
    "same": dict(in_channels=8, out_channels=6, kernel_size=3, padding="same"),
    "valid 5x5 stride (2,1)": dict(in_channels=8, out_channels=6, kernel_size=5, stride=(2, 1), padding="valid"),
}


@pytest.mark.parametrize("lowering", ["gather", "im2col"])
@pytest.mark.parametrize("sparsity", [0.0, 0.9, 1.0])
@pytest.mark.parametrize("name", list(CONVS))
def test_sparse_conv_equals_dense(name, sparsity, lowering):
    torch.manual_seed(0)
    conv = masked_(nn.Conv2d(**CONVS[name]), sparsity)
    sparse = SparseConv2d.from_dense(conv, lowering=lowering)
    x = torch.randn(3, 8, 11, 9)
    want = conv(x)
    got = sparse(x)
    assert got.shape == want.shape and got.is_contiguous()
    assert relative_error(got, want) <= RTOL
    assert torch.equal(sparse.dense_weight(), conv.weight.detach())


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "slice of a batch"])
@pytest.mark.parametrize("name", list(CONVS))
def test_sparse_conv_batch_one_equals_dense(name, layout):
    """Batch 1 takes its own path (NCHW is already channels first there); any input layout works."""
    torch.manual_seed(0)
    conv = masked_(nn.Conv2d(**CONVS[name]), 0.9)
    sparse = SparseConv2d.from_dense(conv)
    x = torch.randn(3, 8, 11, 9)
    x = {"contiguous": x[:1].clone(), "channels_last": x[:1].contiguous(memory_format=torch.channels_last),
         "slice of a batch": x[2:3]}[layout]
    got = sparse(x)
    assert got.shape == (1, conv.out_channels, *conv(x).shape[2:]) and got.is_contiguous()
    assert relative_error(got, conv(x)) <= RTOL


@pytest.mark.parametrize("kwargs", [dict(kernel_size=3, padding=1), dict(kernel_size=5, stride=2, dilation=2),
                                    dict(kernel_size=1, groups=2, bias=False), dict(kernel_size=5, padding="same")])
def test_sparse_conv1d_equals_dense(kwargs):
    torch.manual_seed(0)
    conv = masked_(nn.Conv1d(6, 8, **kwargs), 0.8)
    sparse = SparseConv1d.from_dense(conv)
    x = torch.randn(3, 6, 40)
    assert relative_error(sparse(x), conv(x)) <= RTOL
    assert torch.equal(sparse.dense_weight(), conv.weight.detach())


@settings(max_examples=25, deadline=None)
@given(cin=st.integers(1, 6), cout_per_group=st.integers(1, 4), groups=st.integers(1, 3), k=st.integers(1, 4),
       stride=st.integers(1, 3), pad=st.integers(0, 2), dil=st.integers(1, 2), size=st.integers(5, 9),
       batch=st.integers(1, 3), sparsity=st.sampled_from([0.0, 0.5, 0.95]), seed=st.integers(0, 100))
def test_sparse_conv_property(cin, cout_per_group, groups, k, stride, pad, dil, size, batch, sparsity, seed):
    torch.manual_seed(seed)
    conv = masked_(nn.Conv2d(cin * groups, cout_per_group * groups, k, stride, pad, dil, groups), sparsity, seed)
    x = torch.randn(batch, cin * groups, size, size + 1)
    if (size + 2 * pad - dil * (k - 1)) < 1:
        return  # no output position
    assert relative_error(SparseConv2d.from_dense(conv)(x), conv(x)) <= RTOL


def test_masked_layers_without_a_sparse_kernel_are_reported():
    model = nn.Sequential(masked_(nn.Conv3d(1, 2, 1), 0.5), nn.Flatten(), masked_(nn.Linear(2 * 27, 2), 0.5))
    converted, report = convert_to_sparse(model, (1, 3, 3, 3), policy="sparse")
    first = report.layers[0]
    assert first.kind == "Conv3d" and first.kernel == "dense" and "no sparse kernel for Conv3d" in first.reason
    assert isinstance(converted[0], nn.Conv3d) and report.sparse_layers == ["2"]


def test_unsupported_conv_falls_back_to_dense_and_says_so():
    model = nn.Sequential(masked_(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), 0.9), nn.Flatten(),
                          masked_(nn.Linear(4 * 36, 2), 0.9))
    converted, report = convert_to_sparse(model, (3, 6, 6), policy="sparse")
    reasons = {c.name: c for c in report.layers}
    assert reasons["0"].kernel == "dense" and "unsupported: padding_mode 'reflect'" in reasons["0"].reason
    assert reasons["2"].kernel == "sparse" and isinstance(converted[2], SparseLinear)
    assert isinstance(converted[0], nn.Conv2d) and report.relative_error <= RTOL
    with pytest.raises(PrunelabError, match="padding_mode"):
        SparseConv2d.from_dense(model[0])


@pytest.mark.parametrize("name, shape", [("cnn", (1, 8, 8)), ("mlp", (64,)), ("resnet20", (3, 32, 32)),
                                         ("cnn1d", (1, 40))])
def test_whole_models_equal_the_masked_model(name, shape):
    torch.manual_seed(0)
    model = create(name).eval()
    prune_global(model, 0.8)
    original = copy.deepcopy(model.state_dict())
    converted, report = convert_to_sparse(model, shape, batch_size=4, policy="sparse")
    assert len(report.sparse_layers) == len(report.layers) > 0
    assert all(isinstance(converted.get_submodule(n), (SparseLinear, SparseConv2d)) for n in report.sparse_layers)
    x = torch.randn(6, *shape)
    with torch.inference_mode():
        assert relative_error(converted(x), model(x)) <= RTOL
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in original.items()), "the input model is untouched"


def test_measured_choices_record_both_timings():
    model = create("mlp").eval()
    prune_uniform(model, 0.9)
    converted, report = convert_to_sparse(model, (64,), batch_size=8, threads=1, repeats=5)
    assert report.policy == "measure" and report.threads == 1 and report.batch_size == 8
    for c in report.layers:
        assert c.dense_ms > 0 and c.sparse_ms > 0 and 0 < c.density < 1
        assert c.kernel == ("sparse" if c.sparse_ms * 1.05 < c.dense_ms else "dense")
        assert isinstance(converted.get_submodule(c.name), SparseLinear) == (c.kernel == "sparse")
    assert report.relative_error <= RTOL
    assert "speed-up" in report.table()


def test_only_masked_layers_unless_asked():
    model = nn.Sequential(nn.Linear(8, 8), masked_(nn.Linear(8, 2), 0.5))
    _, report = convert_to_sparse(model, (8,), policy="sparse")
    assert [c.name for c in report.layers] == ["1"]
    _, report = convert_to_sparse(model, (8,), policy="sparse", masked_only=False)
    assert [c.name for c in report.layers] == ["0", "1"]


def test_sparse_modules_copy_and_hold_plain_tensors():
    sparse = SparseConv2d.from_dense(masked_(nn.Conv2d(4, 4, 3, padding=1), 0.8))
    twin = copy.deepcopy(sparse).to(torch.float64)
    assert all(t.layout == torch.strided for t in twin.state_dict().values())
    x = torch.randn(1, 4, 5, 5, dtype=torch.float64)
    assert relative_error(twin(x), F.conv2d(x, sparse.dense_weight().double(), twin.bias.squeeze(1), padding=1)) < 1e-12


def _pruned_checkpoint(tmp_path, name="cnn"):
    spec = resolve(name)
    model = create(spec).eval()
    prune_uniform(model, 0.9)
    return spec, model


def test_save_and_load_round_trip(tmp_path):
    spec, model = _pruned_checkpoint(tmp_path)
    converted, report = convert_to_sparse(model, (1, 8, 8), batch_size=2, threads=1, repeats=3)
    path = tmp_path / "sparse.pt"
    save_sparse(path, model, report, spec=spec, meta={"note": "digits"})
    payload = torch_load(path)  # weights_only: plain tensors and containers only
    assert payload["meta"]["sparse_inference"]["layers"][0]["name"] == report.layers[0].name
    loaded = load_sparse(path)
    assert loaded.report.choices() == report.choices()
    assert loaded.loaded.meta["note"] == "digits"
    for name in report.choices():
        assert type(loaded.model.get_submodule(name)) is type(converted.get_submodule(name))
    x = torch.randn(5, 1, 8, 8)
    with torch.inference_mode():
        assert relative_error(loaded.model(x), model(x)) <= RTOL
    # the same file is an ordinary checkpoint of the masked model
    plain = load_model(path).model
    assert not any(isinstance(m, (SparseLinear, SparseConv2d)) for m in plain.modules())
    with pytest.raises(PrunelabError, match="stores the masked model"):
        save_sparse(tmp_path / "bad.pt", converted, report, spec=spec)


def test_apply_choices_rejects_unknown_layers_and_kernels():
    model = create("mlp")
    with pytest.raises(PrunelabError, match="not in the model"):
        apply_choices(model, {"nope": "sparse"})
    with pytest.raises(PrunelabError, match="kernel"):
        apply_choices(model, {"classifier": "fast"})


def test_load_sparse_needs_choices(tmp_path):
    path = tmp_path / "plain.pt"
    save_checkpoint(path, arch=resolve("mlp").to_dict(), state_dict=create("mlp").state_dict())
    with pytest.raises(PrunelabError, match="no sparse kernel choices"):
        load_sparse(path)


def test_cli_export_sparse_then_bench_it(tmp_path, capsys):
    spec, model = _pruned_checkpoint(tmp_path, "mlp")
    ckpt = tmp_path / "masked.pt"
    save_checkpoint(ckpt, arch=spec.to_dict(), state_dict=model.state_dict())
    out = tmp_path / "sparse.pt"
    assert main(["export", str(ckpt), "--format", "sparse", "--out", str(out), "--batch-size", "4",
                 "--threads", "1", "--policy", "sparse", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["policy"] == "sparse" and len(summary["layers"]) == 3
    assert main(["bench", str(out), "--sparse", "--batch-sizes", "4", "--threads", "1", "--warmup", "1",
                 "--repeats", "2", "--min-time", "0", "--json"]) == 0
    bench = json.loads(capsys.readouterr().out)
    assert len(bench["sparse"]["sparse_layers"]) == 3 and bench["results"][0]["batch_size"] == 4
    assert main(["bench", str(out), "--sparse", "--backend", "onnxruntime"]) == 2
    assert "cannot be combined" in capsys.readouterr().err


def test_cached_csr_weight_follows_copies_and_moves():
    """The cached CSR tensor is left out of copies and rebuilt for new buffers (no stale weight)."""
    import copy

    from prunelab.export.sparse import SparseLinear

    torch.manual_seed(0)
    linear = torch.nn.Linear(16, 8)
    with torch.no_grad():
        linear.weight.mul_((torch.rand_like(linear.weight) < 0.2).float())
    sparse = SparseLinear.from_dense(linear)
    x = torch.randn(4, 16)
    sparse(x)
    clone = copy.deepcopy(sparse)
    assert "_csr_cache" not in clone.__dict__
    with torch.no_grad():
        clone.values.mul_(2.0)  # in place: same storage, so the cache must not matter for correctness
        torch.testing.assert_close(clone(x) - clone.bias.t(), 2.0 * (sparse(x) - sparse.bias.t()))
    clone.values = clone.values.clone() * 0.5
    torch.testing.assert_close(clone(x), sparse(x))
    torch.testing.assert_close(sparse(x), linear(x), rtol=1e-5, atol=1e-6)


def test_float64_models_are_fed_float64(tmp_path):
    """Example inputs take the model's dtype: a .double() model converts, times and checks."""
    from prunelab.measure.latency import latency_of

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 5)).double()
    for layer in (model[0], model[3]):
        masked_(layer, 0.8)
    converted, report = convert_to_sparse(model, (3, 6, 6), batch_size=2, policy="sparse")
    assert report.relative_error <= 1e-12
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    assert relative_error(converted(x), model(x)) <= 1e-12
    assert latency_of(model, (3, 6, 6), batch_size=1, threads=1, repeats=2, min_time_s=0.0) > 0
    from prunelab.export.onnx import to_onnx

    with pytest.raises(PrunelabError, match="ONNX Runtime cannot"):  # it has no float64 Conv: one line, not a crash
        to_onnx(model, (3, 6, 6), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_sparse_linear_output_supports_view_like_nn_linear():
    """A model that calls .view() on a Linear's output converts and runs (outputs are contiguous)."""

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(16, 12)

        def forward(self, x):
            return self.fc(x).view(-1, 3)

    torch.manual_seed(0)
    model = Head().eval()
    masked_(model.fc, 0.9)
    converted, report = convert_to_sparse(model, (16,), batch_size=4, policy="sparse")
    assert report.sparse_layers == ["fc"]
    x = torch.randn(4, 16)
    assert relative_error(converted(x), model(x)) <= RTOL


@pytest.mark.parametrize("lowering", ["gather", "im2col", "direct"])
def test_sparse_convs_take_unbatched_input_like_torch(lowering):
    from prunelab.export.direct_conv import native_kernel

    if lowering == "direct" and native_kernel() is None:
        pytest.skip("no native kernel here")
    torch.manual_seed(0)
    conv2 = masked_(nn.Conv2d(4, 6, 3, padding=1), 0.7)
    conv1 = masked_(nn.Conv1d(4, 6, 3, padding=1), 0.7)
    x2, x1 = torch.randn(4, 9, 7), torch.randn(4, 11)
    assert relative_error(SparseConv2d.from_dense(conv2, lowering)(x2), conv2(x2)) <= RTOL
    assert relative_error(SparseConv1d.from_dense(conv1, lowering)(x1), conv1(x1)) <= RTOL


def test_timing_runs_at_least_the_minimum_time():
    """--min-time is honoured for fast calls too (no hidden cap on the number of rounds)."""
    import time

    from prunelab.measure.latency import time_interleaved

    t0 = time.perf_counter()
    samples = time_interleaved({"noop": lambda: None}, warmup=1, repeats=2, min_time_s=0.05)
    assert sum(samples["noop"]) >= 50.0 and time.perf_counter() - t0 >= 0.05
