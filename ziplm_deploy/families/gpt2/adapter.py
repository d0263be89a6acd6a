"""GPT-2 family, PyTorch side: pre-LayerNorm blocks, fused ``c_attn`` Conv1D with (in, out) weights."""

from __future__ import annotations

from typing import Sequence

from torch import nn

from ...core.arch import ArchSpec
from ...models.base import FamilyAdapter, out_in_weight
from ...models.surgery import RemovedBlock, head_columns, slice_conv1d_in, slice_conv1d_out


class GPT2Adapter(FamilyAdapter):
    family = "gpt2"
    ffn_linear_paths = {"up": "mlp.c_fc", "down": "mlp.c_proj"}

    def _base(self, model):
        return getattr(model, "transformer", model)

    def layers(self, model):
        return self._base(model).h

    def set_layers(self, model, layers):
        self._base(model).h = nn.ModuleList(layers)

    def attn_out_proj(self, layer):
        return getattr(layer.attn, "c_proj", None)

    def ffn_out_proj(self, layer):
        return getattr(layer.mlp, "c_proj", None)

    def ffn_in_weights(self, layer):
        return [out_in_weight(layer.mlp.c_fc)]

    def keep_heads(self, layer, heads: Sequence[int], kv_heads: Sequence[int], arch: ArchSpec) -> None:
        attn = layer.attn
        width = attn.split_size  # current q (= k = v) width
        cols = head_columns(heads, attn.head_dim)
        slice_conv1d_out(attn.c_attn, [part * width + c for part in range(3) for c in cols])
        slice_conv1d_in(attn.c_proj, cols)
        attn.split_size = len(cols)
        attn.num_heads = len(heads)

    def remove_attention(self, layer, arch):
        layer.attn = RemovedBlock(layer.attn.c_proj.bias, returns_tuple=True)
        layer.ln_1 = nn.Identity()

    def keep_ffn(self, layer, neurons):
        slice_conv1d_out(layer.mlp.c_fc, neurons)
        slice_conv1d_in(layer.mlp.c_proj, neurons)

    def remove_ffn(self, layer, arch):
        layer.mlp = RemovedBlock(layer.mlp.c_proj.bias, returns_tuple=False)
        layer.ln_2 = nn.Identity()

    def set_cache_index(self, layer, index):
        # scaling by inverse layer index was fixed at construction from the original index: keep it
        layer.attn.layer_idx = index

    def set_num_layers(self, model, kept):
        super().set_num_layers(model, kept)
        model.config.n_layer = len(kept)


ADAPTER = GPT2Adapter()
