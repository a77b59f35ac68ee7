"""Input specs, the output adapter and the loss registry (prunelab.models.inputs, prunelab.train.losses)."""

import json
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.models.inputs import (
    InputSpec,
    LogitsModule,
    TensorSpec,
    as_input_spec,
    call_model,
    input_meta,
    logits_of,
    positional,
    spec_or_shape_of,
)
from prunelab.train.losses import get_loss, list_losses


def test_shape_shorthand_is_one_float_tensor():
    spec = as_input_spec((3, 8, 8))
    assert spec.is_plain and spec.shape == (3, 8, 8) and spec.structure == "tensor"
    x = spec.example(2)
    assert x.shape == (2, 3, 8, 8) and x.dtype == torch.float32
    # the same tensor as the old example_batch / example_input convention: randn with seed 0
    assert torch.equal(x, torch.randn((2, 3, 8, 8), generator=torch.Generator().manual_seed(0)))
    assert as_input_spec(spec) is spec and as_input_spec(torch.Size([4])).shape == (4,)
    assert spec.example(1, zeros=True).abs().sum() == 0
    assert spec.example(1, dtype=torch.float64).dtype == torch.float64


def test_tokens_dict_and_tuple_examples_are_deterministic():
    tok = InputSpec.tokens(12, 50, attention_mask=True)
    a, b = tok.example(3, seed=1), tok.example(3, seed=1)
    assert set(a) == {"input_ids", "attention_mask"} and torch.equal(a["input_ids"], b["input_ids"])
    assert a["input_ids"].dtype == torch.int64 and int(a["input_ids"].max()) < 50
    assert torch.equal(a["attention_mask"], torch.ones(3, 12, dtype=torch.int64))
    assert not torch.equal(a["input_ids"], tok.example(3, seed=2)["input_ids"])
    assert tok.seq_len == 12 and tok.vocab_size == 50
    assert tok.with_seq_len(7).example(1)["attention_mask"].shape == (1, 7)
    # token ids stay random when float leaves are zeroed (counting) and keep their dtype under a float override
    z = tok.example(1, zeros=True, dtype=torch.float16)
    assert z["input_ids"].dtype == torch.int64 and z["attention_mask"].dtype == torch.int64
    pos = InputSpec.tokens(5, 9)
    assert pos.structure == "tensor" and pos.example(2).shape == (2, 5)
    tup = InputSpec.tuple_of(TensorSpec((4,)), TensorSpec((2, 3), "float64"))
    x = tup.example(2)
    assert isinstance(x, tuple) and x[0].shape == (2, 4) and x[1].dtype == torch.float64


def test_json_round_trip_and_checkpoint_meta():
    for spec in (InputSpec.tensor((3, 4, 4)), InputSpec.tokens(8, 30, attention_mask=True),
                 InputSpec.dict_of({"pixel_values": TensorSpec((3, 8, 8)), "ids": TensorSpec((2,), "int64", 5)})):
        d = json.loads(json.dumps(spec.to_dict()))
        assert InputSpec.from_dict(d) == spec
        meta = json.loads(json.dumps(input_meta(spec)))
        assert spec_or_shape_of(meta) == spec and meta["input_shape"] == list(spec.shape)
        assert ("inputs" in meta) == (not spec.is_plain)
    assert spec_or_shape_of({"input_shape": [3, 2, 2]}) == InputSpec.tensor((3, 2, 2))
    assert spec_or_shape_of({}) is None


@pytest.mark.parametrize("bad, words", [
    ({"structure": "set", "tensors": [{"shape": [3]}]}, "unknown input structure"),
    ({"structure": "tensor", "tensors": [{"shape": [0]}]}, "positive sizes"),
    ({"structure": "tensor", "tensors": [{"shape": [4], "dtype": "int64"}]}, "needs a vocab_size"),
    ({"structure": "tensor", "tensors": [{"shape": [4], "vocab_size": 3}]}, "integer token ids"),
    ({"structure": "tensor", "tensors": [{"shape": [1 << 20, 1 << 10]}]}, "elements per sample"),
    ({"structure": "tensor", "tensors": [{"shape": [4], "colour": 1}]}, "unknown input tensor field"),
    ({"structure": "tuple", "tensors": [{"name": "a", "shape": [1]}, {"name": "a", "shape": [1]}]}, "distinct"),
    ({"tensors": 3}, "list of 'tensors'"),
])
def test_bad_specs_are_one_line(bad, words):
    with pytest.raises(PrunelabError, match=words) as info:
        InputSpec.from_dict(bad)
    assert "\n" not in str(info.value)


