"""Transformer units: whole attention heads and MLP widths, found from the model's modules.

Torch-Pruning couples channels through the autograd graph; inside an attention block that graph is a
view / transpose / matmul / softmax chain whose channel correspondence is not a channel mapping
(heads), and on LLaMA-style blocks (rotary embeddings, ``repeat_kv``) its group propagation from a
query or key projection does not finish. So prunelab finds these units itself, from the modules,
as Torch-Pruning's own transformer examples do when they pass ``num_heads`` per attention module
(``examples/transformers/prune_hf_bert.py``, ``prune_hf_vit.py``, ``examples/LLMs/prune_llm.py``), and
leaves the rest of the model to Torch-Pruning's graph (:mod:`.groups`).

Units (each one :class:`~prunelab.prune.structured.groups.ChannelGroup` whose "channels" are):

* **heads** - one channel per key/value head. For multi-head attention that is one head; for grouped-
  query attention (Ainslie et al. 2023) a key/value head together with the query heads that read it
  (``repeat_kv``: query head h reads key/value head ``h // (H / H_kv)``), so the ratio of query to
  key/value heads stays the same. The group removes the head's rows of Q, K and V (separate
  projections, or the three slices of a fused ``c_attn``) and its columns of the output projection.
  The mask is a gate on each head's output before the output projection (a forward pre-hook on it):
  exactly the head mask of Michel et al. (2019), "Are Sixteen Heads Really Better than One?", whose
  head importance is the Fisher signal of that gate (Theis et al. 2018 on a head instead of a channel).
* **mlp** - one channel per hidden unit of the feed-forward block (the intermediate width): rows of
  the up (and gate) projections, columns of the down projection; gated by a pre-hook on the down
  projection's input, so any activation function is exact.

Layouts are a registry (:data:`ATTENTION_LAYOUTS`, :data:`MLP_LAYOUTS`), tried on every module: separate
``q_proj/k_proj/v_proj/o_proj`` (LLaMA, Mistral, Qwen, OPT-style ``out_proj``), ``query/key/value`` with a
sibling ``output.dense`` (BERT, ViT, RoBERTa), fused ``c_attn``/``c_proj`` ``Conv1D`` (GPT-2), a fused
``qkv`` Linear with ``proj`` (timm's ``Attention``, the zoo's ViT); MLPs
``gate_proj/up_proj/down_proj``, ``fc1/fc2``, ``c_fc/c_proj``, ``pwconv1/pwconv2`` (ConvNeXt) and
``intermediate.dense``/``output.dense``. After compression :func:`update_attributes` rewrites the head
counts and sizes the modules' forwards read, and :func:`config_updates` gives the config fields of
the compressed model (uniform widths only: one HF config describes every layer alike).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from prunelab.errors import PrunelabError
from prunelab.models.common import is_conv1d

__all__ = ["AttentionUnit", "MlpUnit", "Units", "find_units", "is_conv1d", "config_updates",
           "apply_config_updates", "update_attributes"]

HEAD_COUNT_ATTRS = ("num_attention_heads", "num_heads", "n_heads", "n_head")
KV_COUNT_ATTRS = ("num_key_value_heads", "num_kv_heads", "n_kv_heads")
HEAD_DIM_ATTRS = ("head_dim", "attention_head_size", "head_size")


def is_linear_like(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or is_conv1d(module)


def out_features(module: nn.Module) -> int:
    return module.weight.shape[1] if is_conv1d(module) else module.out_features


def in_features(module: nn.Module) -> int:
    return module.weight.shape[0] if is_conv1d(module) else module.in_features


@dataclass
class AttentionUnit:
    """One attention block: its projections (module paths), head counts and the module(s) whose
    attributes describe the heads (``holder``)."""

    path: str
    holder: str
    q: str
    k: str
    v: str
    o: str
    heads: int
    kv_heads: int
    head_dim: int
    fused: bool = False  # q, k, v are the three slices of one layer (``q`` == ``k`` == ``v``)

    kind = "heads"

    @property
    def name(self) -> str:
        return f"{self.path}:heads"

    @property
    def width(self) -> int:
        return self.kv_heads

    @property
    def group_size(self) -> int:
        return self.heads // self.kv_heads

    def query_channels(self) -> list[int]:
        """Group channel of each output position of the query projection (and input of ``o``)."""
        g, d = self.group_size, self.head_dim
        return [(i // d) // g for i in range(self.heads * d)]

    def kv_channels(self) -> list[int]:
        return [i // self.head_dim for i in range(self.kv_heads * self.head_dim)]


@dataclass
class MlpUnit:
    """One feed-forward block: producers (up, gate) and the down projection."""

    path: str
    producers: list[str]
    down: str
    width: int
    kind = "mlp"

    @property
    def name(self) -> str:
        return f"{self.path}:mlp"


@dataclass
class Units:
    attention: list[AttentionUnit] = field(default_factory=list)
    mlp: list[MlpUnit] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.attention or self.mlp)

    def all(self) -> list:
        return [*self.attention, *self.mlp]

    def internal_producers(self) -> set[str]:
        """Layers whose *output* channels belong to a unit (never a Torch-Pruning root)."""
        out = set()
        for a in self.attention:
            out.update({a.q, a.k, a.v})
        for m in self.mlp:
            out.update(m.producers)
        return out


def _child(module: nn.Module, name: str | None) -> nn.Module | None:
    if not name:
        return None
    sub = getattr(module, name, None)
    return sub if isinstance(sub, nn.Module) else None


def _join(path: str, *names: str) -> str:
    return ".".join(p for p in (path, *names) if p)


def _first_attr(objs, names) -> int | None:
    for obj in objs:
        if obj is None:
            continue
        for n in names:
            v = getattr(obj, n, None)
            if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                return v
    return None


def _head_geometry(path: str, holder: nn.Module, q_out: int, k_out: int) -> tuple[int, int, int]:
    """(heads, kv_heads, head_dim) from the holder's attributes (or its ``config``), checked to divide."""
    config = getattr(holder, "config", None)
    d = _first_attr((holder,), HEAD_DIM_ATTRS)
    h = _first_attr((holder, config), HEAD_COUNT_ATTRS)
    if d is None and h is not None and q_out % h == 0:
        d = q_out // h
    if d is None:
        d = _first_attr((config,), HEAD_DIM_ATTRS)
    if d is None:
        raise PrunelabError(f"attention {path}: cannot tell its head size (no head_dim / attention_head_size / "
                            f"num_heads attribute)")
    if q_out % d or k_out % d:
        raise PrunelabError(f"attention {path}: head size {d} does not divide the projections ({q_out} query, "
                            f"{k_out} key outputs)")
    heads, kv = q_out // d, k_out // d
    if heads % kv:
        raise PrunelabError(f"attention {path}: {kv} key/value heads do not divide {heads} query heads")
    return heads, kv, d


