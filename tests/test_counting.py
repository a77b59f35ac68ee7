"""Parameter and MAC counters against published sizes, independent counters and hand computations.

References: sizes computed from the reference model definitions (pytorch-prunes, PFS and Global MP;
torchvision's published parameter counts), ``torch.utils.flop_counter.FlopCounterMode`` (conv and
matmul FLOPs = 2 x MACs) and torch-pruning's ``count_ops_and_params`` (per-layer, ptflops-style).
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch_pruning as tp
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from prunelab.cli import main
from prunelab.errors import PrunelabError
from prunelab.measure import count_macs, count_params, layer_table
from prunelab.models import create, input_shape_of, list_models, resolve

torch.set_num_threads(1)


def _close(value: float, reference: float, rel: float = 0.01) -> bool:
    return abs(value - reference) <= rel * reference


# name -> (total params, conv+linear weights, MACs, relative tolerance on MACs), from those definitions
PUBLISHED = {
    "wrn-40-2": (2_243_546, 2_238_128, 327.6e6, 0.01),
    "resnet56": (855_770, 851_504, 125_751_936, 0.0),  # exact figure of PFS's counter
    "resnet20": (272_474, 270_896, 40.8e6, 0.01),
    "resnet32-a": (464_154, 461_872, 68.9e6, 0.01),
    "resnet32": (466_906, 464_432, 69.1e6, 0.01),
    "mobilenet-v1": (4_230_976, 4_209_088, 568.7e6, 0.01),
    "mobilenet-v2-cifar": (2_296_922, 2_261_824, 91.2e6, 0.01),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_sizes(name):
    params, weights, macs, rel = PUBLISHED[name]
    model = create(name)
    counts = count_params(model)
    assert counts.params == params
    assert counts.conv_linear_weights == weights
    measured = count_macs(model, input_shape_of(resolve(name)))
    assert measured == macs if rel == 0 else _close(measured, macs, rel)


@pytest.fixture(scope="module")
def resnet50():
    torch.manual_seed(0)
    model = create("resnet50")
    return model, layer_table(model, (3, 224, 224))


def test_resnet50_published(resnet50):
    model, rows = resnet50
    counts = count_params(model)
    assert counts.params == 25_557_032  # torchvision
    assert counts.conv_linear_weights == 25_502_912  # Global MP's pruning denominator
    assert _close(sum(r.macs_dense for r in rows), 4.09e9)
    # the average pool (2048 x 7 x 7) is the only non-weight term
    assert [r.macs_dense for r in rows if r.kind == "pool"] == [2048 * 49]
    for r in rows:  # sparse-aware = nnz x positions (a normal draw can be exactly 0)
        assert r.macs_sparse * max(1, r.weight_numel) == r.macs_dense * (r.nonzero if r.weight_numel else 1)


def test_torchvision_published_params():
    for name, params in (("resnet18", 11_689_512), ("mobilenet-v2", 3_504_872)):
        with torch.device("meta"):
            model = create(name)
        assert sum(p.numel() for p in model.parameters()) == params, name


def test_vgg16_pfs_counter():
    """PFS counts Conv/Linear only for VGG (its average pool is created inline); ours also counts the
    pool module (512 x 2 x 2)."""
    model = create("vgg16-bn")
    rows = layer_table(model, (3, 32, 32))
    assert sum(r.macs_dense for r in rows if r.kind != "pool") == 313_201_664
    assert sum(r.macs_dense for r in rows) == 313_201_664 + 512 * 2 * 2


def test_densenet_params_by_hand():
    """DenseNet-BC-100 (k=12) parameters from the layer formula of Huang et al. / pytorch-prunes."""
    k, n = 12, 16
    total, c = 3 * 2 * k * 9, 2 * k
    for block in range(3):
        for _ in range(n):
            total += 2 * c + c * 4 * k + 2 * 4 * k + 4 * k * k * 9
            c += k
        if block < 2:
            out = c // 2
            total += 2 * c + c * out
            c = out
    total += 2 * c + c * 10 + 10
    assert count_params(create("densenet-bc-100-12")).params == total


@pytest.mark.parametrize("name", list_models())
def test_macs_match_flop_counter(name):
    """Conv, Linear and recurrent MACs equal torch's FlopCounterMode / 2 for every zoo model, on the
    meta device (shapes only). Conv biases, which FlopCounterMode ignores, are removed first; average
    pools (input numel, seen by an independent hook) are our only other term."""
    with torch.device("meta"):
        model = create(name).eval()
        for m in model.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d)) and m.bias is not None:
                m.bias = None
        from prunelab.models import input_spec_of
        from prunelab.models.inputs import call_model

        inputs = input_spec_of(resolve(name))  # one float tensor, or the LM's token ids
        ours = count_macs(model, inputs)
        pools = [0]
        pool_types = (nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)
        handles = [m.register_forward_hook(lambda m, i, o: pools.__setitem__(0, pools[0] + i[0].numel()))
                   for m in model.modules() if isinstance(m, pool_types)]
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            call_model(model, inputs.example(1, zeros=True))
        for h in handles:
            h.remove()
    assert pools[0] > 0 or name in ("fastgrnn", "gru", "mlp") or resolve(name).family in ("vit", "lm")
    assert ours - pools[0] == counter.get_total_flops() // 2


@pytest.mark.parametrize("name", ["cnn", "cnn1d", "mobilenet-v2-cifar", "fastgrnn", "resnet20-a", "densenet-bc-40-12"])
def test_per_layer_against_torch_pruning(name):
    """Per-layer agreement with torch-pruning's counter: conv (bias included) and average-pool terms
    equal; its Linear count adds the bias (out_features per call)."""
    model = create(name).eval()
    shape = input_shape_of(resolve(name))
    tp_total, tp_params, tp_layers, _ = tp.utils.count_ops_and_params(model, torch.zeros(1, *shape), layer_wise=True)
    assert tp_params == count_params(model).params
    modules = dict(model.named_modules())
    for row in layer_table(model, shape):
        module = modules[row.name]
        expected = tp_layers[module]
        if row.kind == "linear" and module.bias is not None:
            calls = row.macs_dense // module.weight.numel()
            expected -= calls * module.out_features
        assert row.macs_dense == expected, row.name


def _tiny_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.Conv2d(3, 4, 1, stride=2, bias=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 5),
    )


def test_sparse_macs_by_hand():
    torch.manual_seed(0)
    net = _tiny_net()
    with torch.no_grad():
        net[0].weight[0].zero_()  # 18 of 54 weights
        net[2].weight[:, :2].zero_()  # 8 of 12 weights
        net[5].weight[1:3].zero_()  # 8 of 20 weights
    # mask the last linear's first row out with a weight_mask buffer (weight left non-zero)
    mask = torch.ones_like(net[5].weight, dtype=torch.bool)
    mask[0] = False
    net[5].register_buffer("weight_mask", mask)
    shape = (2, 6, 6)
    dense = 54 * 36 + (12 * 9 + 4 * 9) + 4 * 9 + 20
    sparse = 36 * 36 + (4 * 9 + 4 * 9) + 4 * 9 + (20 - 8 - 4)
    assert count_macs(net, shape) == dense
    assert count_macs(net, shape, sparse=True) == sparse
    rows = {r.name: r for r in layer_table(net, shape)}
    assert (rows["0"].kind, rows["0"].weight_numel, rows["0"].nonzero) == ("conv", 54, 36)
    assert (rows["3"].kind, rows["3"].macs_dense, rows["3"].macs_sparse) == ("pool", 36, 36)
    assert rows["5"].nonzero == 8
    counts = count_params(net)
    assert counts.params == 54 + 12 + 4 + 20 + 5
    assert counts.conv_linear_weights == 86
    assert counts.nonzero_conv_linear == 36 + 4 + 8
    assert counts.nonzero == 48 + int(torch.count_nonzero(net[2].bias)) + int(torch.count_nonzero(net[5].bias))


def test_recurrence_counted_per_step():
    """FastGRNN: W factors once per step (T positions), U factors called T times, classifier once."""
    model = create("fastgrnn", input_size=3, hidden_size=8, w_rank=2, u_rank=4, num_classes=5)
    steps = 7
    expected = steps * (3 * 2 + 2 * 8) + steps * (8 * 4 + 4 * 8) + 8 * 5
    assert count_macs(model, (steps, 3)) == expected
    gru = create("gru", input_size=2, hidden_size=6, num_classes=3)
    assert count_macs(gru, (11, 2)) == 11 * 3 * 6 * (2 + 6) + 6 * 3


def test_counting_restores_mode_and_reports_bad_shapes():
    model = create("cnn")
    model.train()
    count_macs(model, (1, 8, 8))
    assert model.training
    model.eval()
    layer_table(model, (1, 8, 8))
    assert not model.training
    with pytest.raises(PrunelabError, match="input shape"):
        count_macs(model, (3, 8))
    with pytest.raises(PrunelabError, match="positive"):
        count_macs(model, (0, 8, 8))


def test_shared_parameters_counted_once():
    lin = nn.Linear(4, 4)
    net = nn.Sequential(lin, nn.ReLU(), lin)
    assert count_params(net).params == 20
    assert count_params(net).conv_linear_weights == 16
    assert count_macs(net, (4,)) == 32  # called twice


def test_info_cli_json(capsys):
    assert main(["info", "resnet20", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["params"] == 272_474
    assert report["conv_linear_weights"] == 270_896
    assert report["macs"] == report["macs_sparse"] == 40_817_280
    assert report["input_shape"] == [3, 32, 32]
    assert any(row["name"] == "layer3.2.conv2" for row in report["layers"])


def test_info_cli_overrides_and_text(capsys):
    assert main(["info", "resnet20", "--num-classes", "100", "--input-size", "1x8x8"]) == 0
    out = capsys.readouterr().out
    assert "layer1.0.conv1" in out and "input 1x8x8" in out
    model = create("resnet20", num_classes=100, in_channels=1)
    assert f"{count_params(model).params:,}" in out
    assert f"{count_macs(model, (1, 8, 8)):,}" in out


def test_info_cli_checkpoint(tmp_path, capsys):
    from prunelab.io import save_checkpoint

    spec = resolve("cnn")
    model = create(spec)
    with torch.no_grad():
        model.features[0].conv.weight[:8].zero_()
    path = save_checkpoint(tmp_path / "cnn.pt", arch=spec.to_dict(), state_dict=model.state_dict())
    assert main(["info", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["nonzero_conv_linear"] == report["conv_linear_weights"] - 8 * 9
    assert report["macs_sparse"] == report["macs"] - 8 * 9 * 64
    assert math.isclose(report["sparsity"], 72 / report["conv_linear_weights"])


@pytest.mark.parametrize("argv, needle", [
    (["info", "resnet-21"], "valid choices: "),
    (["info", "missing/ckpt.pt"], "not found"),
    (["info", "resnet20", "--input-size", "3xbad"], "3x32x32"),
])
def test_info_cli_bad_input(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_layer_table_is_a_copyable_record():
    rows = layer_table(create("mlp"), (64,))
    assert [r.kind for r in rows] == ["linear", "linear", "linear"]
    assert copy.deepcopy(rows[0]).to_dict()["macs_dense"] == 64 * 128
