"""MAC counting of attention, HF Conv1D, Linear on N-D inputs and functional products, checked
against ``torch.utils.flop_counter.FlopCounterMode`` (MACs = FLOPs / 2) and by hand."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from prunelab.measure.counting import (
    MacCountWarning,
    attention_macs,
    check_macs,
    count_macs,
    count_params,
    layer_table,
    warn_if_miscounted,
)
from prunelab.models import create, input_shape_of, list_models, resolve
from prunelab.models.inputs import InputSpec, call_model

torch.set_num_threads(1)
pytest.importorskip("transformers")
from hf_tiny import tiny  # noqa: E402


def flop_counter_macs(model: nn.Module, spec: InputSpec) -> float:
    """The reference, with nothing of prunelab's: FlopCounterMode's FLOPs / 2 of one batch-1 pass."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        call_model(model, spec.example(1))
    return counter.get_total_flops() / 2


def _small_shape(name: str):
    from prunelab.models import input_spec_of

    spec = input_spec_of(resolve(name))
    if not spec.is_plain:  # the LM's token ids
        return spec
    shape = tuple(input_shape_of(resolve(name)))
    if len(shape) == 3:  # images: smaller, so the whole zoo checks in seconds
        return (shape[0], 32, 32) if shape[1] >= 224 or name.startswith("vgg") else (shape[0], 8, 8)
    return shape


def _smallest_per_family() -> list[str]:
    """The smallest registered model of every zoo family (by the zoo count cache's parameters)."""
    import json
    from importlib.resources import files

    rows = json.loads(files("prunelab.cli").joinpath("zoo_counts.json").read_text())["rows"]
    best: dict[str, dict] = {}
    for row in rows:
        if row["family"] not in best or row["params"] < best[row["family"]]["params"]:
            best[row["family"]] = row
    names = sorted(r["name"] for r in best.values())
    assert len(names) == len({resolve(n).family for n in list_models()})
    return names


@pytest.mark.parametrize("name", _smallest_per_family())
def test_zoo_against_flop_counter(name):
    model = create(name).eval()
    shape = _small_shape(name)
    check = check_macs(model, shape)
    assert check.ok, check.describe()
    # and prunelab's own total is the flop counter's plus only the conventions it adds (conv biases, pooling)
    extra = sum(r.macs_dense for r in layer_table(model, shape) if r.kind == "pool")
    extra += sum(m.out_channels * o for m, o in _conv_bias_positions(model, shape))
    reference = flop_counter_macs(model, shape if isinstance(shape, InputSpec) else InputSpec.tensor(shape))
    if not any(isinstance(m, (nn.LSTM, nn.RNN)) for m in model.modules()):
        assert count_macs(model, shape) == pytest.approx(reference + extra, rel=1e-9, abs=0.5)


def _conv_bias_positions(model, shape):
    found = []

    def hook(m, i, o):
        if m.bias is not None:
            found.append((m, o[0, 0].numel()))

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    with torch.no_grad():
        call_model(model, shape.example(1) if isinstance(shape, InputSpec) else torch.zeros(1, *shape))
    for h in hs:
        h.remove()
    return found


@pytest.mark.parametrize("kind", ["bert", "gpt2", "vit", "llama-gqa"])
def test_hf_models_against_flop_counter_eager_and_sdpa(kind):
    eager, spec = tiny(kind, "eager")
    reference = flop_counter_macs(eager, spec)
    assert count_macs(eager, spec) == pytest.approx(reference, rel=0.01)
    check = check_macs(eager, spec)
    assert check.ok and check.reference == reference
    sdpa, _ = tiny(kind, "sdpa")
    # the same architecture through F.scaled_dot_product_attention counts the same products
    assert count_macs(sdpa, spec) == count_macs(eager, spec)
    assert check_macs(sdpa, spec).ok


def test_attention_rows_by_hand():
    model, spec = tiny("llama-gqa")
    rows = {r.name: r for r in layer_table(model, spec)}
    # 4 query heads (2 key/value heads, each shared by 2 query heads), T = 12, head size 8: QK^T and AV
    att = rows["model.layers.0.self_attn:matmul"]
    assert att.kind == "matmul" and att.weight_numel == 0
    assert att.macs_dense == 4 * 12 * 12 * 8 * 2 == attention_macs((1, 4, 12, 8), (1, 2, 12, 8), (1, 2, 12, 8))
    # Linear on (B, T, F): in * out per position; the k projection has 2 heads of 8
    assert rows["model.layers.0.self_attn.k_proj"].macs_dense == 12 * 32 * 16
    sdpa, _ = tiny("llama-gqa", "sdpa")
    assert {r.name: r.macs_dense for r in layer_table(sdpa, spec)}["model.layers.0.self_attn:attention"] == \
        att.macs_dense