def _separate_qkv(path: str, module: nn.Module) -> AttentionUnit | None:
    for qn, kn, vn, on in (("q_proj", "k_proj", "v_proj", "o_proj"), ("q_proj", "k_proj", "v_proj", "out_proj"),
                           ("q_proj", "k_proj", "v_proj", "dense")):
        q, k, v, o = (_child(module, n) for n in (qn, kn, vn, on))
        if all(isinstance(m, nn.Linear) for m in (q, k, v, o)) and o.in_features == q.out_features \
                and k.out_features == v.out_features and q.in_features == k.in_features:
            heads, kv, d = _head_geometry(path, module, q.out_features, k.out_features)
            return AttentionUnit(path, path, _join(path, qn), _join(path, kn), _join(path, vn), _join(path, on),
                                 heads, kv, d)
    return None


def _query_key_value_with_output(path: str, module: nn.Module) -> AttentionUnit | None:
    """BERT / ViT: ``<self>.query/key/value`` and a sibling ``output.dense`` (BertAttention, ViTAttention)."""
    out = _child(module, "output")
    dense = _child(out, "dense") if out is not None else None
    if not isinstance(dense, nn.Linear):
        return None
    for name, sub in module.named_children():
        q, k, v = (_child(sub, n) for n in ("query", "key", "value"))
        if all(isinstance(m, nn.Linear) for m in (q, k, v)) and dense.in_features == v.out_features:
            holder = _join(path, name)
            heads, kv, d = _head_geometry(holder, sub, q.out_features, k.out_features)
            return AttentionUnit(path, holder, _join(holder, "query"), _join(holder, "key"), _join(holder, "value"),
                                 _join(path, "output", "dense"), heads, kv, d)
    return None


