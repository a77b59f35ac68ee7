"""The deploy artefact: folding, the native executor's kernels and the whole artefact against the masked
eager model (the reference: torch's own convolutions), a round trip in a fresh process, fallbacks and
bad input. No assertion depends on how fast this machine is.

The native executor is compiled on first use (about 40 s on 2 idle cores, longer on a busy machine;
cached in torch's extensions folder afterwards); tests that need it are skipped where it cannot be built.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from prunelab.cli import main
from prunelab.errors import PrunelabError
from prunelab.export import deploy as deploy_module
from prunelab.export.deploy import build_deploy, load_deploy, pad_channels, save_deploy
from prunelab.export.executor import FoldedModule, NativeProgram, executor_library, executor_unavailable_reason
from prunelab.export.graph import fold_graph
from prunelab.export.numerics import relative_error
from prunelab.io import save_checkpoint
from prunelab.models import create, resolve
from prunelab.prune.unstructured import prune_global, set_mask

torch.set_num_threads(1)
RTOL = 1e-5
native = pytest.mark.skipif(executor_library() is None, reason=f"{executor_unavailable_reason()}")


def trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm statistics and affine terms, so folding is exercised (a fresh BN is the identity)."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return model.eval()


def masked(model: nn.Module, sparsity: float, seed: int = 0) -> nn.Module:
    """Random masks of the given sparsity on every conv and linear weight (per layer, so none collapses)."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            set_mask(m, torch.rand(m.weight.shape, generator=gen) >= sparsity)
    return model


