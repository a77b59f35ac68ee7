"""Tiny Hugging Face models (random init from configs, nothing downloaded) and their example inputs,
shared by the transformer pruning tests. Eager attention, so every matmul is visible to
``torch.utils.flop_counter``."""

from __future__ import annotations

import torch
from torch import nn

transformers = __import__("pytest").importorskip("transformers")

from prunelab.models.inputs import InputSpec, TensorSpec  # noqa: E402

VOCAB, SEQ = 64, 8


def tokens_spec(seq: int = SEQ) -> InputSpec:
    return InputSpec.dict_of({"input_ids": TensorSpec((seq,), "int64", vocab_size=VOCAB)})


def bert():
    c = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=64, max_position_embeddings=32, num_labels=3,
                                attn_implementation="eager")
    return transformers.BertForSequenceClassification(c), tokens_spec()


def gpt2():
    c = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=32,
                                bos_token_id=0, eos_token_id=0, use_cache=False, attn_implementation="eager")
    return transformers.GPT2LMHeadModel(c), tokens_spec()


def llama():
    c = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, intermediate_size=48, max_position_embeddings=32,
                                 use_cache=False, attn_implementation="eager")
    return transformers.LlamaForCausalLM(c), tokens_spec()


def vit():
    c = transformers.ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
                               num_attention_heads=4, intermediate_size=64, num_labels=3, attn_implementation="eager")
    return transformers.ViTForImageClassification(c), InputSpec.tensor((3, 16, 16))


def convnext():
    c = transformers.ConvNextConfig(num_channels=3, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, num_labels=3)
    return transformers.ConvNextForImageClassification(c), InputSpec.tensor((3, 32, 32))


def mobilenet_v2():
    c = transformers.MobileNetV2Config(num_channels=3, image_size=32, depth_multiplier=0.25, num_labels=3)
    return transformers.MobileNetV2ForImageClassification(c), InputSpec.tensor((3, 32, 32))


def resnet():
    c = transformers.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                  layer_type="basic", num_labels=3)
    return transformers.ResNetForImageClassification(c), InputSpec.tensor((3, 32, 32))


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of an N x C x H x W tensor (ConvNeXt's channels-first norm)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(c)

    def forward(self, x):
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class HandNet(nn.Module):
    """Squeeze-and-excitation, depthwise separable, concat, groups=4, upsample and a channel LayerNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pw = nn.Conv2d(16, 24, 1)
        self.se_reduce = nn.Conv2d(24, 6, 1)
        self.se_expand = nn.Conv2d(6, 24, 1)
        self.grouped = nn.Conv2d(24, 24, 3, padding=1, groups=4)
        self.branch = nn.Conv2d(16, 8, 1)
        self.down = nn.Conv2d(32, 32, 3, stride=2, padding=1)
        self.up = nn.Upsample(scale_factor=2)
        self.norm = ChannelLayerNorm(32)
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        y = torch.relu(self.pw(self.dw(x)))
        s = torch.sigmoid(self.se_expand(torch.relu(self.se_reduce(y.mean((2, 3), keepdim=True)))))
        y = self.grouped(y * s)
        z = torch.cat([y, self.branch(x)], 1)
        z = self.norm(self.up(self.down(z)))
        return self.head(z.mean((2, 3)))


def hand_net():
    return HandNet(), InputSpec.tensor((3, 16, 16))


MODELS = {"bert": bert, "vit": vit, "gpt2": gpt2, "llama-gqa": llama, "convnext": convnext,
          "mobilenet-v2": mobilenet_v2, "resnet": resnet, "hand-net": hand_net}
