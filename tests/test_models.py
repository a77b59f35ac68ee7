"""The model zoo: every family builds, trains a step, round-trips its widths and its checkpoints."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from prunelab.checkpoint import load_model
from prunelab.cli import main
from prunelab.errors import PrunelabError
from prunelab.io import save_checkpoint
from prunelab.models import (
    ArchSpec,
    create,
    get_family,
    input_shape_of,
    input_spec_of,
    list_families,
    list_models,
    resolve,
    spec_from_units,
    width_units,
)

torch.set_num_threads(1)

# family -> (small kwargs, input shape): every registered family must appear here
TINY: dict[str, tuple[dict, tuple[int, ...]]] = {
    "resnet_cifar": ({"depth": 8, "widths": [4, 8, 16], "shortcut": "A"}, (3, 16, 16)),
    "wrn": ({"depth": 10, "widen_factor": 0.5, "dropout": 0.1}, (3, 16, 16)),
    "densenet": ({"depth": 10, "growth_rate": 4}, (3, 16, 16)),
    "vgg": ({"depth": 11, "width_mult": 0.0625}, (3, 32, 32)),
    "mobilenet_v1": ({"width_mult": 0.125, "num_classes": 7}, (3, 32, 32)),
    "mobilenet_v2": ({"width_mult": 0.25, "hidden_mult": 0.25, "num_classes": 7}, (3, 32, 32)),
    "mobilenet_v2_cifar": ({"width_mult": 0.125}, (3, 16, 16)),
    "resnet": ({"block": "bottleneck", "layers": [1, 1, 1, 1], "widths": [4, 8, 8, 8], "stem_width": 8,
                "num_classes": 5}, (3, 32, 32)),
    "fastgrnn": ({"input_size": 3, "hidden_size": 8, "w_rank": 2, "u_rank": 4}, (6, 3)),
    "mlp": ({"hidden_widths": [16, 8]}, (1, 8, 8)),
    "cnn": ({"widths": [4, 8, 8]}, (1, 8, 8)),
    "cnn1d": ({"widths": [4, 8]}, (1, 40)),
    "gru": ({"hidden_size": 8}, (12, 1)),
    "vit": ({"image_size": 8, "in_channels": 1, "dim": 16, "depth": 2, "heads": 2, "head_dim": 8,
             "mlp_ratio": 1.5}, (1, 8, 8)),
    "lm": ({"num_classes": 50, "seq_len": 12, "dim": 16, "depth": 2, "kv_heads": 2, "q_per_kv": 2, "head_dim": 4,
            "mlp_ratio": 1.5}, (12,)),
}


def example(spec: ArchSpec, shape: tuple[int, ...], batch: int, seed: int = 0):
    """Example inputs of ``batch`` samples: random floats of ``shape``, or the family's token ids."""
    if get_family(spec.family).inputs is not None:
        return input_spec_of(spec).example(batch, seed=seed)
    return torch.randn(batch, *shape)


def tiny(family: str) -> tuple[ArchSpec, tuple[int, ...]]:
    kwargs, shape = TINY[family]
    return ArchSpec(family, dict(kwargs)), shape


def test_every_family_has_a_tiny_config():
    # user families registered by other tests' plugins are not the zoo's
    from prunelab.models.registry import get_family

    builtin = {f for f in list_families() if get_family(f).build.__module__.startswith("prunelab.")}
    assert set(TINY) == builtin