def test_sequence_length_from_the_spec():
    model, spec = tiny("bert")
    for t in (6, 12):
        # by hand, per layer: Q, K, V, O projections 4 x T x 32 x 32; FFN 2 x T x 32 x 64; QK^T and AV
        # 4 heads x T x T x 8 x 2; then the pooler and the classifier on the first token only
        by_hand = 2 * (4 * t * 32 * 32 + 2 * t * 32 * 64 + 4 * t * t * 8 * 2) + 32 * 32 + 32 * 3
        assert count_macs(model, spec.with_seq_len(t)) == by_hand
    rows6 = {r.name: r.macs_dense for r in layer_table(model, spec.with_seq_len(6))}
    assert rows6["bert.encoder.layer.0.attention.self:matmul"] == 4 * 36 * 16


def test_hf_conv1d_counted_as_linear_and_prunable_weight():
    model, spec = tiny("gpt2")
    from transformers.pytorch_utils import Conv1D

    rows = {r.name: r for r in layer_table(model, spec)}
    attn = rows["transformer.h.0.attn.c_attn"]
    assert attn.kind == "linear" and attn.weight_numel == 32 * 96 and attn.macs_dense == 12 * 32 * 96
    conv1d = sum(m.weight.numel() for m in model.modules() if isinstance(m, Conv1D))
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    # lm_head is tied to the input embedding: its weight counts once, as a Linear weight
    assert count_params(model).conv_linear_weights == conv1d + linear
    assert count_params(model).params == sum(p.numel() for p in model.parameters())


class _Attention(nn.Module):
    """Hand-written attention: functional products on activations, a bare-parameter projection."""

    def __init__(self, d=8, heads=2):
        super().__init__()
        self.heads, self.w = heads, nn.Parameter(torch.randn(d, d))
        self.mha = nn.MultiheadAttention(d, heads, batch_first=True)

    def forward(self, x):
        q = x @ self.w  # (B, T, d) @ (d, d)
        b, t, d = q.shape
        h = q.view(b, t, self.heads, d // self.heads).transpose(1, 2)
        a = torch.softmax(torch.einsum("bhid,bhjd->bhij", h, h), -1)
        y = torch.matmul(a, h).transpose(1, 2).reshape(b, t, d)
        return self.mha(y, y, y, need_weights=False)[0] + F.scaled_dot_product_attention(h, h, h).transpose(
            1, 2).reshape(b, t, d)


class _MHA(nn.Module):
    def __init__(self, need_weights):
        super().__init__()
        self.need_weights, self.mha = need_weights, nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, q, kv):
        return self.mha(q, kv, kv, need_weights=self.need_weights)[0]


def test_fused_multihead_attention_counts_as_its_decomposed_path():
    fast = _MHA(False).eval()
    slow = _MHA(True).eval()  # need_weights: the decomposed path, which the flop counter sees op by op
    slow.load_state_dict(fast.state_dict())
    spec = InputSpec.tuple_of(*(InputSpec.tensor(s).leaves[0][1] for s in ((5, 8), (7, 8))))
    reference = flop_counter_macs(slow, spec)
    assert reference == 5 * 64 * 2 + 7 * 64 * 2 + 2 * 5 * 7 * 8
    assert count_macs(fast, spec) == count_macs(slow, spec) == reference
    with torch.no_grad():
        assert torch.allclose(call_model(fast, spec.example(1)), call_model(slow, spec.example(1)), atol=1e-6)


def test_functional_products_by_hand():
    net = _Attention().eval()
    t, d = 5, 8
    by_hand = t * d * d + 2 * (2 * t * t * 4)  # x @ w; einsum QK^T + matmul AV (2 heads of 4)
    by_hand += 3 * t * d * d + t * d * d + 2 * t * t * 4 * 2  # MHA in/out projections + its attention
    by_hand += 2 * t * t * 4 * 2  # scaled_dot_product_attention
    assert count_macs(net, (t, d)) == by_hand
    assert check_macs(net, (t, d)).ok


class _LoRA(nn.Linear):
    """A Linear subclass whose forward adds products its own rule does not see."""

    def __init__(self):
        super().__init__(16, 16)
        self.a, self.b = nn.Parameter(torch.randn(16, 4)), nn.Parameter(torch.randn(4, 16))

    def forward(self, x):
        return super().forward(x) + x @ self.a @ self.b


def test_disagreement_is_a_warning_naming_the_module():
    net = nn.Sequential(nn.Linear(16, 16), nn.Sequential(_LoRA()), nn.Linear(16, 2))
    with pytest.warns(MacCountWarning, match=r"differs from torch\.utils\.flop_counter.*modules: 1\.0: 256 vs 384"):
        check = warn_if_miscounted(net, (16,))
    assert not check.ok and [m[0] for m in check.modules] == ["1.0"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_if_miscounted(nn.Sequential(nn.Linear(16, 16)), (16,)).ok