def test_bad_shorthand():
    for bad in ((), (3, 0), "abc", None):
        with pytest.raises(PrunelabError, match="input shape"):
            as_input_spec(bad)


class _Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(2, 3)

    def forward(self, x, y=None, *, mode="tuple"):
        out = self.a(x) + (self.b(y) if y is not None else 0)
        return {"tuple": (out, x), "dict": {"hidden": x, "logits": out}, "list": [out]}[mode]


def test_call_model_and_logits_of_every_output_form():
    net = _Two()
    x, y = torch.randn(2, 4), torch.randn(2, 2)
    ref = net.a(x) + net.b(y)
    assert torch.equal(logits_of(call_model(net, (x, y))), ref)
    assert torch.equal(logits_of(call_model(net, {"x": x, "y": y, "mode": "dict"})), ref)
    assert torch.equal(logits_of(call_model(net, {"x": x, "y": y, "mode": "list"})), ref)
    assert torch.equal(logits_of(ref), ref)
    assert torch.equal(logits_of(OrderedDict(loss=torch.tensor(1.0), logits=ref)), ref)
    with pytest.raises(PrunelabError, match="cannot read logits"):
        logits_of(3)
    with pytest.raises(PrunelabError, match="without tensors"):
        logits_of({"a": 1})


def test_logits_of_hf_model_output():
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_outputs import CausalLMOutputWithPast

    ref = torch.randn(1, 3, 5)
    out = CausalLMOutputWithPast(loss=torch.tensor(0.5), logits=ref)
    assert logits_of(out) is ref and transformers is not None


def test_logits_module_takes_dict_leaves_positionally():
    spec = InputSpec.dict_of({"x": TensorSpec((4,)), "y": TensorSpec((2,))})
    net = _Two()
    inputs = spec.example(3)
    wrapped = LogitsModule(net, spec)
    assert torch.equal(wrapped(*positional(inputs)), logits_of(net(**inputs)))


def test_losses_against_functional_cross_entropy():
    assert {"cross-entropy", "next-token"} <= set(list_losses())
    gen = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(6, 4, generator=gen), torch.randint(0, 4, (6,), generator=gen)
    ce = get_loss(None)
    assert torch.allclose(ce(logits, labels), F.cross_entropy(logits, labels))
    assert torch.allclose(ce((logits,), labels, label_smoothing=0.1), F.cross_entropy(logits, labels,
                                                                                     label_smoothing=0.1))
    right, n = ce.correct({"logits": logits}, labels)
    assert int(right) == int((logits.argmax(1) == labels).sum()) and n == 6 and ce.count(labels) == 6


def test_next_token_shifts_and_ignores_minus_100():
    gen = torch.Generator().manual_seed(1)
    B, T, V = 2, 5, 7
    logits, ids = torch.randn(B, T, V, generator=gen), torch.randint(0, V, (B, T), generator=gen)
    ids[0, 3] = -100
    nt = get_loss("next-token")
    # by hand: position t predicts token t+1, over the B*(T-1) pairs whose label is not -100
    terms = [-torch.log_softmax(logits[b, t], -1)[ids[b, t + 1]] for b in range(B) for t in range(T - 1)
             if ids[b, t + 1] != -100]
    assert torch.allclose(nt(logits, ids), torch.stack(terms).mean())
    assert torch.allclose(nt(logits, ids, reduction="sum"), torch.stack(terms).sum())
    hits = sum(int(logits[b, t].argmax() == ids[b, t + 1]) for b in range(B) for t in range(T - 1)
               if ids[b, t + 1] != -100)
    right, n = nt.correct(logits, ids)
    assert int(right) == hits and int(n) == len(terms) == nt.count(ids) == B * (T - 1) - 1
    with pytest.raises(PrunelabError, match=r"logits \(N, T, V\)"):
        nt(torch.randn(2, 7), ids)


def test_unknown_loss_names_the_choices():
    with pytest.raises(PrunelabError, match="unknown loss 'mse'; valid choices: cross-entropy, next-token"):
        get_loss("mse")


class _TokenNet(nn.Module):
    """Token ids and a float side input, returning a ModelOutput-like dict."""

    def __init__(self, vocab=20, d=8):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.side = nn.Linear(3, d)
        self.fc1, self.fc2 = nn.Linear(d, 16), nn.Linear(16, 4)

    def forward(self, input_ids, extra):
        h = self.emb(input_ids).mean(1) + self.side(extra)
        return {"logits": self.fc2(torch.relu(self.fc1(h))), "hidden": h}


