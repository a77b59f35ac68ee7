"""The zoo's ViT and LM: forwards equal Hugging Face's on the same weights, counts equal hand formulas
and ``torch.utils.flop_counter``, heads and MLP widths prune, compress and rebuild from their units,
and a zero Pruning-from-Scratch gate on a head is the model without that head."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from prunelab.measure import count_macs, count_params
from prunelab.models import ArchSpec, create, fit_spec, input_spec_of, resolve, spec_from_units, width_units
from prunelab.models.vit import fitted_patch

torch.set_num_threads(1)

VIT = ArchSpec("vit", {"image_size": 8, "in_channels": 1, "dim": 32, "depth": 2, "heads": 4, "head_dim": 8,
                       "mlp_ratio": 2.0, "num_classes": 10})
LM = ArchSpec("lm", {"num_classes": 40, "seq_len": 12, "dim": 32, "depth": 2, "kv_heads": 2, "q_per_kv": 2,
                     "head_dim": 8, "mlp_ratio": 1.5, "tie_embeddings": True})


def vit_by_hand(c, s, p, d, depth, h, hd, m, k):
    """(params, MACs) of the ViT from its config: patch conv (+ bias per position), class token,
    position table, per block 2 LayerNorms, qkv, QK^T and AV over T = N + 1 tokens, proj, fc1, fc2."""
    n = (s // p) ** 2
    t = n + 1
    e = h * hd
    block_p = 4 * d + (d * 3 * e + 3 * e) + (e * d + d) + (d * m + m) + (m * d + d)
    params = c * p * p * d + d + d + t * d + depth * block_p + 2 * d + d * k + k
    block_m = t * d * 3 * e + 2 * h * t * t * hd + t * e * d + t * d * m + t * m * d
    macs = c * p * p * d * n + d * n + depth * block_m + d * k
    return params, macs


def lm_by_hand(v, t, d, depth, kv, g, hd, m, tied):
    """(params, MACs) of the LM: embedding, per layer 2 RMSNorms, Q (kv*g heads), K and V (kv heads),
    O, SwiGLU (3 matrices), QK^T and AV for every query head over T tokens; the head once if tied."""
    q = kv * g * hd
    layer_p = 2 * d + d * q + 2 * d * kv * hd + q * d + 3 * d * m
    params = v * d + depth * layer_p + d + (0 if tied else v * d)
    layer_m = t * (d * q + 2 * d * kv * hd + q * d + 3 * d * m) + 2 * kv * g * t * t * hd
    return params, depth * layer_m + t * d * v


def flop_macs(model, x) -> float:
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(x)
    return fc.get_total_flops() / 2


def test_vit_counts_match_hand_formula_and_flop_counter():
    torch.manual_seed(0)
    model = create(VIT).eval()
    params, macs = vit_by_hand(1, 8, 2, 32, 2, 4, 8, 64, 10)
    assert count_params(model).params == params == sum(p.numel() for p in model.parameters())
    assert count_macs(model, (1, 8, 8)) == macs
    # the flop counter does not count the patch convolution's bias (one add per output position)
    assert flop_macs(model, torch.zeros(1, 1, 8, 8)) == macs - 32 * 16
    assert abs(count_macs(model, (1, 8, 8)) / flop_macs(model, torch.zeros(1, 1, 8, 8)) - 1) < 0.01


@pytest.mark.parametrize("tied", [True, False])
def test_lm_counts_match_hand_formula_and_flop_counter(tied):
    torch.manual_seed(0)
    spec = LM.with_kwargs(tie_embeddings=tied)
    model = create(spec).eval()
    params, macs = lm_by_hand(40, 12, 32, 2, 2, 2, 8, 48, tied)
    assert count_params(model).params == params  # a tied head counts once
    inputs = input_spec_of(spec)
    assert inputs.seq_len == 12 and inputs.vocab_size == 40
    assert count_macs(model, inputs) == macs
    assert flop_macs(model, inputs.example(1)) == macs  # QK^T and AV of every query head included
    assert count_macs(model, inputs.with_seq_len(24)) == lm_by_hand(40, 24, 32, 2, 2, 2, 8, 48, tied)[1]


def test_patch_size_and_sequence_length_follow_the_data():
    assert [fitted_patch(s) for s in (8, 16, 28, 32, 224)] == [2, 2, 2, 4, 8]
    digits = fit_spec(resolve("vit-cifar"), 10, (1, 8, 8))
    assert digits.kwargs["image_size"] == 8 and digits.kwargs["in_channels"] == 1
    model = create(digits)
    assert model.patch_embed.proj.kernel_size == (2, 2) and model.pos_embed.shape[1] == 17
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    lm = fit_spec(resolve("lm-tiny"), 97, (32,))
    assert lm.kwargs["num_classes"] == 97 and lm.kwargs["seq_len"] == 32
    assert create(lm)(torch.zeros(2, 32, dtype=torch.long)).shape == (2, 32, 97)


def test_lm_equals_hugging_face_llama_on_the_same_weights():
    """RoPE, grouped-query attention (query head h*g+j reads KV head h), causal mask, RMSNorm,
    SwiGLU and the tied head: logits equal LlamaForCausalLM's with the same weights."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    ours = create(LM).eval()
    cfg = transformers.LlamaConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, head_dim=8, intermediate_size=48, rms_norm_eps=1e-5,
                                   max_position_embeddings=64, tie_word_embeddings=True, use_cache=False,
                                   attn_implementation="eager")
    ref = transformers.LlamaForCausalLM(cfg).eval()
    state = {("lm_head.weight" if k == "lm_head.weight" else f"model.{k}"): v for k, v in ours.state_dict().items()}
    missing, unexpected = ref.load_state_dict(state, strict=False)
    assert not unexpected and all("rotary" in k for k in missing)
    ids = torch.randint(0, 40, (3, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(ours(ids), ref(input_ids=ids).logits, atol=1e-5)


def test_vit_equals_hugging_face_vit_on_the_same_weights():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    ours = create(VIT).eval()
    cfg = transformers.ViTConfig(image_size=8, patch_size=2, num_channels=1, hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=4, intermediate_size=64, layer_norm_eps=1e-6, num_labels=10,
                                 hidden_act="gelu", attn_implementation="eager")
    ref = transformers.ViTForImageClassification(cfg).eval()
    sd, state = ours.state_dict(), {}
    state["vit.embeddings.cls_token"] = sd["cls_token"]
    state["vit.embeddings.position_embeddings"] = sd["pos_embed"]
    for p in ("weight", "bias"):
        state[f"vit.embeddings.patch_embeddings.projection.{p}"] = sd[f"patch_embed.proj.{p}"]
        state[f"vit.layernorm.{p}"] = sd[f"norm.{p}"]
        state[f"classifier.{p}"] = sd[f"head.{p}"]
        for i in range(2):  # transformers 5 names: vit.layers.i.attention.{q,k,v,o}_proj, mlp.fc1 / fc2
            ref_l, our = f"vit.layers.{i}", f"blocks.{i}"
            q, k, v = sd[f"{our}.attn.qkv.{p}"].chunk(3, dim=0)  # timm's fused rows are q | k | v
            for name, t in (("q_proj", q), ("k_proj", k), ("v_proj", v)):
                state[f"{ref_l}.attention.{name}.{p}"] = t
            state[f"{ref_l}.attention.o_proj.{p}"] = sd[f"{our}.attn.proj.{p}"]
            state[f"{ref_l}.layernorm_before.{p}"] = sd[f"{our}.norm1.{p}"]
            state[f"{ref_l}.layernorm_after.{p}"] = sd[f"{our}.norm2.{p}"]
            state[f"{ref_l}.mlp.fc1.{p}"] = sd[f"{our}.mlp.fc1.{p}"]
            state[f"{ref_l}.mlp.fc2.{p}"] = sd[f"{our}.mlp.fc2.{p}"]
    ref.load_state_dict(state, strict=True)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(ours(x), ref(pixel_values=x).logits, atol=1e-5)


@pytest.mark.parametrize("spec", [VIT, LM], ids=["vit", "lm-gqa"])
def test_heads_and_mlp_widths_prune_compress_and_rebuild(spec):
    """Structured groups are the zoo's units (heads or KV heads with their query group, MLP widths);
    the compressed model equals the masked one; its units rebuild the same shapes from the spec (the
    path scratch training and copied profiles take)."""
    from prunelab.prune.structured import compress, find_groups, verify

    torch.manual_seed(0)
    model = create(spec).eval()
    groups = find_groups(model, input_spec_of(spec), "internal", spec=spec)
    units = width_units(model, spec)
    assert sorted(g.width for g in groups) == sorted(u.width for u in units)
    assert {g.kind for g in groups} == {"heads", "mlp"}
    keep = {g.name: [0] if g.kind == "heads" else list(range(0, g.width, 2)) for g in groups}
    small = compress(model, groups, keep)
    verify(model, small, groups, keep)
    new_units = width_units(small, spec)
    assert [u.width for u in new_units] == [1 if u.kind == "heads" else (u.width + 1) // 2 for u in units]
    rebuilt = create(spec_from_units(spec, new_units))
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in small.state_dict().items()}
    if spec.family == "lm":  # one KV head kept: its 2 query heads, 8 rows each, remain
        attn = small.layers[0].self_attn
        assert attn.k_proj.out_features == 8 and attn.q_proj.out_features == 16 and attn.num_heads == 2


@pytest.mark.parametrize("spec", [VIT, LM], ids=["vit", "lm-gqa"])
def test_a_zero_head_gate_is_the_model_without_that_head(spec):
    """Pruning from Scratch's gates act on the unit's own axis: a gate of 0 on head 1 (or on KV head 1
    with its query group) and on MLP channel 3 gives the logits of the model with them removed."""
    from prunelab.protocols.gates import GateBank
    from prunelab.prune.structured import compress, find_groups

    torch.manual_seed(0)
    model = create(spec).eval()
    units = width_units(model, spec)
    bank = GateBank(units).attach(model)
    with torch.no_grad():
        for u, g in zip(units, bank.gates):
            g[1 if u.kind == "heads" else 3] = 0.0
    x = input_spec_of(spec).example(2, seed=3)
    with torch.no_grad():
        gated = model(x)
    bank.remove()
    groups = find_groups(model, input_spec_of(spec), "internal", spec=spec)
    keep = {g.name: [c for c in range(g.width) if c != (1 if g.kind == "heads" else 3)] for g in groups}
    small = compress(model, groups, keep).eval()
    with torch.no_grad():
        assert torch.allclose(gated, small(x), atol=1e-5)
