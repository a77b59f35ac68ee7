"""Tiny Hugging Face models built from configs (random init, nothing downloaded), shared by tests."""

from __future__ import annotations

import torch

from prunelab.models.inputs import InputSpec

VOCAB = 61


def tiny(kind: str, attn: str = "eager"):
    """``(model, input spec)`` of a tiny random-init HF model in eval mode; ``kind`` is one of
    bert, gpt2, vit, llama-gqa, bert-seq-cls."""
    import transformers as tf

    torch.manual_seed(0)
    common = {"attn_implementation": attn}
    if kind == "bert":
        cfg = tf.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=64, max_position_embeddings=32, num_labels=3, **common)
        return tf.BertForSequenceClassification(cfg).eval(), InputSpec.tokens(12, VOCAB, attention_mask=True)
    if kind == "gpt2":
        cfg = tf.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=32, bos_token_id=0,
                            eos_token_id=0, **common)
        return tf.GPT2LMHeadModel(cfg).eval(), InputSpec.tokens(12, VOCAB)
    if kind == "vit":
        cfg = tf.ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=64, num_labels=5, **common)
        return tf.ViTForImageClassification(cfg).eval(), InputSpec.tensor((3, 16, 16))
    if kind == "llama-gqa":
        cfg = tf.LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, intermediate_size=48, max_position_embeddings=32,
                             bos_token_id=0, eos_token_id=0, pad_token_id=0, **common)
        return tf.LlamaForCausalLM(cfg).eval(), InputSpec.tokens(12, VOCAB)
    raise KeyError(kind)
