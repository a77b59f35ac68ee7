"""Transformer pruning speed, measured side by side in one run on this machine (figures, no assertions).

Models are Hugging Face ``transformers`` configs with random weights (nothing is downloaded), eager
attention so both tools and both counters see the attention matmuls.

(a) Graph discovery + compression of a BERT-base-sized ``BertForSequenceClassification`` (12 layers,
    hidden 768, 12 heads, FFN 3072) at half of every layer's heads and half of every FFN width,
    L1 ranking, the hidden width kept: prunelab's ``find_groups`` + ``compress`` against
    Torch-Pruning's ``MetaPruner`` (``num_heads`` per Q/K/V, ``prune_num_heads``, the hidden-width
    layers in ``ignored_layers``, as its ``examples/transformers/prune_hf_bert.py``). Both cut a fresh
    copy in place; alternated, medians. Goal: prunelab within 1.5x of Torch-Pruning.
(b) prunelab's graph discovery on a 2-layer LLaMA with grouped-query attention (TinyLlama-1.1B
    widths: hidden 2048, 32 query / 4 key-value heads, MLP 5632). Goal: under 10 s.
(c) CPU latency of the BERT-base-sized model with half of its heads and FFN width removed against
    the dense model, batch 8, sequence 128, eager PyTorch and ONNX Runtime (dense and pruned
    alternate call by call; medians), beside the MACs ratio. Goal: speed-up >= 0.8x the MACs ratio.

    python benchmarks/transformers.py --quick          # small configs, seconds
    python benchmarks/transformers.py --threads 2      # full sizes (minutes; run once)

A part whose prerequisites are missing (transformers, onnxruntime, or a pruning capability) prints
why and the others still run.
"""

from __future__ import annotations

import argparse
import copy
import io
import os
import platform
import statistics
import sys
import time
import traceback
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from prunelab.io import atomic_write_json
from prunelab.measure import count_macs, count_params
from prunelab.measure.timing import fixed_threads, time_interleaved
from prunelab.models.inputs import InputSpec

# Run as a script, this file's folder is first on sys.path and its name would hide the transformers
# package: drop the folder (nothing here imports a sibling benchmark).
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]


@dataclass(frozen=True)
class Sizes:
    """Config sizes of one run (full or ``--quick``)."""

    bert_layers: int
    bert_hidden: int
    bert_heads: int
    bert_ffn: int
    llama_hidden: int
    llama_heads: int
    llama_kv_heads: int
    llama_mlp: int
    vocab: int
    batch: int
    seq: int


FULL = Sizes(12, 768, 12, 3072, 2048, 32, 4, 5632, 30522, 8, 128)
QUICK = Sizes(2, 128, 4, 256, 256, 8, 2, 512, 1000, 8, 32)


def bert(s: Sizes) -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=s.vocab, hidden_size=s.bert_hidden, num_hidden_layers=s.bert_layers,
                     num_attention_heads=s.bert_heads, intermediate_size=s.bert_ffn, num_labels=2,
                     attn_implementation="eager")
    return BertForSequenceClassification(cfg).eval()


def llama(s: Sizes) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=32000 if s is FULL else s.vocab, hidden_size=s.llama_hidden, num_hidden_layers=2,
                      num_attention_heads=s.llama_heads, num_key_value_heads=s.llama_kv_heads,
                      intermediate_size=s.llama_mlp, attn_implementation="eager")
    return LlamaForCausalLM(cfg).eval()


def tokens(s: Sizes, vocab: int | None = None) -> InputSpec:
    return InputSpec.tokens(s.seq, vocab or s.vocab)


# ------------------------------------------------------------------------------------------ (a)


