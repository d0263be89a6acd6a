"""Parameter and FLOP counts of a (pruned) model from its dense architecture and per-layer shape.

Pure arithmetic, no torch: ``inspect`` uses it for model directories and ONNX files alike.
FLOPs count multiply-adds as 2 and cover the matrix products (projections, attention scores and
weighted sums, LM head); norms, activations and softmax are left out.
"""

from __future__ import annotations

from dataclasses import dataclass

from .arch import ArchSpec
from .shape import LayerShape, ModelShape, ffn_linear_dims, ffn_roles


@dataclass(frozen=True)
class LayerCost:
    attn_params: int
    ffn_params: int
    flops: int


def layer_cost(arch: ArchSpec, layer: LayerShape, seq: int) -> LayerCost:
    if layer.dropped:
        return LayerCost(0, 0, 0)
    h, d = arch.hidden, arch.head_dim
    q, kv = layer.heads * d, layer.kv * d
    attn = 0
    flops = 0
    if layer.heads:
        attn = h * (q + 2 * kv) + q * h
        if arch.attention_bias:
            attn += q + 2 * kv
        attn += h  # output bias (BERT, GPT-2) or the pre-norm weight (Llama): one vector either way
        flops += 2 * seq * (h * (q + 2 * kv) + q * h) + 2 * 2 * seq * seq * q  # projections + QK^T + AV
    ffn = 0
    if layer.ffn:
        n_in = 2 if arch.gated_ffn else 1
        ranks = layer.rank_of
        matrices = 0
        for role in ffn_roles(arch):  # a factorised Linear costs r * (in + out) instead of in * out
            n_rows, n_cols = ffn_linear_dims(arch, role, layer.ffn)
            matrices += ranks[role] * (n_rows + n_cols) if role in ranks else n_rows * n_cols
        ffn = matrices
        if arch.ffn_bias:
            ffn += n_in * layer.ffn + h
        flops += 2 * seq * matrices
    return LayerCost(attn, ffn, flops)


def model_flops(arch: ArchSpec, shape: ModelShape, seq: int = 128) -> int:
    """FLOPs of one forward pass over ``seq`` tokens (batch 1)."""
    head = 2 * seq * arch.hidden * arch.vocab if arch.is_decoder else 0
    return sum(layer_cost(arch, s, seq).flops for s in shape.layers) + head


def block_params(arch: ArchSpec, shape: ModelShape) -> int:
    """Parameters in the transformer blocks (attention + FFN), embeddings and heads excluded."""
    return sum(c.attn_params + c.ffn_params for c in (layer_cost(arch, s, 1) for s in shape.layers))
