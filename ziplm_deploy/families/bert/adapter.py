"""BERT family, PyTorch side (BertModel, BertForSequenceClassification, ...): post-LayerNorm blocks."""

from __future__ import annotations

from typing import Sequence

from torch import nn

from ...core.arch import ArchSpec
from ...models.base import FamilyAdapter, out_in_weight
from ...models.surgery import PassThrough, PostLNRemovedBlock, head_columns, slice_linear_in, slice_linear_out


class BertAdapter(FamilyAdapter):
    family = "bert"
    ffn_linear_paths = {"up": "intermediate.dense", "down": "output.dense"}

    def _encoder(self, model: nn.Module) -> nn.Module:
        base = getattr(model, model.base_model_prefix, model)
        return base.encoder

    def layers(self, model):
        return self._encoder(model).layer

    def set_layers(self, model, layers):
        self._encoder(model).layer = nn.ModuleList(layers)

    def attn_out_proj(self, layer):
        return getattr(getattr(layer.attention, "output", None), "dense", None)

    def ffn_out_proj(self, layer):
        return getattr(layer.output, "dense", None)

    def ffn_in_weights(self, layer):
        return [out_in_weight(layer.intermediate.dense)]

    def keep_heads(self, layer, heads: Sequence[int], kv_heads: Sequence[int], arch: ArchSpec) -> None:
        attn = layer.attention.self
        cols = head_columns(heads, attn.attention_head_size)
        for lin in (attn.query, attn.key, attn.value):
            slice_linear_out(lin, cols)
        slice_linear_in(layer.attention.output.dense, cols)
        attn.num_attention_heads = len(heads)
        attn.all_head_size = len(cols)

    def remove_attention(self, layer, arch):
        out = layer.attention.output
        layer.attention = PostLNRemovedBlock(out.dense.bias, out.LayerNorm, returns_tuple=True)

    def keep_ffn(self, layer, neurons):
        slice_linear_out(layer.intermediate.dense, neurons)
        slice_linear_in(layer.output.dense, neurons)

    def remove_ffn(self, layer, arch):
        out = layer.output
        layer.intermediate = PassThrough()
        layer.output = PostLNRemovedBlock(out.dense.bias, out.LayerNorm, returns_tuple=False)


ADAPTER = BertAdapter()
