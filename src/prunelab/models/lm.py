"""A small decoder-only language model: LLaMA's layout (Touvron et al. 2023) at laptop size.

Module names and attributes follow Hugging Face's ``LlamaForCausalLM``
(``transformers/models/llama/modeling_llama.py``) without the ``model.`` prefix, so tools written for
LLaMA read it: ``embed_tokens``, ``layers.i`` = ``input_layernorm -> self_attn -> + x`` and
``post_attention_layernorm -> mlp -> + x`` (RMSNorm, pre-norm), a final ``norm`` and ``lm_head``
(tied to ``embed_tokens`` by default, as GPT-2 and small LLaMAs do; ``tie_embeddings=False`` unties).

* Attention: ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj`` without biases; rotary position
  embeddings (RoPE, Su et al. 2021; LLaMA's ``rotate_half`` convention, base ``rope_theta``) on Q and
  K; causal softmax(Q K^T / sqrt(d)) V written out with ``torch.matmul`` (eager attention).
  Grouped-query attention (Ainslie et al. 2023): ``kv_heads`` key/value heads, each shared by
  ``q_per_kv`` query heads (``q_per_kv=1`` is multi-head attention). The attributes ``num_heads``,
  ``num_key_value_heads``, ``num_key_value_groups`` and ``head_dim`` are read at every call.
* MLP: SwiGLU, ``down_proj(silu(gate_proj(x)) * up_proj(x))`` (LLaMA's ``LlamaMLP``).

Width units, per layer (``kv_heads`` and ``mlp_widths`` take one value or one per layer):

* ``layers.i.self_attn``: its key/value heads (``kind="heads"``), each taking its group of
  ``q_per_kv`` query heads with it (removing a KV head removes ``head_dim`` rows of K and V,
  ``q_per_kv * head_dim`` rows of Q and the matching columns of ``o_proj``). Gates and masks act on
  ``self_attn.head_out``, an identity on the context viewed as ``(N, kv_heads, q_per_kv, T, d)``;
* ``layers.i.mlp``: the SwiGLU hidden width, gated on ``gate_proj``'s output (axis -1) before the
  SiLU (SiLU(0) = 0 makes the whole product 0).

The model maps token ids ``(N, T)`` (int64) to next-token logits ``(N, T, vocab)``; ``num_classes``
is the vocabulary size (a data set's class count is its vocabulary), ``seq_len`` the default
sequence length (counting and example inputs; RoPE itself has no length limit). Initialisation is
LLaMA's (``initializer_range`` 0.02): normal(0, 0.02) for Linear and Embedding weights, RMSNorm 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.models.common import check_int, check_positive
from prunelab.models.inputs import InputSpec
from prunelab.models.registry import ArchSpec, WidthUnit, register_family, register_model
from prunelab.models.vit import mlp_width_list, per_block
from prunelab.models.widths import round_width, scale_list


class RotaryEmbedding(nn.Module):
    """cos / sin tables of RoPE for positions 0..T-1 (LLaMA's ``LlamaRotaryEmbedding``, default type)."""

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, length: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        pos = torch.arange(length, device=self.inv_freq.device, dtype=torch.float32)
        freqs = torch.outer(pos, self.inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + rotate_half(x) * sin


class CausalSelfAttention(nn.Module):
    """Multi-head or grouped-query causal self-attention with RoPE (LLaMA's ``LlamaAttention``, eager)."""

    def __init__(self, dim: int, kv_heads: int, q_per_kv: int, head_dim: int) -> None:
        super().__init__()
        self.num_key_value_heads = kv_heads
        self.num_key_value_groups = q_per_kv
        self.num_heads = kv_heads * q_per_kv
        self.head_dim = head_dim
        self.scaling = head_dim ** -0.5
        self.q_proj = nn.Linear(dim, self.num_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(dim, kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(dim, kv_heads * head_dim, bias=False)
        self.head_out = nn.Identity()
        self.o_proj = nn.Linear(self.num_heads * head_dim, dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        n, t, _ = x.shape
        kv, g, d = self.num_key_value_heads, self.num_key_value_groups, self.head_dim
        # query head j of KV group h is head h * g + j (HF's repeat_kv order)
        q = self.q_proj(x).view(n, t, kv, g, d).permute(0, 2, 3, 1, 4)  # (N, kv, g, T, d)
        k = self.k_proj(x).view(n, t, kv, 1, d).permute(0, 2, 3, 1, 4)  # (N, kv, 1, T, d)
        v = self.v_proj(x).view(n, t, kv, 1, d).permute(0, 2, 3, 1, 4)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        scores = torch.matmul(q, k.transpose(-2, -1)) * self.scaling  # (N, kv, g, T, T)
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        attn = scores.masked_fill(causal, float("-inf")).softmax(dim=-1)
        ctx = self.head_out(torch.matmul(attn, v))  # (N, kv, g, T, d)
        return self.o_proj(ctx.permute(0, 3, 1, 2, 4).reshape(n, t, kv * g * d))


class SwiGLU(nn.Module):
    """LLaMA's MLP: ``down_proj(silu(gate_proj(x)) * up_proj(x))``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.act_fn = nn.SiLU()
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, dim: int, kv_heads: int, q_per_kv: int, head_dim: int, mlp_width: int, eps: float) -> None:
        super().__init__()
        self.input_layernorm = nn.RMSNorm(dim, eps=eps)
        self.self_attn = CausalSelfAttention(dim, kv_heads, q_per_kv, head_dim)
        self.post_attention_layernorm = nn.RMSNorm(dim, eps=eps)
        self.mlp = SwiGLU(dim, mlp_width)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class CausalLM(nn.Module):
    """Token ids ``(N, T)`` -> next-token logits ``(N, T, vocab)``."""

    def __init__(self, vocab: int, dim: int, kv_heads: Sequence[int], q_per_kv: int, head_dim: int,
                 mlp_widths: Sequence[int], tie: bool, theta: float, eps: float) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, dim)
        self.rotary_emb = RotaryEmbedding(head_dim, theta)
        self.layers = nn.ModuleList([DecoderLayer(dim, kv, q_per_kv, head_dim, w, eps)
                                     for kv, w in zip(kv_heads, mlp_widths)])
        self.norm = nn.RMSNorm(dim, eps=eps)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.tie_embeddings = bool(tie)
        if tie:
            self.lm_head.weight = self.embed_tokens.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if input_ids.dtype.is_floating_point or input_ids.dim() != 2:
            raise PrunelabError(f"the language model takes integer token ids of shape (batch, length), got a "
                                f"{str(input_ids.dtype).replace('torch.', '')} tensor of shape {list(input_ids.shape)}")
        x = self.embed_tokens(input_ids)
        cos, sin = self.rotary_emb(input_ids.shape[1], x.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.lm_head(self.norm(x))


def lm(num_classes: int = 256, seq_len: int = 64, dim: int = 64, depth: int = 2, kv_heads: int | Sequence[int] = 4,
       q_per_kv: int = 1, head_dim: int = 16, mlp_ratio: float = 2.0, mlp_widths: Sequence[int] | None = None,
       tie_embeddings: bool = True, rope_theta: float = 10000.0, eps: float = 1e-5) -> CausalLM:
    """Build the LM: vocabulary ``num_classes``, ``depth`` layers of ``kv_heads`` KV heads (one value
    or one per layer) with ``q_per_kv`` query heads each, SwiGLU widths ``mlp_widths`` (default
    ``round(dim * mlp_ratio)``)."""
    depth = check_int("LM depth", depth)
    check_int("seq_len", seq_len)
    head_dim = check_int("head_dim", head_dim)
    if head_dim % 2:
        raise PrunelabError(f"rotary embeddings need an even head_dim, got {head_dim}")
    if not isinstance(tie_embeddings, bool):
        raise PrunelabError(f"tie_embeddings must be true or false, got {tie_embeddings!r}")
    dim = check_int("LM dim", dim)
    model = CausalLM(check_int("num_classes (vocabulary size)", num_classes), dim,
                     per_block("kv_heads", kv_heads, depth), check_int("q_per_kv", q_per_kv), head_dim,
                     mlp_width_list(dim, depth, mlp_ratio, mlp_widths), tie_embeddings,
                     check_positive("rope_theta", rope_theta), float(eps))
    init(model)
    return model


def init(model: nn.Module) -> None:
    """LLaMA's ``_init_weights`` with ``initializer_range`` 0.02 (a tied head is drawn once)."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.RMSNorm):
            nn.init.ones_(m.weight)


def units(model: CausalLM) -> list[WidthUnit]:
    """Per layer: its KV heads (read from ``k_proj``'s rows; each with its query group) and its
    SwiGLU width (``gate_proj``'s outputs)."""
    out = []
    for i, layer in enumerate(model.layers):
        attn = layer.self_attn
        out.append(WidthUnit(f"layers.{i}.self_attn", f"layers.{i}.self_attn.head_out", f"layers.{i}.self_attn.k_proj",
                             "kv_heads", i, int(attn.k_proj.weight.shape[0]) // attn.head_dim, kind="heads",
                             group_size=attn.head_dim))
        out.append(WidthUnit(f"layers.{i}.mlp", None, f"layers.{i}.mlp.gate_proj", "mlp_widths", i,
                             int(layer.mlp.gate_proj.weight.shape[0]), axis=-1))
    return out


def input_shape(kwargs: dict) -> tuple[int, ...]:
    return (int(kwargs.get("seq_len", 64)),)


def inputs(kwargs: dict) -> InputSpec:
    """Token ids ``(N, seq_len)`` below the vocabulary size, passed positionally."""
    return InputSpec.tokens(int(kwargs.get("seq_len", 64)), int(kwargs.get("num_classes", 256)))


def scale_width(spec: ArchSpec, mult: float, round_to: int = 1) -> ArchSpec:
    """Every width times ``mult``: ``dim`` and the SwiGLU widths (rounded to ``round_to``) and the KV
    head counts (whole heads, at least one; ``q_per_kv`` and ``head_dim`` stay)."""
    kw = spec.kwargs
    depth = int(kw.get("depth", 2))
    dim = int(kw.get("dim", 64))
    kv = per_block("kv_heads", kw.get("kv_heads", 4), depth)
    mlp = mlp_width_list(dim, depth, kw.get("mlp_ratio", 2.0), kw.get("mlp_widths"))
    return spec.with_kwargs(dim=round_width(dim * mult, round_to), kv_heads=scale_list(kv, mult),
                            mlp_widths=scale_list(mlp, mult, round_to))


register_family("lm", lm, units=units, init=init, shape_of=input_shape, scale_width=scale_width, task="tokens",
                inputs=inputs, expansion="bottleneck", width_keys=("kv_heads", "mlp_widths"),
                doc="decoder-only LM (LLaMA layout: RoPE, optional grouped-query attention, SwiGLU, RMSNorm)")

register_model("lm-tiny", "lm", num_classes=256, seq_len=64, dim=64, depth=2, kv_heads=4, q_per_kv=1, head_dim=16,
               mlp_ratio=2.0, doc="byte-level LM: 2 layers, dim 64, 4 heads, SwiGLU 128, tied head, 64 tokens")
register_model("lm-tiny-gqa", "lm", num_classes=256, seq_len=64, dim=64, depth=2, kv_heads=2, q_per_kv=2,
               head_dim=16, mlp_ratio=2.0,
               doc="byte-level LM with grouped-query attention: 2 KV heads x 2 query heads per layer")
