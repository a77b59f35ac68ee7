"""The hidden (residual-stream) width under scope ``all``: norms as per-channel layers, bare parameters,
embeddings and grouped convolutions in channel groups, and the config's hidden size after compression.

Independent references: a norm built from scratch with the kept channels' parameters (what the
compressed model holds), torch's own functional norms, the compressed model's parameter count."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hf_tiny import MODELS
from prunelab.errors import PrunelabError
from prunelab.measure import count_params
from prunelab.prune.structured import ChannelMasks, CostModel, compress, find_groups
from prunelab.prune.structured.norms import normalise_live, prune_norm
from prunelab.prune.structured.transformer import config_updates

LIVE = torch.tensor([0, 2, 3, 6])


def _randomised(norm: nn.Module) -> nn.Module:
    with torch.no_grad():
        for p in norm.parameters():
            p.copy_(torch.randn_like(p))
    return norm


@pytest.mark.parametrize("make,shape,dim", [
    (lambda: nn.LayerNorm(8), (2, 5, 8), -1),
    (lambda: nn.RMSNorm(8, eps=1e-6), (2, 5, 8), -1),
    (lambda: nn.GroupNorm(1, 8), (2, 8, 3, 3), 1),
    (lambda: nn.GroupNorm(8, 8), (2, 8, 3, 3), 1),
])
def test_a_masked_norm_is_the_compressed_norm_padded_with_zeros(make, shape, dim):
    torch.manual_seed(0)
    norm = _randomised(make())
    x = torch.randn(shape)
    got = normalise_live(norm, x, LIVE)
    dead = [i for i in range(8) if i not in LIVE.tolist()]
    small = prune_norm(_randomised(make()), dead)
    with torch.no_grad():  # the compressed norm: the kept channels' parameters, statistics over them only
        for (_, p), (_, q) in zip(small.named_parameters(), norm.named_parameters()):
            p.copy_(q[LIVE])
    want = small(x.index_select(dim, LIVE))
    assert torch.allclose(got.index_select(dim, LIVE), want, atol=1e-6)
    assert got.index_select(dim, torch.tensor(dead)).abs().max() == 0


def test_hugging_face_rmsnorm_and_channels_first_layernorm_follow_their_own_forward():
    from transformers.models.convnext.modeling_convnext import ConvNextLayerNorm
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    torch.manual_seed(0)
    rms = _randomised(LlamaRMSNorm(8))
    x = torch.randn(2, 5, 8)
    want = x[..., LIVE] * torch.rsqrt(x[..., LIVE].pow(2).mean(-1, keepdim=True) + rms.variance_epsilon) \
        * rms.weight[LIVE]  # Zhang & Sennrich 2019, by hand
    assert torch.allclose(normalise_live(rms, x, LIVE)[..., LIVE], want, atol=1e-6)
    ln = _randomised(ConvNextLayerNorm(8, data_format="channels_first"))
    x = torch.randn(2, 8, 3, 3)
    ref = nn.functional.layer_norm(x[:, LIVE].permute(0, 2, 3, 1), (4,), ln.weight[LIVE], ln.bias[LIVE], ln.eps)
    assert torch.allclose(normalise_live(ln, x, LIVE)[:, LIVE], ref.permute(0, 3, 1, 2), atol=1e-6)


class _Stream(nn.Module):
    """A residual stream through a norm of each kind, with a layer scale and a class token."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = norm
        self.gamma = nn.Parameter(torch.rand(8, 1, 1))
        self.block = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.gamma * self.block(self.norm(x))
        return self.head(x.mean((2, 3)))


def test_a_group_norm_with_several_channels_per_group_is_refused_with_the_reason():
    gs = find_groups(_Stream(nn.GroupNorm(2, 8)), (3, 6, 6), "all")
    reasons = {s["group"]: s["reason"] for s in gs.skipped}
    assert "stem" not in gs.by_name() and "num_groups=2" in reasons["stem"]


@pytest.mark.parametrize("norm", [nn.GroupNorm(1, 8), nn.GroupNorm(8, 8)])
def test_a_stream_through_a_group_norm_and_a_layer_scale_compresses_exactly(norm):
    torch.manual_seed(0)
    model = _randomised(_Stream(norm)).eval()
    gs = find_groups(model, (3, 6, 6), "all")
    g = gs.by_name()["stem"]
    assert {(m.module, m.kind) for m in g.members} >= {("norm", "norm"), ("gamma", "param"), ("block", "in")}
    small = compress(model, gs, {"stem": [1, 4, 5]})  # checked against the masked model
    assert small.gamma.shape == (3, 1, 1) and small.norm.num_channels == 3
    assert CostModel(model, gs).size({"stem": torch.tensor([i in (1, 4, 5) for i in range(8)])})[0] == \
        count_params(small).params


