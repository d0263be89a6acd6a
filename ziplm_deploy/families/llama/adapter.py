"""Llama family, PyTorch side (Mistral and Qwen2 share the layout): pre-RMSNorm blocks, GQA, SwiGLU."""

from __future__ import annotations

from typing import Sequence

from torch import nn

from ...core.arch import ArchSpec
from ...models.base import FamilyAdapter, out_in_weight
from ...models.surgery import RemovedBlock, head_columns, slice_linear_in, slice_linear_out


class LlamaAdapter(FamilyAdapter):
    family = "llama"
    ffn_linear_paths = {"gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}

    def _base(self, model):
        return getattr(model, "model", model)

    def layers(self, model):
        return self._base(model).layers

    def set_layers(self, model, layers):
        self._base(model).layers = nn.ModuleList(layers)

    def attn_out_proj(self, layer):
        return getattr(layer.self_attn, "o_proj", None)

    def ffn_out_proj(self, layer):
        return getattr(layer.mlp, "down_proj", None)

    def ffn_in_weights(self, layer):
        return [out_in_weight(layer.mlp.gate_proj), out_in_weight(layer.mlp.up_proj)]

    def kv_heads_of(self, layer, heads):
        return layer.self_attn.k_proj.out_features // layer.self_attn.head_dim

    def keep_heads(self, layer, heads: Sequence[int], kv_heads: Sequence[int], arch: ArchSpec) -> None:
        attn = layer.self_attn
        d = attn.head_dim
        cols = head_columns(heads, d)
        slice_linear_out(attn.q_proj, cols)
        slice_linear_out(attn.k_proj, head_columns(kv_heads, d))
        slice_linear_out(attn.v_proj, head_columns(kv_heads, d))
        slice_linear_in(attn.o_proj, cols)
        attn.num_key_value_groups = len(heads) // len(kv_heads)

    def remove_attention(self, layer, arch):
        layer.self_attn = RemovedBlock(layer.self_attn.o_proj.bias, returns_tuple=True)
        layer.input_layernorm = nn.Identity()

    def keep_ffn(self, layer, neurons):
        slice_linear_out(layer.mlp.gate_proj, neurons)
        slice_linear_out(layer.mlp.up_proj, neurons)
        slice_linear_in(layer.mlp.down_proj, neurons)
        layer.mlp.intermediate_size = len(neurons)

    def remove_ffn(self, layer, arch):
        layer.mlp = RemovedBlock(layer.mlp.down_proj.bias, returns_tuple=False)
        layer.post_attention_layernorm = nn.Identity()

    def set_cache_index(self, layer, index):
        layer.self_attn.layer_idx = index


ADAPTER = LlamaAdapter()
