"""Attention heads, GQA query groups, MLP widths and Conv1D: what the transformer units remove, checked
against hand-made references (weights zeroed by hand, an explicit head gate for Fisher)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from hf_tiny import bert, gpt2, llama, vit
from prunelab.errors import PrunelabError
from prunelab.models.inputs import call_model, logits_of
from prunelab.prune.structured import ChannelMasks, StructuredConfig, StructuredPruner, Target, compress, find_groups
from prunelab.prune.structured.criterion import make_criterion
from prunelab.prune.structured.transformer import config_updates, find_units
from prunelab.prune.structured.zero import EmptyConv, ZeroConv, ZeroLinear


def _logits(model, x):
    model.eval()
    with torch.no_grad():
        return logits_of(call_model(model, x))


def test_units_of_three_attention_layouts():
    b, g, ll = find_units(bert()[0]), find_units(gpt2()[0]), find_units(llama()[0])
    assert [(a.heads, a.kv_heads, a.head_dim, a.fused) for a in b.attention] == [(4, 4, 8, False)] * 2
    assert [m.width for m in b.mlp] == [64, 64]
    assert [(a.heads, a.kv_heads, a.head_dim, a.fused) for a in g.attention] == [(4, 4, 8, True)] * 2
    assert [m.width for m in g.mlp] == [128, 128]
    assert [(a.heads, a.kv_heads, a.group_size) for a in ll.attention] == [(4, 2, 2)] * 2
    assert [len(m.producers) for m in ll.mlp] == [2, 2]  # up and gate


def test_gqa_key_value_head_goes_with_its_query_group():
    model, spec = llama()
    groups = find_groups(model, spec)
    heads = "model.layers.0.self_attn:heads"
    small = compress(model, groups, {heads: [1]})
    attn0, ref_attn = small.model.layers[0].self_attn, model.model.layers[0].self_attn
    d = 8
    # kv head 1 serves query heads 2 and 3 (repeat_kv: query head h reads kv head h // 2)
    assert torch.equal(attn0.q_proj.weight, ref_attn.q_proj.weight[2 * d:4 * d])
    assert torch.equal(attn0.k_proj.weight, ref_attn.k_proj.weight[d:2 * d])
    assert torch.equal(attn0.v_proj.weight, ref_attn.v_proj.weight[d:2 * d])
    assert torch.equal(attn0.o_proj.weight, ref_attn.o_proj.weight[:, 2 * d:4 * d])
    # reference: the same model with the removed heads' output columns zeroed by hand
    ref = copy.deepcopy(model)
    with torch.no_grad():
        ref.model.layers[0].self_attn.o_proj.weight[:, :2 * d] = 0
    x = spec.example(3, seed=5)
    assert (_logits(small, x) - _logits(ref, x)).abs().max() <= 1e-5


def test_fused_c_attn_heads_and_split_size():
    model, spec = gpt2()
    groups = find_groups(model, spec)
    small = compress(model, groups, {"transformer.h.0.attn:heads": [0, 2], "transformer.h.1.mlp:mlp": list(range(40))})
    attn = small.transformer.h[0].attn
    assert attn.c_attn.weight.shape == (32, 48) and attn.split_size == 16 and attn.c_proj.weight.shape == (16, 32)
    assert small.transformer.h[1].mlp.c_fc.weight.shape == (32, 40)
    ref = copy.deepcopy(model)
    with torch.no_grad():  # Conv1D weights are (in, out): the removed heads are rows 8:16 and 24:32 of c_proj
        ref.transformer.h[0].attn.c_proj.weight[8:16] = 0
        ref.transformer.h[0].attn.c_proj.weight[24:32] = 0
        ref.transformer.h[1].mlp.c_proj.weight[40:] = 0
    for seq in (8, 5):  # the updated split size works at any length
        x = {"input_ids": torch.randint(0, 64, (2, seq), generator=torch.Generator().manual_seed(seq))}
        assert (_logits(small, x) - _logits(ref, x)).abs().max() <= 1e-5


def test_fisher_head_score_is_the_gradient_of_an_explicit_head_gate():
    """Michel et al. (2019): importance of head h = E[(dL/d gate_h)^2]; prunelab's Fisher signal is half of
    that averaged over samples (Theis et al. eq. 6), read from the masked input of the output projection."""
    model, spec = bert()
    model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = 0.0
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    groups = find_groups(model, spec)
    name = "bert.encoder.layer.1.attention:heads"
    gate_model = copy.deepcopy(model)
    masks = ChannelMasks(model, groups)
    fisher = make_criterion("fisher", model, groups, masks)
    x = spec.example(4, seed=3)
    y = torch.tensor([0, 1, 2, 1])
    model.train()
    fisher.start()
    nn.functional.cross_entropy(logits_of(call_model(model, x)), y).backward()
    fisher.end_step()
    fisher.stop()
    masks.detach()
    got = fisher.scores()[name]

    gate = torch.ones(4, 4, requires_grad=True)  # (sample, head)
    dense = gate_model.bert.encoder.layer[1].attention.output.dense
    handle = dense.register_forward_pre_hook(lambda m, a: (a[0] * gate.repeat_interleave(8, 1)[:, None, :],))
    gate_model.train()
    nn.functional.cross_entropy(logits_of(call_model(gate_model, x)), y).backward()
    handle.remove()
    want = gate.grad.pow(2).sum(0) / (2 * 4)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-12)
    assert got.abs().sum() > 0


def test_l1_head_score_by_hand():
    model, spec = vit()
    groups = find_groups(model, spec)
    name = "vit.layers.0.attention:heads"
    scores = make_criterion("l1", model, groups, None).scores()[name]
    att = model.vit.layers[0].attention
    per = [torch.stack([w.weight[h * 8:(h + 1) * 8].abs().sum() for h in range(4)])
           for w in (att.q_proj, att.k_proj, att.v_proj)]
    assert torch.allclose(scores, torch.stack(per).mean(0), rtol=1e-5)


def test_a_head_size_that_does_not_divide_is_refused():
    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.head_dim = 8
            self.q_proj, self.k_proj, self.v_proj = nn.Linear(16, 30), nn.Linear(16, 30), nn.Linear(16, 30)
            self.o_proj = nn.Linear(30, 16)

    with pytest.raises(PrunelabError, match="head size 8 does not divide"):
        find_units(Attn())


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_min_channels_floor_target_fraction_and_hooks_removed_on_failure():
    model, spec = vit()
    with pytest.raises(PrunelabError, match=r"min-channels 5 is above the width of group .*heads.* \(4 heads\)"):
        StructuredPruner(model, StructuredConfig(criterion="l1", min_channels=5, target=Target("params", 10_000)),
                         spec)
    with pytest.raises(PrunelabError, match=r"only \d+\.\d% of the model's params is prunable"):
        StructuredPruner(model, StructuredConfig(criterion="l1", target=Target("params", 100)), spec)
    assert _hooks(model) == 0  # a refused pruner leaves nothing attached: the retry below starts clean
    total = sum(p.numel() for p in model.parameters())
    pruner = StructuredPruner(model, StructuredConfig(criterion="l1", schedule="oneshot", min_channels=0.5,
                                                      target=Target("params", int(total * 0.8))), spec)
    pruner.prune_oneshot()
    widths = pruner.masks.widths()
    assert all(widths[g.name] >= (g.width + 1) // 2 for g in pruner.groups)
    small = pruner.compress()
    assert sum(p.numel() for p in small.parameters()) <= total * 0.8
    cov = pruner.coverage()
    assert 0 < cov["params_removable"] < cov["params_in_prunable_layers"] <= 1
    pruner.detach()
    assert _hooks(model) == 0


def test_config_updates_uniform_heads_and_mlp_widths():
    model, spec = llama()
    groups = find_groups(model, spec)
    keep = {g.name: [0] if g.kind == "heads" else list(range(24)) for g in groups}
    small = compress(model, groups, keep)
    assert config_updates(small) == {"num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8,
                                     "intermediate_size": 24}
    small = compress(model, groups, {**keep, "model.layers.1.mlp:mlp": list(range(12))})
    with pytest.raises(PrunelabError, match="different widths"):
        config_updates(small)
    bmodel, bspec = bert()
    bgroups = find_groups(bmodel, bspec)
    bsmall = compress(bmodel, bgroups, {g.name: [0, 1] for g in bgroups if g.kind == "heads"})
    with pytest.raises(PrunelabError, match="derives the head size"):
        config_updates(bsmall)


def test_stand_ins_keep_attributes_and_return_fresh_tensors():
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=1, groups=2)
    zero, empty = ZeroConv(conv), EmptyConv(conv)
    for m in (zero, empty):
        assert (m.kernel_size, m.stride, m.padding, m.dilation, m.groups) == ((3, 3), (2, 2), (1, 1), (1, 1), 2)
    assert (zero.in_channels, zero.out_channels, empty.in_channels, empty.out_channels) == (0, 6, 4, 0)
    x = torch.randn(2, 4, 8, 8)
    out = zero(x)
    out += 1.0  # an in-place add into the output must not touch the bias
    assert torch.equal(zero.bias, conv.bias) and out.shape == (2, 6, 4, 4)
    lin = ZeroLinear(nn.Linear(3, 5))
    y = lin(torch.randn(2, 7, 3))
    y += 1.0
    assert y.shape == (2, 7, 5) and lin.in_features == 0


def test_global_magnitude_covers_conv1d_and_leaves_tied_embeddings_out_by_default():
    from prunelab.prune.unstructured.selection import LayerSelection, select_layers

    model, _ = gpt2()
    names = [layer.name for layer in select_layers(model)]
    assert "transformer.h.0.attn.c_attn" in names and "transformer.h.1.mlp.c_proj" in names
    assert "lm_head" not in names  # tied to transformer.wte
    with_emb = [layer.name for layer in select_layers(model, LayerSelection(include_embeddings=True))]
    assert with_emb.count("lm_head") == 1 and len(with_emb) == len(names) + 1


def test_linear_layers_on_sequences_are_masked_on_their_feature_dimension():
    """A Linear on (N, T, F) has its channels last: the generic Torch-Pruning group of a plain MLP on
    token features compresses to what its mask computes."""
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4)).eval()
    groups = find_groups(model, (5, 8), "all")
    assert {g.kind for g in groups} == {"channels"} and len(groups) == 2
    keep = {g.name: [1, 3, 4, 9] for g in groups}
    x = torch.randn(3, 5, 8)
    masks = ChannelMasks(model, groups, keep)
    masked = _logits(model, x)
    masks.detach()
    small = compress(model, groups, keep)
    assert small[0].out_features == 4 and (small(x) - masked).abs().max() <= 1e-6


def test_global_magnitude_on_gpt2_prunes_conv1d_and_keeps_the_tied_embedding():
    from prunelab.prune.unstructured.pruner import prune_global

    model, _ = gpt2()
    wte = model.transformer.wte.weight.detach().clone()
    prune_global(model, 0.9)
    c_attn = model.transformer.h[0].attn.c_attn.weight
    assert 0.5 < float((c_attn == 0).float().mean()) < 1.0
    assert torch.equal(model.transformer.wte.weight, wte)  # tied to lm_head, left out by default


def test_graph_discovery_has_a_time_budget():
    model, spec = bert()
    with pytest.raises(PrunelabError, match="ran past its time budget"):
        find_groups(model, spec, "all", budget_s=1e-4)
    groups = find_groups(model, spec, "all", budget_s=60)  # and the model is left as it was
    assert len(groups) and _hooks(model) == 0