def prunelab_half(model: nn.Module, inputs: InputSpec) -> tuple[nn.Module, dict]:
    """prunelab: groups (heads and FFN widths under scope ``internal``), L1 ranking inside each group,
    the better half kept, compressed in place."""
    from prunelab.prune.structured import channel_scores, find_groups, prune_in_place

    t0 = time.perf_counter()
    groups = find_groups(model, inputs, "internal")
    t1 = time.perf_counter()
    scores = channel_scores("l1", model, groups)
    keep = {g.name: sorted(torch.topk(scores[g.name], g.width - g.width // 2).indices.tolist()) for g in groups}
    small = prune_in_place(model, groups, keep)
    t2 = time.perf_counter()
    kinds: dict[str, int] = {}
    for g in groups:
        kind = getattr(g, "kind", "channels")
        kinds[kind] = kinds.get(kind, 0) + 1
    return small, {"groups_s": t1 - t0, "compress_s": t2 - t1, "total_s": t2 - t0, "groups": kinds}


def torch_pruning_half(model: nn.Module, inputs: InputSpec, s: Sizes) -> tuple[nn.Module, dict]:
    """Torch-Pruning's MetaPruner, set up as its HF BERT example: heads via ``num_heads`` on Q/K/V,
    ``prune_num_heads`` at ratio 0.5, FFN width at 0.5, the layers writing the hidden stream ignored."""
    import torch_pruning as tp
    from transformers.models.bert.modeling_bert import BertSelfAttention

    ids = inputs.example(1)
    t0 = time.perf_counter()
    num_heads, ignored = {}, [model.classifier, model.bert.pooler.dense]
    for name, m in model.named_modules():
        if isinstance(m, BertSelfAttention):
            for lin in (m.query, m.key, m.value):
                num_heads[lin] = m.num_attention_heads
        if name.endswith("output.dense"):  # attention output and FFN down projection: the hidden width
            ignored.append(m)
    pruner = tp.pruner.MetaPruner(model, ids, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=0.5,
                                  ignored_layers=ignored, num_heads=num_heads, prune_num_heads=True,
                                  prune_head_dims=False, head_pruning_ratio=0.5,
                                  output_transform=lambda out: out.logits.sum())
    t1 = time.perf_counter()
    pruner.step()
    for m in model.modules():  # what its example does after the step, so the model runs
        if isinstance(m, BertSelfAttention) and m.query in pruner.num_heads:
            m.num_attention_heads = pruner.num_heads[m.query]
            m.attention_head_size = m.query.out_features // m.num_attention_heads
            m.all_head_size = m.query.out_features
    t2 = time.perf_counter()
    return model, {"init_s": t1 - t0, "step_s": t2 - t1, "total_s": t2 - t0}


def bert_compression(s: Sizes, rounds: int) -> dict:
    dense = bert(s)
    inputs = tokens(s)
    ours, theirs, small, tp_small, errors = [], [], None, None, {}
    for r in range(rounds):
        for who in (("ours", "tp") if r % 2 == 0 else ("tp", "ours")):
            model = copy.deepcopy(dense)
            try:
                if who == "ours":
                    small, t = prunelab_half(model, inputs)
                    ours.append(t)
                else:
                    tp_small, t = torch_pruning_half(model, inputs, s)
                    theirs.append(t)
            except Exception as exc:  # report and go on: the benchmark prints what it can measure
                errors[who] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
    out: dict = {"rounds": rounds, "errors": errors, "_dense": dense, "_small": small}
    x = inputs.example(1)
    for who, runs, m in (("prunelab", ours, small), ("torch_pruning", theirs, tp_small)):
        if not runs:
            continue
        out[who] = {k: statistics.median(t[k] for t in runs) for k in runs[0] if k.endswith("_s")}
        out[who]["params"] = count_params(m).params
        out[who]["macs"] = count_macs(m, inputs)
        with torch.no_grad():
            out[who]["runs"] = bool(torch.isfinite(m(x).logits).all())
        if "groups" in runs[0]:
            out[who]["groups"] = runs[0]["groups"]
    out["dense"] = {"params": count_params(dense).params, "macs": count_macs(dense, inputs)}
    if ours and theirs:
        out["ratio_total"] = out["prunelab"]["total_s"] / out["torch_pruning"]["total_s"]
    return out


# ------------------------------------------------------------------------------------------ (b)


def llama_discovery(s: Sizes) -> dict:
    from prunelab.prune.structured import find_groups

    model = llama(s)
    inputs = tokens(s, model.config.vocab_size)
    t0 = time.perf_counter()
    groups = find_groups(model, inputs, "internal")
    seconds = time.perf_counter() - t0
    kinds: dict[str, int] = {}
    for g in groups:
        kind = getattr(g, "kind", "channels")
        kinds[kind] = kinds.get(kind, 0) + 1
    return {"discovery_s": seconds, "groups": kinds, "params": count_params(model).params}


# ------------------------------------------------------------------------------------------ (c)


class Logits(nn.Module):
    """token ids -> logits tensor (one input, one output: what ONNX export and timing need)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids).logits


def onnx_session(model: nn.Module, x: torch.Tensor, threads: int):
    import onnxruntime as ort

    buf = io.BytesIO()
    warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
    torch.onnx.export(Logits(model).eval(), (x,), buf, input_names=["input_ids"], output_names=["logits"],
                      opset_version=17, dynamo=False)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
    feed = {"input_ids": x.numpy()}
    return lambda: sess.run(None, feed)


def latency(dense: nn.Module, small: nn.Module, s: Sizes, threads: int, repeats: int) -> dict:
    inputs = tokens(s)
    x = inputs.example(s.batch)
    macs_ratio = count_macs(dense, inputs) / count_macs(small, inputs)

    def eager(m):
        def call():
            with torch.inference_mode():
                return m(input_ids=x).logits
        return call

    with torch.no_grad():
        diff = float((dense(input_ids=x).logits - small(input_ids=x).logits).abs().max())
    out = {"batch": s.batch, "seq": s.seq, "macs_ratio": macs_ratio, "dense_vs_pruned_max_logit_diff": diff}
    e = time_interleaved({"dense": eager(dense), "pruned": eager(small)}, warmup=2, repeats=repeats)
    d, p = statistics.median(e["dense"]), statistics.median(e["pruned"])
    out["eager"] = {"dense_ms": d, "pruned_ms": p, "speedup": d / p, "vs_macs": d / p / macs_ratio}
    try:
        runs = {"dense": onnx_session(dense, x, threads), "pruned": onnx_session(small, x, threads)}
        o = time_interleaved(runs, warmup=2, repeats=repeats)
        d, p = statistics.median(o["dense"]), statistics.median(o["pruned"])
        out["onnxruntime"] = {"dense_ms": d, "pruned_ms": p, "speedup": d / p,
                              "vs_macs": d / p / macs_ratio}
    except Exception as exc:
        out["onnxruntime"] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]}
    return out


# ------------------------------------------------------------------------------------------ main


def _fmt_tool(r: dict, who: str) -> str:
    t = r.get(who)
    if t is None:
        return f"{who}: failed ({r['errors'].get('ours' if who == 'prunelab' else 'tp', '?')})"
    parts = [f"{k[:-2]} {v:.2f} s" for k, v in t.items() if k.endswith("_s")]
    return f"{who}: {', '.join(parts)}; params {t['params']:,}, MACs {t['macs']:,}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small configs (2-layer BERT, hidden 128; seconds)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=None, help="compression rounds per tool (default 3, quick 3)")
    ap.add_argument("--repeats", type=int, default=None, help="latency calls per model and backend")
    ap.add_argument("--parts", default="abc", help="which parts to run, e.g. 'ab'")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()
    s = QUICK if args.quick else FULL
    rounds = args.rounds or 3
    repeats = args.repeats or (20 if args.quick else 8)
    import torch_pruning as tp

    out: dict = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                             "threads": args.threads, "torch": torch.__version__,
                             "torch_pruning": getattr(tp, "__version__", "?")}, "sizes": s.__dict__}
    try:
        from importlib.metadata import version

        import transformers  # noqa: F401

        out["machine"]["transformers"] = version("transformers")
    except ImportError:
        print("transformers is not installed: pip install 'prunelab[hf]'")
        return
    with fixed_threads(args.threads):
        r = None
        if "a" in args.parts or "c" in args.parts:
            try:
                r = bert_compression(s, rounds)
            except Exception as exc:
                traceback.print_exc()
                print(f"[a] failed: {type(exc).__name__}: {exc}")
        if r is not None and "a" in args.parts:
            out["bert_compression"] = {k: v for k, v in r.items() if not k.startswith("_")}
            print(f"[a] BERT {s.bert_layers} layers, hidden {s.bert_hidden}: half the heads and FFN width "
                  f"(dense {r['dense']['params']:,} params)")
            for who in ("prunelab", "torch_pruning"):
                print(f"    {_fmt_tool(r, who)}")
            if "ratio_total" in r:
                print(f"    prunelab / Torch-Pruning total time: {r['ratio_total']:.2f}x (goal <= 1.5x)")
        if "b" in args.parts:
            try:
                b = llama_discovery(s)
                out["llama_discovery"] = b
                print(f"[b] LLaMA-GQA 2 layers, hidden {s.llama_hidden}, {s.llama_heads}/{s.llama_kv_heads} heads: "
                      f"discovery {b['discovery_s']:.2f} s (goal < 10 s), groups {b['groups']}")
            except Exception as exc:
                out["llama_discovery"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
                print(f"[b] failed: {type(exc).__name__}: {exc}")
        if "c" in args.parts and r is not None and r.get("_small") is not None:
            c = latency(r["_dense"], r["_small"], s, args.threads, repeats)
            out["latency"] = c
            print(f"[c] batch {c['batch']}, seq {c['seq']}: MACs ratio {c['macs_ratio']:.2f}x")
            for backend in ("eager", "onnxruntime"):
                v = c[backend]
                if "error" in v:
                    print(f"    {backend}: failed ({v['error']})")
                else:
                    print(f"    {backend}: dense {v['dense_ms']:.1f} ms, pruned {v['pruned_ms']:.1f} ms, speed-up "
                          f"{v['speedup']:.2f}x = {v['vs_macs']:.2f} of the MACs ratio (goal >= 0.8)")
        elif "c" in args.parts:
            print("[c] skipped: no pruned BERT from part (a)")
    if args.json:
        atomic_write_json(args.json, out)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