def _build(name):
    torch.manual_seed(0)
    model, spec = MODELS[name]()
    return model.eval(), spec


def _hidden(groups):
    return next(g for g in groups if any(m.kind == "norm" for m in g.members))


def test_vit_hidden_group_holds_the_class_token_and_position_embeddings():
    model, spec = _build("vit")
    g = _hidden(find_groups(model, spec, "all"))
    params = {m.module: m.dim for m in g.members if m.kind == "param"}
    assert params == {"vit.embeddings.cls_token": 2, "vit.embeddings.position_embeddings": 2}
    assert "classifier" in g.modules("in") and g.width == 32


@pytest.mark.parametrize("name", ["bert", "llama-gqa"])
def test_compressing_the_hidden_width_updates_the_config_and_keeps_the_head_size(name):
    model, spec = _build(name)
    gs = find_groups(model, spec, "all")
    g = _hidden(gs)
    assert g.width == model.config.hidden_size == 32
    assert any(m.kind == "embedding" for m in g.members)
    keep = {g.name: list(range(0, 32, 2))}
    small = compress(model, gs, keep)
    assert small.config.hidden_size == 16
    assert small.get_input_embeddings().embedding_dim == 16
    alive = {x.name: torch.ones(x.width, dtype=torch.bool) for x in gs}
    alive[g.name] = torch.zeros(32, dtype=torch.bool)
    alive[g.name][keep[g.name]] = True
    assert CostModel(model, gs).size(alive)[0] == count_params(small).params
    if name == "llama-gqa":  # the config states head_dim: it stays, and the folder describes the model
        assert small.config.head_dim == 8
        assert "hidden_size" not in config_updates(small)
    else:  # BERT derives the head size from hidden / heads: saving as a folder is refused
        with pytest.raises(PrunelabError, match="derives the head size"):
            config_updates(small)


def test_llama_with_a_pruned_hidden_width_round_trips_through_a_folder(tmp_path):
    from prunelab.export.hf import write_folder

    model, spec = _build("llama-gqa")
    gs = find_groups(model, spec, "all")
    small = compress(model, gs, {_hidden(gs).name: list(range(24))})
    write_folder(small, tmp_path / "out")
    loaded = type(model).from_pretrained(tmp_path / "out", local_files_only=True).eval()
    x = spec.example(2, seed=3)
    with torch.no_grad():
        assert (loaded(**x).logits - small(**x).logits).abs().max() <= 1e-5


def test_grouped_convolution_channels_are_removed_in_every_convolution_group():
    model, spec = _build("hand-net")
    gs = find_groups(model, spec, "all")
    g = gs.by_name()["grouped"]
    assert g.width == 6  # 24 channels in 4 groups: channel j is the j-th of every group
    member = next(m for m in g.members if m.module == "grouped")
    assert member.channels == [i % 6 for i in member.idxs]
    small = compress(model, gs, {"grouped": [0, 2, 5], "pw": [1, 3]})  # checked against the masked model
    conv = small.grouped
    assert (conv.groups, conv.in_channels, conv.out_channels) == (4, 8, 12)
    assert conv.weight.shape == (12, 2, 3, 3)
    # the kept filters are filters 0, 2, 5 of each convolution group, reading its inputs 1 and 3
    want = model.grouped.weight[[g * 6 + j for g in range(4) for j in (0, 2, 5)]][:, [1, 3]]
    assert torch.equal(conv.weight, want)


def test_masks_of_a_hidden_group_zero_the_removed_channels_at_every_consumer():
    model, spec = _build("bert")
    gs = find_groups(model, spec, "all")
    g = _hidden(gs)
    masks = ChannelMasks(model, gs, {g.name: list(range(8))})
    seen = []
    handle = model.bert.encoder.layer[0].attention.self.query.register_forward_pre_hook(
        lambda mod, inp: seen.append(inp[0]))
    with torch.no_grad():
        model(**spec.example(1))
    handle.remove()
    masks.detach()
    assert seen[0][..., 8:].abs().max() == 0 and seen[0][..., :8].abs().max() > 0


def test_gpt2_tied_embedding_and_head_stay_one_parameter():
    model, spec = _build("gpt2")
    gs = find_groups(model, spec, "all")
    g = _hidden(gs)
    assert {"transformer.wte", "transformer.wpe"} <= {m.module for m in g.members if m.kind == "embedding"}
    small = compress(model, gs, {g.name: list(range(0, 32, 2))})
    assert small.lm_head.weight is small.transformer.wte.weight and small.lm_head.weight.shape == (64, 16)
    assert small.config.n_embd == 16
    alive = {x.name: torch.ones(x.width, dtype=torch.bool) for x in gs}
    alive[g.name] = torch.arange(32) % 2 == 0
    assert CostModel(model, gs).size(alive)[0] == count_params(small).params
