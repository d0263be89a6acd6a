"""Gemma 3, PyTorch side: Llama's module layout (``self_attn.q/k/v/o_proj``, ``mlp.gate/up/down_proj``) with
a norm before and after each sublayer; a removed sublayer takes both norms with it (the residual passes
through unchanged). The per-head ``q_norm``/``k_norm`` weights are shared by every head.

KV-cache slots are renumbered over the layers that keep attention (as for Llama), so the exported graph's
``past_key_values.N`` are compact. ``config.layer_types`` stays per decoder layer (it chooses each layer's
mask and RoPE); a transformers ``DynamicCache(config=...)`` types its slots from the same list, so when a
layer before a full-attention layer loses its attention, a PyTorch cache may window that layer after
``sliding_window`` tokens. The project's own PyTorch decoding passes a plain ``DynamicCache()`` (every slot
full, the window applied by the mask), which is exact at any length, as is the ONNX export.
"""

from __future__ import annotations

from torch import nn

from ...models.surgery import RemovedBlock
from ..llama.adapter import LlamaAdapter


class Gemma3Adapter(LlamaAdapter):
    family = "gemma3"

    def remove_attention(self, layer, arch):
        layer.self_attn = RemovedBlock(None, returns_tuple=True)
        layer.input_layernorm = nn.Identity()
        layer.post_attention_layernorm = nn.Identity()

    def remove_ffn(self, layer, arch):
        layer.mlp = RemovedBlock(None, returns_tuple=False)
        layer.pre_feedforward_layernorm = nn.Identity()
        layer.post_feedforward_layernorm = nn.Identity()


ADAPTER = Gemma3Adapter()
