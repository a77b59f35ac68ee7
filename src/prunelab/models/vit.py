"""A small Vision Transformer (Dosovitskiy et al. 2021) sized for the embedded and CIFAR data sets.

Layout and module names of timm's ``VisionTransformer`` (``timm/models/vision_transformer.py``), so
tools written for timm ViTs (Torch-Pruning's ``examples/transformers/prune_timm_vit.py``) read it:
``patch_embed.proj`` (a strided convolution cutting the image into patches), a learned ``cls_token``
and ``pos_embed``, ``blocks.i`` = pre-norm ``norm1 -> attn -> + x`` and ``norm2 -> mlp -> + x``,
a final ``norm`` and the classifier ``head`` on the class token. Attention is timm's ``Attention``:
a fused ``qkv`` Linear, ``num_heads`` heads of ``head_dim`` each, softmax(Q K^T / sqrt(d)) V written
out with ``torch.matmul`` (eager attention, counted and exported as such), and the output
projection ``proj``. The MLP is ``fc1 -> GELU -> fc2``.

Every block has its own head count and MLP width (``heads`` and ``mlp_widths``, ints or per-block
lists), so a pruned ViT is again a spec of this family. The width units are, per block:

* ``blocks.i.attn``: its heads (``kind="heads"``; each head is ``head_dim`` rows of each of Q, K
  and V and ``head_dim`` input columns of ``proj``). Gates and masks act on ``attn.head_out``, an
  identity on the per-head context ``(N, heads, T, head_dim)``, channel axis 1;
* ``blocks.i.mlp``: the MLP's hidden width (``fc1`` outputs), gated after ``fc1`` on axis -1 before
  the GELU (GELU(0) = 0, so a zero gate removes the channel as a zero BN gate before ReLU does).

The patch size is fitted to the image: the largest divisor ``p`` of the side with ``p^2 <= side / 2``
(digits 8x8 -> 2, 16 tokens; CIFAR 32x32 -> 4, 64 tokens; 28x28 -> 2), unless ``patch_size`` is given.
Initialisation is timm's default (``init_weights_vit_timm``): Linear weights ``trunc_normal_(std=0.02)``
and zero bias, ``pos_embed`` the same, ``cls_token`` normal 1e-6, LayerNorm 1/0, the patch
convolution PyTorch's default. timm truncates at +-2 in absolute units, 100 standard deviations, which
no draw reaches, so the weights are drawn from the plain normal (one op instead of five per tensor).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.models.common import check_int, check_positive, check_widths
from prunelab.models.registry import ArchSpec, WidthUnit, register_family, register_model
from prunelab.models.widths import round_width, scale_list


class Attention(nn.Module):
    """timm's multi-head self-attention: fused ``qkv``, eager softmax attention, ``proj``.

    ``num_heads`` and ``head_dim`` are read at every call (timm's convention, which pruning tools
    update after removing heads)."""

    def __init__(self, dim: int, num_heads: int, head_dim: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.scale = head_dim ** -0.5
        self.qkv = nn.Linear(dim, 3 * num_heads * head_dim)
        self.head_out = nn.Identity()
        self.proj = nn.Linear(num_heads * head_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, _ = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = torch.matmul(q * self.scale, k.transpose(-2, -1)).softmax(dim=-1)
        ctx = self.head_out(torch.matmul(attn, v))  # (N, heads, T, head_dim)
        return self.proj(ctx.transpose(1, 2).reshape(n, t, self.num_heads * self.head_dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block (timm ``Block`` without layer scale or drop-path)."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, mlp_width: int, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, head_dim)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, mlp_width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """Image -> (N, patches, dim) with a ``patch x patch`` convolution of stride ``patch``."""

    def __init__(self, in_channels: int, dim: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch, patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    def __init__(self, image_size: tuple[int, int], patch: int, in_channels: int, dim: int, heads: Sequence[int],
                 head_dim: int, mlp_widths: Sequence[int], num_classes: int, eps: float) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(in_channels, dim, patch)
        tokens = (image_size[0] // patch) * (image_size[1] // patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens + 1, dim))
        self.blocks = nn.Sequential(*[Block(dim, h, head_dim, w, eps) for h, w in zip(heads, mlp_widths)])
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def fitted_patch(side: int) -> int:
    """The largest divisor ``p`` of ``side`` with ``p * p <= side / 2`` (8 -> 2, 32 -> 4, 28 -> 2)."""
    return max(p for p in range(1, side + 1) if side % p == 0 and 2 * p * p <= side)


def _image_size(image_size: Any) -> tuple[int, int]:
    if isinstance(image_size, (list, tuple)):
        if len(image_size) != 2:
            raise PrunelabError(f"ViT image_size must be one side or [height, width], got {image_size!r}")
        return check_int("ViT image height", image_size[0]), check_int("ViT image width", image_size[1])
    side = check_int("ViT image_size", image_size)
    return side, side


def per_block(name: str, value: Any, depth: int) -> list[int]:
    """An int for every block, or a list with one entry per block."""
    if isinstance(value, (list, tuple)):
        return check_widths(name, value, depth)
    return [check_int(name, value)] * depth


def mlp_width_list(dim: int, depth: int, mlp_ratio: float, mlp_widths: Sequence[int] | None) -> list[int]:
    """``mlp_widths`` as given, else ``round(dim * mlp_ratio)`` for every block."""
    if mlp_widths is not None:
        return check_widths("mlp_widths", mlp_widths, depth)
    return [round_width(dim * check_positive("mlp_ratio", mlp_ratio))] * depth


def vit(image_size: int | Sequence[int] = 32, patch_size: int | None = None, in_channels: int = 3, dim: int = 64,
        depth: int = 4, heads: int | Sequence[int] = 4, head_dim: int = 16, mlp_ratio: float = 2.0,
        mlp_widths: Sequence[int] | None = None, num_classes: int = 10, eps: float = 1e-6) -> VisionTransformer:
    """Build a ViT. ``heads``/``mlp_widths``: one value or one per block; ``head_dim`` is fixed, so
    removing a head removes ``head_dim`` rows of each of Q, K, V. ``patch_size`` None fits it to the
    image (:func:`fitted_patch`)."""
    h, w = _image_size(image_size)
    depth = check_int("ViT depth", depth)
    if patch_size is None:
        if h != w:
            raise PrunelabError(f"a {h}x{w} image needs an explicit patch_size dividing both sides")
        patch = fitted_patch(h)
    else:
        patch = check_int("ViT patch_size", patch_size)
    if h % patch or w % patch:
        raise PrunelabError(f"ViT patch_size {patch} must divide the {h}x{w} image")
    dim = check_int("ViT dim", dim)
    model = VisionTransformer((h, w), patch, check_int("in_channels", in_channels), dim,
                              per_block("heads", heads, depth), check_int("head_dim", head_dim),
                              mlp_width_list(dim, depth, mlp_ratio, mlp_widths),
                              check_int("num_classes", num_classes), float(eps))
    init(model)
    return model


def init(model: nn.Module) -> None:
    """timm's default ViT initialisation (``init_weights_vit_timm`` and ``init_weights``; see the
    module docstring for the truncation)."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            m.reset_parameters()
    if isinstance(model, VisionTransformer):
        nn.init.normal_(model.pos_embed, std=0.02)
        nn.init.normal_(model.cls_token, std=1e-6)