def _fused_c_attn(path: str, module: nn.Module) -> AttentionUnit | None:
    """GPT-2: ``c_attn`` (Conv1D, outputs q|k|v) and ``c_proj``; cross-attention blocks are left alone."""
    c_attn, c_proj = _child(module, "c_attn"), _child(module, "c_proj")
    if c_attn is None or c_proj is None or not (is_conv1d(c_attn) and is_conv1d(c_proj)):
        return None
    if getattr(module, "is_cross_attention", False):
        return None
    width = out_features(c_attn)
    if width % 3:
        return None
    e = width // 3
    heads, kv, d = _head_geometry(path, module, e, e)
    return AttentionUnit(path, path, _join(path, "c_attn"), _join(path, "c_attn"), _join(path, "c_attn"),
                         _join(path, "c_proj"), heads, kv, d, fused=True)


def _fused_qkv_linear(path: str, module: nn.Module) -> AttentionUnit | None:
    """timm's ``Attention`` (and the zoo's ViT): one ``qkv`` Linear whose outputs are q|k|v, then ``proj``."""
    qkv, proj = _child(module, "qkv"), _child(module, "proj")
    if not (isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear)) or qkv.out_features % 3:
        return None
    e = qkv.out_features // 3
    if proj.in_features != e:
        return None
    heads, kv, d = _head_geometry(path, module, e, e)
    return AttentionUnit(path, path, _join(path, "qkv"), _join(path, "qkv"), _join(path, "qkv"), _join(path, "proj"),
                         heads, kv, d, fused=True)


def _mlp_pairs(path: str, module: nn.Module) -> MlpUnit | None:
    for ups, down in ((("up_proj", "gate_proj"), "down_proj"), (("fc1",), "fc2"), (("c_fc",), "c_proj"),
                      (("pwconv1",), "pwconv2"), (("w1", "w3"), "w2"), (("dense_h_to_4h",), "dense_4h_to_h")):
        mods = [_child(module, n) for n in ups]
        dn = _child(module, down)
        if dn is None or any(m is None for m in mods):
            continue
        if not all(is_linear_like(m) for m in (*mods, dn)):
            continue
        width = out_features(mods[0])
        if any(out_features(m) != width for m in mods) or in_features(dn) != width:
            continue
        present = list(zip(ups, mods))
        return MlpUnit(path, [_join(path, n) for n, _ in present], _join(path, down), width)
    return None


def _intermediate_output(path: str, module: nn.Module) -> MlpUnit | None:
    """BERT / ViT layers: ``intermediate.dense`` then ``output.dense``."""
    inter, out = _child(module, "intermediate"), _child(module, "output")
    up = _child(inter, "dense") if inter is not None else None
    down = _child(out, "dense") if out is not None else None
    if isinstance(up, nn.Linear) and isinstance(down, nn.Linear) and down.in_features == up.out_features:
        return MlpUnit(path, [_join(path, "intermediate", "dense")], _join(path, "output", "dense"), up.out_features)
    return None


#: attention layouts, tried in order on every module (the first match wins)
ATTENTION_LAYOUTS: list[Callable[[str, nn.Module], AttentionUnit | None]] = [
    _separate_qkv, _query_key_value_with_output, _fused_c_attn, _fused_qkv_linear]
#: feed-forward layouts
MLP_LAYOUTS: list[Callable[[str, nn.Module], MlpUnit | None]] = [_mlp_pairs, _intermediate_output]


def find_units(model: nn.Module) -> Units:
    """The attention and MLP units of ``model`` (empty for a model without any)."""
    units = Units()
    taken: set[str] = set()
    for path, module in model.named_modules():
        for layout in ATTENTION_LAYOUTS:
            unit = layout(path, module)
            if unit is not None and unit.q not in taken:
                units.attention.append(unit)
                taken.update({unit.q, unit.k, unit.v, unit.o})
                break
    for path, module in model.named_modules():
        for layout in MLP_LAYOUTS:
            unit = layout(path, module)
            if unit is not None and unit.down not in taken and not taken.intersection(unit.producers):
                units.mlp.append(unit)
                taken.update({*unit.producers, unit.down})
                break
    return units