def _token_spec():
    return InputSpec.dict_of({"input_ids": TensorSpec((6,), "int64", vocab_size=20), "extra": TensorSpec((3,))})


def test_specs_run_through_counting_tracing_latency_and_onnx(tmp_path):
    from prunelab.measure import count_macs
    from prunelab.measure.latency import measure_latency
    from prunelab.prune.structured.compress import compress
    from prunelab.prune.structured.groups import find_groups
    from prunelab.prune.structured.plan import apply_plan, make_plan

    net, spec = _TokenNet().eval(), _token_spec()
    assert count_macs(net, spec) == 3 * 8 + 8 * 16 + 16 * 4
    groups = find_groups(net, spec, scope="all")
    assert groups.inputs == spec and "fc1" in {g.root for g in groups}
    g = next(g for g in groups if g.root == "fc1")
    keep = {g.name: list(range(0, 16, 2))}
    small = compress(net, groups, keep)  # checks compressed == masked through the dict output
    assert small.fc1.out_features == 8 and count_macs(small, spec) == 3 * 8 + 8 * 8 + 8 * 4
    plan = json.loads(json.dumps(make_plan(groups, keep, None)))
    assert InputSpec.from_dict(plan["inputs"]) == spec
    rebuilt = apply_plan(_TokenNet(), plan)
    assert rebuilt.fc1.out_features == 8
    res = measure_latency(net, spec, batch_size=2, warmup=1, repeats=2, min_time_s=0.0)
    assert res.median_ms > 0 and res.batch_size == 2
    pytest.importorskip("onnxruntime")
    from prunelab.export.onnx import to_onnx

    out = to_onnx(net, spec, tmp_path / "net.onnx")
    assert out.inputs == spec.to_dict() and out.relative_error <= 1e-4
    import onnx

    graph = onnx.load(str(tmp_path / "net.onnx")).graph
    assert [i.name for i in graph.input] == ["input_ids", "extra"]


def test_bad_spec_input_is_one_line():
    from prunelab.measure import count_macs

    with pytest.raises(PrunelabError, match=r"cannot run the model on input input_ids: int64\[6\] ids < 20") as info:
        count_macs(_TokenNet(), InputSpec.dict_of({"input_ids": TensorSpec((6,), "int64", vocab_size=20)}))
    assert "\n" not in str(info.value)


def test_trainer_learns_next_token_with_the_registered_loss():
    from prunelab.data.base import DataBundle, Split
    from prunelab.train.config import TrainConfig
    from prunelab.train.trainer import evaluate, train

    gen = torch.Generator().manual_seed(0)
    # cyclic sequences: token t is always followed by (t + 1) mod 8, so next-token accuracy can reach 1
    seq = torch.stack([torch.roll(torch.arange(16) % 8, int(s)) for s in torch.randint(0, 8, (64,), generator=gen)])
    split = lambda x: Split(x.clone(), x.clone())  # noqa: E731 - labels are the input ids
    data = DataBundle("cyclic", split(seq[:48]), split(seq[48:56]), split(seq[56:]), 8, (16,), task="sequence")

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.out = nn.Embedding(8, 16), nn.Linear(16, 8)

        def forward(self, ids):
            return (self.out(self.emb(ids)),)  # a tuple, as HF models return with return_dict=False

    torch.manual_seed(0)
    model = LM()
    before = evaluate(model, data, loss="next-token")
    cfg = TrainConfig(epochs=20, batch_size=16, lr=0.5, loss="next-token", device="cpu", augment=False,
                      schedule="constant", weight_decay=0.0, momentum=0.9)
    result = train(model, data, cfg)
    after = evaluate(model, data, loss="next-token")
    assert isinstance(after["loss"], float) and after["acc"] == 1.0 and after["loss"] < 0.1 < before["loss"]
    assert result.final["test_acc"] == 1.0
    # the reported loss is the mean over predicted tokens (15 per sequence), as F.cross_entropy computes it
    with torch.no_grad():
        logits = model(seq[56:])[0]
        ref = F.cross_entropy(logits[:, :-1].reshape(-1, 8), seq[56:, 1:].reshape(-1))
    assert after["loss"] == pytest.approx(float(ref), rel=1e-5)
    assert "loss" not in TrainConfig().to_dict() and TrainConfig.from_dict({"loss": "next-token"}).loss == "next-token"
    with pytest.raises(PrunelabError, match="unknown loss"):
        TrainConfig(loss="l2").validate()