@pytest.mark.parametrize("family", sorted(TINY))
def test_forward_backward(family):
    torch.manual_seed(0)
    spec, shape = tiny(family)
    model = create(spec).train()
    out = model(example(spec, shape, 2))
    classes = spec.kwargs.get("num_classes", 10 if family != "fastgrnn" else 2)
    assert out.shape == ((2, shape[0], classes) if family == "lm" else (2, classes))  # the LM: logits per token
    out.logsumexp(-1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("family", sorted(TINY))
def test_checkpoint_round_trip(family, tmp_path):
    torch.manual_seed(1)
    spec, shape = tiny(family)
    model = create(spec)
    with torch.no_grad():  # move BN running statistics away from their defaults
        model.train()(example(spec, shape, 4))
    model.eval()
    x = example(spec, shape, 3, seed=1)
    expected = model(x)
    path = save_checkpoint(tmp_path / f"{family}.pt", arch=json.loads(json.dumps(spec.to_dict())),
                           state_dict=model.state_dict(), meta={"input_shape": list(shape)})
    torch.manual_seed(2)  # the rebuilt model starts from a different init
    loaded = load_model(path)
    assert loaded.spec == spec
    assert torch.equal(loaded.model(x), expected)


@pytest.mark.parametrize("family", sorted(f for f in TINY if get_family(f).units is not None))
def test_width_units_round_trip(family):
    """Units read from a model rebuild it; changed widths rebuild a narrower model whose units and
    parameter shapes agree."""
    spec, shape = tiny(family)
    model = create(spec)
    units = width_units(model, spec)
    assert units and all(u.width >= 1 for u in units)
    modules = dict(model.named_modules())
    for u in units:
        assert u.conv in modules
        assert modules[u.conv].weight.shape[0] == u.width * u.group_size
        if u.kind == "heads":  # gates and masks act on the per-head output, one slice per head on u.axis
            assert u.bn in modules and u.group_size > 1
        elif u.bn is not None:
            assert isinstance(modules[u.bn], nn.modules.batchnorm._BatchNorm)
            assert modules[u.bn].num_features == u.width
    same = create(spec_from_units(spec, units))
    assert _shapes(same) == _shapes(model)

    narrower = [u.__class__(u.name, u.bn, u.conv, u.key, u.index, max(1, u.width - 1 - i % 3))
                for i, u in enumerate(units)]
    spec2 = spec_from_units(spec, narrower)
    model2 = create(spec2)
    assert [u.width for u in width_units(model2, spec2)] == [u.width for u in narrower]
    assert model2(example(spec, shape, 2)).shape[0] == 2
    # read back from the narrow model alone, the spec rebuilds the same shapes
    assert _shapes(create(spec_from_units(spec, width_units(model2, spec2)))) == _shapes(model2)


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_units_read_actual_widths_of_a_compressed_model():
    """Slice one block's internal channels by hand (as a structured plan does): the units report the
    new width, the spec written from them rebuilds the same shapes, and the family init redraws the
    narrowed conv with He std for its *actual* fan-out (pytorch-prunes' deploy keeps the sliced
    full-width init instead)."""
    spec = resolve("resnet20")
    model = create(spec)
    block = model.layer2[1]
    keep = torch.arange(0, 32, 2)
    conv1 = nn.Conv2d(32, 16, 3, 1, 1, bias=False)
    conv1.weight.data = block.conv1.weight.data[keep].clone()
    bn1 = nn.BatchNorm2d(16)
    conv2 = nn.Conv2d(16, 32, 3, 1, 1, bias=False)
    conv2.weight.data = block.conv2.weight.data[:, keep].clone()
    block.conv1, block.bn1, block.conv2 = conv1, bn1, conv2
    units = width_units(model, spec)
    assert units[4].name == "layer2.1" and units[4].width == 16
    rebuilt = create(spec_from_units(spec, units))
    assert _shapes(rebuilt) == _shapes(model)
    get_family(spec.family).init(model)
    assert math.isclose(model.layer2[1].conv1.weight.std().item(), math.sqrt(2 / (9 * 16)), rel_tol=0.1)


def test_init_rules():
    """Spot checks of each reference's initialisation (statistical, on large layers)."""
    torch.manual_seed(0)
    wrn = create("wrn-16-2")
    w = wrn.block3.layer[1].conv2.weight  # 128 x 128 x 3 x 3
    assert math.isclose(w.std().item(), math.sqrt(2 / (9 * 128)), rel_tol=0.03)
    assert torch.count_nonzero(wrn.fc.bias) == 0
    vgg = create("vgg11-bn", width_mult=0.5)
    assert torch.all(vgg.feature[0].bn.weight == 0.5)
    assert math.isclose(vgg.classifier.weight.std().item(), 0.01, rel_tol=0.15)
    res_a = create("resnet20-a")
    w = res_a.layer3[1].conv1.weight  # fan-in 64 x 9
    assert math.isclose(w.std().item(), math.sqrt(2 / (9 * 64)), rel_tol=0.05)
    grnn = create("fastgrnn")
    assert torch.all(grnn.cell.bias_gate == 1) and grnn.cell.nu.item() == -4.0
    assert math.isclose(grnn.cell.u1.weight.std().item(), 0.1, rel_tol=0.05)


def test_same_seed_same_model():
    torch.manual_seed(5)
    a = create("resnet20").state_dict()
    torch.manual_seed(5)
    b = create("resnet20").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def _torchvision_keys(block: str, layers: list[int]) -> list[str]:
    """state_dict keys of ``torchvision.models.resnet`` written out from its layout."""
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    convs = ["conv1", "conv2"] + (["conv3"] if block == "bottleneck" else [])
    keys = ["conv1.weight"] + [f"bn1.{p}" for p in bn]
    for s, n in enumerate(layers, start=1):
        for b in range(n):
            prefix = f"layer{s}.{b}"
            for c in convs:
                keys += [f"{prefix}.{c}.weight"] + [f"{prefix}.bn{c[-1]}.{p}" for p in bn]
            if b == 0 and (s > 1 or block == "bottleneck"):
                keys += [f"{prefix}.downsample.0.weight"] + [f"{prefix}.downsample.1.{p}" for p in bn]
    return keys + ["fc.weight", "fc.bias"]


@pytest.mark.parametrize("name, block, layers, count", [
    ("resnet18", "basic", [2, 2, 2, 2], 122),
    ("resnet50", "bottleneck", [3, 4, 6, 3], 320),
])
def test_torchvision_state_dict_keys(name, block, layers, count):
    with torch.device("meta"):
        sd = create(name).state_dict()
    assert len(sd) == count
    assert list(sd) == _torchvision_keys(block, layers)
    for key in ("layer1.0.conv1.weight", "fc.bias", "layer2.0.downsample.0.weight",
                "layer2.0.downsample.1.running_mean"):
        assert key in sd
    if name == "resnet50":
        assert tuple(sd["layer2.0.downsample.0.weight"].shape) == (512, 256, 1, 1)
        assert tuple(sd["layer4.2.conv2.weight"].shape) == (512, 512, 3, 3)
        assert tuple(sd["fc.weight"].shape) == (1000, 2048)


def test_pytorch_prunes_key_names():
    sd = create("wrn-16-1").state_dict()
    assert "block1.layer.0.convShortcut.weight" not in sd  # 16 -> 16: identity
    assert "block2.layer.0.convShortcut.weight" in sd
    assert "block3.layer.1.bn2.running_var" in sd and "fc.bias" in sd
    assert "dense1.0.conv2.weight" in create("densenet-bc-40-12").state_dict()


@pytest.mark.parametrize("name, overrides, rule", [
    ("wrn-40-2", {"depth": 41}, "6n+4"),
    ("resnet20", {"depth": 21}, "6n+2"),
    ("densenet-bc-40-12", {"depth": 42}, "6n+4"),
    ("vgg16-bn", {"depth": 17}, "valid choices: 11, 13, 16, 19"),
    ("resnet20", {"block_widths": [16] * 8}, "must have 9 entries"),
    ("resnet20", {"block_widths": [16] * 8 + [0]}, "block_widths[8] must be >= 1"),
    ("resnet20", {"shortcut": "C"}, "valid choices: A, B"),
    ("resnet20-a", {"widths": [32, 16, 64]}, "must not decrease"),
    ("mobilenet-v1", {"widths": [32] * 13}, "must have 14 entries"),
    ("mobilenet-v2", {"hidden_widths": [8] * 17}, "must have 16 entries"),
    ("resnet50", {"block_widths": [64] * 16}, "must have 32 entries"),
    ("resnet50", {"block": "wide"}, "valid choices: basic, bottleneck"),
    ("wrn-16-1", {"dropout": 1.0}, "dropout must lie in [0.0, 1.0)"),
    ("wrn-16-1", {"widen_factor": 0}, "positive"),
    ("fastgrnn", {"u_rank": 0}, "u_rank must be >= 1"),
    ("cnn", {"colour": True}, "cannot build cnn"),
    ("vit-digits", {"patch_size": 3}, "patch_size 3 must divide the 8x8 image"),
    ("vit-digits", {"heads": [4, 4, 4]}, "heads must have 2 entries"),
    ("lm-tiny", {"head_dim": 15}, "even head_dim"),
    ("lm-tiny", {"tie_embeddings": "yes"}, "tie_embeddings must be true or false"),
])
def test_bad_architectures_name_the_rule(name, overrides, rule):
    with pytest.raises(PrunelabError) as err:
        create(name, **overrides)
    assert rule in str(err.value) and "\n" not in str(err.value)


def test_unknown_model_lists_valid_names():
    with pytest.raises(PrunelabError, match="unknown model 'resnet21'") as err:
        create("resnet21")
    for name in ("resnet20", "wrn-40-2", "densenet-bc-100-12", "mobilenet-v2-cifar", "fastgrnn"):
        assert name in str(err.value)


def test_input_shapes():
    assert input_shape_of(resolve("resnet20")) == (3, 32, 32)
    assert input_shape_of(resolve("resnet20", in_channels=1)) == (1, 32, 32)
    assert input_shape_of(resolve("resnet50")) == (3, 224, 224)
    assert input_shape_of(resolve("fastgrnn")) == (128, 9)
    assert input_shape_of(resolve("cnn1d")) == (1, 40)
    assert {name: input_shape_of(resolve(name)) for name in list_models()}["mobilenet-v2-cifar"] == (3, 32, 32)


def test_models_cli(capsys):
    assert main(["models", "--family", "resnet_cifar", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {f"resnet{d}{s}" for d in (20, 32, 44, 56, 110) for s in ("", "-a")}
    assert rows["resnet56"]["params"] == 855_770 and rows["resnet56"]["input_shape"] == [3, 32, 32]
    assert rows["resnet56"]["macs"] == 125_751_936
    assert main(["models", "--family", "wrn"]) == 0
    out = capsys.readouterr().out
    assert "wrn-40-2" in out and "2,243,546" in out and "3x32x32" in out
    assert main(["models", "--family", "nope"]) == 2
    assert "valid choices" in capsys.readouterr().err