# ------------------------------------------------------------------------------- after compression

def update_attributes(model: nn.Module, unit: AttentionUnit, kept_kv: int) -> None:
    """Rewrite the head counts and sizes the attention module reads in its forward, for ``kept_kv``
    key/value heads (and ``kept_kv * group_size`` query heads)."""
    holder = model.get_submodule(unit.holder)
    heads = kept_kv * unit.group_size
    for name in HEAD_COUNT_ATTRS:
        if isinstance(getattr(holder, name, None), int):
            setattr(holder, name, heads)
    for name in KV_COUNT_ATTRS:
        if isinstance(getattr(holder, name, None), int):
            setattr(holder, name, kept_kv)
    for name in ("all_head_size", "inner_dim"):
        if isinstance(getattr(holder, name, None), int):
            setattr(holder, name, heads * unit.head_dim)
    if unit.fused and isinstance(getattr(holder, "split_size", None), int):
        holder.split_size = heads * unit.head_dim


def config_updates(model: nn.Module, head_dim_field: bool = False) -> dict[str, int]:
    """Config fields describing the (compressed) model's heads and MLP widths, for ``save_pretrained``.

    One Hugging Face config describes every layer alike, so the widths must be the same in every
    layer; otherwise (or when the config cannot state the head size) this raises a one-line error.
    ``head_dim_field``: the model's class reads ``config.head_dim`` even where the config does not
    hold one yet (transformers' ViT; see :func:`prunelab.export.hf_config.states_head_dim`), so the
    head size may be stated as a new field.
    """
    config = getattr(model, "config", None)
    if config is None:
        return {}
    units = find_units(model)
    out: dict[str, int] = {}
    heads = {(a.heads, a.kv_heads, a.head_dim) for a in units.attention}
    if len(heads) > 1:
        raise PrunelabError("the pruned layers keep different numbers of heads "
                            f"({sorted({h for h, _, _ in heads})}); a Hugging Face config describes every layer "
                            f"alike, so this model cannot be saved as a Hugging Face folder")
    if heads:
        h, kv, d = heads.pop()
        old_h = _first_attr((config,), HEAD_COUNT_ATTRS)
        hidden = _first_attr((config,), ("hidden_size", "n_embd", "d_model"))
        if (old_h == h and not isinstance(getattr(config, "head_dim", None), int) and hidden is not None
                and hidden != h * d):  # the hidden width was pruned: hidden / heads no longer is the head size
            raise PrunelabError(f"{type(config).__name__} derives the head size from hidden size / heads; with "
                                f"hidden size {hidden} and {h} heads of size {d} it cannot describe the pruned model")
        if old_h != h:
            hidden = _first_attr((config,), ("hidden_size", "n_embd", "d_model"))
            explicit = getattr(config, "head_dim", None)
            if head_dim_field and not isinstance(explicit, int):
                explicit = d
            if not isinstance(explicit, int) and hidden is not None and hidden % h == 0 and hidden // h == d:
                pass
            elif not isinstance(explicit, int):
                raise PrunelabError(f"{type(config).__name__} derives the head size from hidden size / heads; with "
                                    f"{h} heads of size {d} it cannot describe the pruned attention")
            for name in HEAD_COUNT_ATTRS:
                if isinstance(getattr(config, name, None), int):
                    out[name] = h
            for name in KV_COUNT_ATTRS:
                if isinstance(getattr(config, name, None), int):
                    out[name] = kv
            if isinstance(explicit, int):
                out["head_dim"] = d
    widths = {m.width for m in units.mlp}
    if len(widths) > 1:
        raise PrunelabError(f"the pruned MLPs keep different widths ({sorted(widths)}); a Hugging Face config "
                            f"describes every layer alike, so this model cannot be saved as a Hugging Face folder")
    if widths:
        w = widths.pop()
        for name in ("intermediate_size", "n_inner", "ffn_dim", "mlp_dim"):
            if hasattr(config, name) and name in config.to_dict():
                out[name] = w
    return out


def apply_config_updates(model: nn.Module) -> dict[str, int]:
    """Write :func:`config_updates` into ``model.config``; returns what changed."""
    updates = config_updates(model)
    for k, v in updates.items():
        setattr(model.config, k, v)
    return updates