class Block(nn.Module):
    """Every fusion at once: conv+BN+ReLU, a stride-2 conv, a residual add fused into a conv, ReLU6,
    a pre-activation BatchNorm, a depthwise conv, max / average pooling, concatenation."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8)
        self.short = nn.Conv2d(8, 8, 1, stride=2, bias=False)
        self.pre = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8)
        self.pool = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(16, 6, (1, 3), padding=(0, 1))
        self.fc = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.bn1(self.conv1(x)))
        b = nn.functional.relu6(self.bn2(self.conv2(a)) + self.short(a))
        c = self.dw(torch.relu(self.pre(b)))
        d = torch.cat([b, c], 1)
        e = self.conv3(self.pool(d))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(e, 1), 1))


CASES = {  # name -> (model factory, input shape)
    "block": (lambda: Block(), (3, 12, 10)),
    "resnet20": (lambda: create("resnet20"), (3, 16, 16)),
    "wrn-16-1": (lambda: create("wrn-16-1"), (3, 16, 16)),
    "densenet-bc-40-12": (lambda: create("densenet-bc-40-12"), (3, 16, 16)),
    "mobilenet-v2-cifar": (lambda: create("mobilenet-v2-cifar"), (3, 16, 16)),
    "vgg11-bn": (lambda: create("vgg11-bn"), (3, 32, 32)),
    "mlp": (lambda: create("mlp"), (64,)),
}


def _case(name: str, sparsity: float = 0.9) -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(0)
    build, shape = CASES[name]
    return masked(trained_like(build()), sparsity), shape


@pytest.mark.parametrize("name", list(CASES))
def test_folded_graph_equals_masked_model(name):
    model, shape = _case(name)
    graph = fold_graph(model)
    x = torch.randn(3, *shape)
    with torch.inference_mode():
        assert relative_error(FoldedModule(graph)(x), model(x)) <= RTOL


def test_folding_fuses_batchnorm_activations_and_residuals():
    graph = fold_graph(trained_like(create("resnet20")))
    kinds = [op.kind for op in graph.ops]
    # every BatchNorm, ReLU and residual addition is fused: only convs, the pool, flatten and the classifier
    assert set(kinds) == {"conv", "global_avgpool", "flatten", "linear"}
    assert sum(len(op.inputs) == 2 for op in graph.ops if op.kind == "conv") == 9  # 9 residual blocks
    assert all(op.attrs["act"] == "relu" for op in graph.ops if op.kind == "conv" and len(op.inputs) == 2)


def test_unsupported_operations_are_named():
    class Odd(nn.Module):
        def forward(self, x):
            return torch.sin(x)

    with pytest.raises(PrunelabError, match="sin has no deploy form"):
        fold_graph(Odd())
    with pytest.raises(PrunelabError, match="GRU has no deploy form|cannot be traced"):
        fold_graph(create("gru"))


@native
@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("name", list(CASES))
def test_native_program_equals_masked_model(name, batch):
    model, shape = _case(name)
    graph = fold_graph(model)
    x = torch.randn(batch, *shape)
    with torch.inference_mode():
        want = model(x)
    for kernels in ({}, {i: "sparse" for i in graph.layers()}):
        got = NativeProgram(graph, shape, kernels)(x)
        assert got.shape == want.shape
        assert relative_error(got, want) <= RTOL


class OneConv(nn.Module):
    """A convolution, optionally plus a 1x1 convolution of the same input (fused as its residual), then an act."""

    def __init__(self, conv: nn.Conv2d, act: str, residual: bool) -> None:
        super().__init__()
        self.conv = conv
        self.other = nn.Conv2d(conv.in_channels, conv.out_channels, 1, stride=conv.stride) if residual else None
        self.act = {"relu": nn.ReLU(), "relu6": nn.ReLU6(), "none": nn.Identity()}[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.act(y if self.other is None else y + self.other(x))


@native
@pytest.mark.parametrize("stride, padding, dilation, groups, act, residual", [
    (1, 1, 1, 1, "relu", False), (2, 1, 1, 1, "none", True), (3, 2, 1, 1, "relu6", False),
    (1, 2, 2, 2, "relu", True), (2, 3, 2, 4, "none", False), (1, 1, 1, 8, "relu6", True),
])
@pytest.mark.parametrize("sparsity", [0.0, 0.8, 1.0])
def test_sparse_convolution_kernel_against_torch(stride, padding, dilation, groups, act, residual, sparsity):
    torch.manual_seed(1)
    conv = masked(nn.Conv2d(8, 8, 3, stride=stride, padding=padding, dilation=dilation, groups=groups), sparsity)
    model = OneConv(conv, act, residual).eval()
    graph = fold_graph(model)
    assert len(graph.ops) == 2 if residual else 1  # the addition and the activation are fused
    x = torch.randn(2, 8, 13, 11)
    with torch.inference_mode():
        want = model(x)
    got = NativeProgram(graph, (8, 13, 11), {i: "sparse" for i in graph.layers()})(x)
    assert got.shape == want.shape and relative_error(got, want) <= RTOL


@native
def test_reused_buffers_never_overwrite_a_result_the_caller_kept():
    model, shape = _case("block", 0.7)
    graph = fold_graph(model)
    program = NativeProgram(graph, shape, {i: "sparse" for i in graph.layers()})
    x1, x2 = torch.randn(2, *shape), torch.randn(2, *shape)
    first = program(x1)
    kept = first.clone()
    second = program(x2)  # buffers of the first run are reused where nothing holds them
    assert torch.equal(first, kept)
    with torch.inference_mode():
        assert relative_error(second, model(x2)) <= RTOL
        del first
        assert relative_error(program(x1), model(x1)) <= RTOL


@native
def test_pre_activation_batchnorm_is_fused_into_the_sparse_convolutions_reading_it():
    model, shape = _case("wrn-16-1", 0.7)
    graph = fold_graph(model)
    sparse = NativeProgram(graph, shape, {i: "sparse" for i in graph.layers()})
    fused = sparse._fused_affines()
    assert len(fused) == sum(op.kind == "affine" for op in graph.ops) - 1  # all but the last one (read by the pool)
    assert not NativeProgram(graph, shape, {})._fused_affines()  # dense convolutions read a materialised tensor
    x = torch.randn(3, *shape)
    with torch.inference_mode():
        assert relative_error(sparse(x), model(x)) <= RTOL


@native
def test_fused_residual_kernel_against_torch():
    """The residual is fused into the convolution that runs last (the shortcut of a ResNet block)."""
    model, shape = _case("resnet20", 0.5)
    graph = fold_graph(model)
    program = NativeProgram(graph, shape, {i: "sparse" for i in graph.layers()})
    fused = [i for i, op in enumerate(graph.ops) if op.kind == "conv" and len(op.inputs) == 2]
    assert fused
    x = torch.randn(2, *shape)
    with torch.inference_mode():
        assert relative_error(program(x), model(x)) <= RTOL


def test_channel_padding_keeps_outputs_and_pads_internal_widths():
    torch.manual_seed(0)
    model = trained_like(nn.Sequential(nn.Conv2d(3, 11, 3, padding=1), nn.BatchNorm2d(11), nn.ReLU(),
                                       nn.Conv2d(11, 13, 3, padding=1), nn.BatchNorm2d(13), nn.ReLU(),
                                       nn.Conv2d(13, 10, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    graph = fold_graph(model)
    padded, changed = pad_channels(graph, 8)
    assert sorted(changed.values()) == [16, 16]  # the last conv feeds the pool, so it keeps its 10 channels
    assert [op.tensors["weight"].shape[0] for op in padded.ops if op.kind == "conv"] == [16, 16, 10]
    x = torch.randn(2, 3, 9, 9)
    with torch.inference_mode():
        want = model(x)
        assert relative_error(FoldedModule(padded)(x), want) <= RTOL
    with pytest.raises(PrunelabError, match="multiple"):
        pad_channels(graph, 0)


# --------------------------------------------------------------------------------------------- artefact


FRESH = r"""
import sys, torch
from prunelab.export import load_deploy
from prunelab.export.numerics import relative_error
deployed = load_deploy(sys.argv[1])
x, want = torch.load(sys.argv[2]), torch.load(sys.argv[3])
print(deployed.runtime, relative_error(deployed(x), want))
"""


def _fresh_process_error(tmp_path, path, model, shape) -> tuple[str, float]:
    x = torch.randn(4, *shape)
    with torch.inference_mode():
        want = model(x)
    torch.save(x, tmp_path / "x.pt")
    torch.save(want, tmp_path / "y.pt")
    out = subprocess.run([sys.executable, "-c", FRESH, str(path), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
                         capture_output=True, text=True, check=True)
    runtime, error = out.stdout.split()
    return runtime, float(error)


def test_deploy_round_trips_in_a_fresh_process(tmp_path):
    model, shape = _case("resnet20", 0.95)
    artefact = build_deploy(model, shape, kind="sparse", batch_size=1, repeats=5, warmup=1)
    report = artefact.report
    assert report.runtime in ("native", "onnxruntime") and report.relative_error <= RTOL
    if executor_library() is not None:
        assert report.native_ms and report.ort_dense_ms and report.layers
        assert all(layer.kernel in ("sparse", "dense") and layer.dense_ms and layer.sparse_ms
                   for layer in report.layers)
    path = save_deploy(tmp_path / "r20.deploy.pt", artefact)
    payload = torch.load(path, weights_only=True)  # no pickled modules
    assert payload["format"] == "prunelab-deploy" and payload["runtime"] == report.runtime
    runtime, error = _fresh_process_error(tmp_path, path, model, shape)
    assert runtime == report.runtime and error <= RTOL
    assert load_deploy(path).report.to_dict() == report.to_dict()


def test_dense_fallback_is_the_onnxruntime_graph_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model, shape = trained_like(create("resnet20")), (3, 16, 16)
    with pytest.raises(PrunelabError, match="not pruned"):
        build_deploy(model, shape, kind="dense")
    artefact = build_deploy(model, shape, kind="dense", on_problem="dense", repeats=3, warmup=1)
    assert artefact.runtime == "onnxruntime" and any("not pruned" in n for n in artefact.report.notes)
    path = save_deploy(tmp_path / "dense.pt", artefact)
    runtime, error = _fresh_process_error(tmp_path, path, model, shape)
    assert runtime == "onnxruntime" and error <= RTOL


def test_missing_onnxruntime_or_native_executor(monkeypatch):
    model, shape = _case("mlp", 0.9)
    monkeypatch.setattr(deploy_module, "_ort_available", lambda: "onnxruntime is not installed")
    with pytest.raises(PrunelabError, match="onnxruntime is not available"):
        build_deploy(model, shape, kind="sparse")
    if executor_library() is not None:
        art = build_deploy(model, shape, kind="sparse", on_problem="dense", repeats=3, warmup=1)
        assert art.runtime == "native" and any("onnxruntime" in n for n in art.report.notes)
    monkeypatch.undo()
    monkeypatch.setattr(deploy_module, "executor_unavailable_reason", lambda: "no compiler here")
    with pytest.raises(PrunelabError, match="native sparse executor cannot be built: no compiler here"):
        build_deploy(model, shape, kind="sparse")
    art = build_deploy(model, shape, kind="sparse", on_problem="dense", repeats=3, warmup=1)
    assert art.runtime == "onnxruntime" and any("no compiler here" in n for n in art.report.notes)
    assert art.report.relative_error <= RTOL


@native
def test_a_native_artefact_loads_without_the_native_executor(tmp_path):
    model, shape = _case("mlp", 0.95)
    artefact = build_deploy(model, shape, kind="sparse", repeats=3, warmup=1)
    artefact.runtime = "native"  # whichever won the timing here, the file must load where it cannot run natively
    path = save_deploy(tmp_path / "mlp.pt", artefact)
    code = ("import os, sys, torch, warnings; os.environ['PRUNELAB_NATIVE'] = '0'\n"
            "from prunelab.export import load_deploy\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always'); d = load_deploy(sys.argv[1])\n"
            "print(d.runtime, any('cannot run here' in str(x.message) for x in w))")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["torch", "True"]


def test_bad_files_are_one_line(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save({"w": torch.zeros(2)}, plain)
    with pytest.raises(PrunelabError, match="not a prunelab deploy artefact"):
        load_deploy(plain)
    with pytest.raises(PrunelabError, match="not found"):
        load_deploy(tmp_path / "missing.pt")
    model, shape = _case("block", 0.5)
    payload = build_deploy(model, shape, kind="sparse", repeats=2, warmup=0).payload()
    payload["runtime"] = "native" if executor_library() is not None else "torch"
    payload["tensors"]["1.weight"] = torch.zeros(8, 3, 3, 3)  # the second conv no longer fits its input
    torch.save(payload, tmp_path / "tampered.pt")
    with pytest.raises(PrunelabError, match="malformed"):
        load_deploy(tmp_path / "tampered.pt")
    del payload["graph"]
    torch.save(payload, tmp_path / "broken.pt")
    with pytest.raises(PrunelabError, match="malformed"):
        load_deploy(tmp_path / "broken.pt")


# --------------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("deploy")
    spec = resolve("cnn")
    torch.manual_seed(0)
    dense = create(spec)
    save_checkpoint(folder / "cnn.pt", arch=spec.to_dict(), state_dict=dense.state_dict())
    pruned = create(spec)
    prune_global(pruned, 0.9)
    save_checkpoint(folder / "cnn-90.pt", arch=spec.to_dict(), state_dict=pruned.state_dict())
    return folder


def test_cli_export_deploy_and_bench_it(checkpoints, tmp_path, capsys):
    out = tmp_path / "cnn.deploy.pt"
    assert main(["export", str(checkpoints / "cnn-90.pt"), "--format", "deploy", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["runtime"] in ("native", "onnxruntime") and summary["relative_error"] <= RTOL
    assert out.is_file()
    assert main(["bench", str(out), str(checkpoints / "cnn-90.pt"), "--backend", "onnxruntime", "--threads", "1",
                 "--batch-sizes", "1", "--warmup", "1", "--repeats", "3", "--min-time", "0", "--json"]) == 0
    captured = capsys.readouterr()
    rows = json.loads(captured.out)["results"]
    assert [(r["model"], r["backend"]) for r in rows] == [(str(out), "deploy"),
                                                          (str(checkpoints / "cnn-90.pt"), "onnxruntime")]
    assert all(r["iqr_ms"] is not None and r["iqr_ms"] >= 0 for r in rows)
    assert "timing 2 configuration(s) interleaved" in captured.err


def test_cli_export_deploy_of_an_unpruned_model(checkpoints, tmp_path, capsys):
    out = tmp_path / "d.pt"
    assert main(["export", str(checkpoints / "cnn.pt"), "--format", "deploy", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "not pruned" in err and "--fallback dense" in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing written, no temp file left
    assert main(["export", str(checkpoints / "cnn.pt"), "--format", "deploy", "--out", str(out),
                 "--fallback", "dense"]) == 0
    text = capsys.readouterr().out
    assert "note: the model is not pruned" in text and "runtime onnxruntime" in text and out.is_file()


@pytest.mark.parametrize("extra, message", [
    (["--format", "deploy", "--policy", "dense"], "--format sparse only"),
    (["--format", "onnx", "--fallback", "dense"], "--format deploy only"),
    (["--format", "sparse", "--pad-to", "8"], "--format deploy only"),
    (["--format", "deploy", "--pad-to", "0"], "--pad-to must be >= 1"),
])
def test_cli_export_deploy_bad_flags(checkpoints, tmp_path, extra, message, capsys):
    out = tmp_path / "o.pt"
    assert main(["export", str(checkpoints / "cnn-90.pt"), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and not out.exists()


def test_deploy_benchmark_quick_mode_writes_the_rows(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "deploy.py"
    spec = importlib.util.spec_from_file_location("deploy_benchmark", script)
    bench_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_module)
    out = tmp_path / "rows.json"
    assert bench_module.main(["--quick", "--repeats", "3", "--warmup", "1", "--layer-repeats", "3",
                              "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [(r["kind"], r["batch"]) for r in rows] == [("sparse", 1), ("structured", 1)]
    for r in rows:
        assert list(r) == ["model", "kind", "level", "batch", "ort_dense_ms", "prunelab_ms", "speedup_vs_ort_dense",
                           "macs_ratio"]
        assert r["speedup_vs_ort_dense"] == pytest.approx(r["ort_dense_ms"] / r["prunelab_ms"])
        assert r["macs_ratio"] > 1
    assert "speed-up" in capsys.readouterr().out