def units(model: VisionTransformer) -> list[WidthUnit]:
    """Per block: its heads (read from ``qkv``'s rows) and its MLP width (``fc1``'s outputs)."""
    out = []
    for i, block in enumerate(model.blocks):
        attn = block.attn
        heads = int(attn.qkv.weight.shape[0]) // (3 * attn.head_dim)
        out.append(WidthUnit(f"blocks.{i}.attn", f"blocks.{i}.attn.head_out", f"blocks.{i}.attn.qkv", "heads", i,
                             heads, kind="heads", group_size=3 * attn.head_dim))
        out.append(WidthUnit(f"blocks.{i}.mlp", None, f"blocks.{i}.mlp.fc1", "mlp_widths", i,
                             int(block.mlp.fc1.weight.shape[0]), axis=-1))
    return out


def input_shape(kwargs: dict) -> tuple[int, ...]:
    h, w = _image_size(kwargs.get("image_size", 32))
    return int(kwargs.get("in_channels", 3)), h, w


def scale_width(spec: ArchSpec, mult: float, round_to: int = 1) -> ArchSpec:
    """Every width times ``mult``: the embedding ``dim`` and the MLP widths (rounded to ``round_to``)
    and the head counts (whole heads, at least one; ``head_dim`` stays)."""
    kw = spec.kwargs
    depth = int(kw.get("depth", 4))
    dim = int(kw.get("dim", 64))
    heads = per_block("heads", kw.get("heads", 4), depth)
    mlp = mlp_width_list(dim, depth, kw.get("mlp_ratio", 2.0), kw.get("mlp_widths"))
    return spec.with_kwargs(dim=round_width(dim * mult, round_to), heads=scale_list(heads, mult),
                            mlp_widths=scale_list(mlp, mult, round_to))


register_family("vit", vit, units=units, init=init, shape_of=input_shape, scale_width=scale_width,
                expansion="bottleneck", width_keys=("heads", "mlp_widths"),
                doc="Vision Transformer (timm layout: fused qkv, pre-norm blocks, class token)")

register_model("vit-digits", "vit", image_size=8, in_channels=1, dim=32, depth=2, heads=4, head_dim=8,
               mlp_ratio=2.0, doc="ViT for 8x8 digits: patch 2 (16 tokens), dim 32, 2 blocks of 4 heads")
register_model("vit-cifar", "vit", image_size=32, in_channels=3, dim=128, depth=6, heads=4, head_dim=32,
               mlp_ratio=2.0, doc="ViT for CIFAR: patch 4 (64 tokens), dim 128, 6 blocks of 4 heads")
