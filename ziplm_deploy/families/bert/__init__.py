"""BERT (encoder; BertModel, BertForSequenceClassification, ...): post-LayerNorm blocks, learned positions."""

from __future__ import annotations

from ...core.arch import ArchSpec
from ..base import ConfigFields, Family


def read_config(f: ConfigFields) -> ArchSpec:
    hidden, heads = f.size("hidden_size"), f.size("num_attention_heads")
    return ArchSpec(
        family="bert", model_type=f.text("model_type", "bert"), num_layers=f.size("num_hidden_layers"),
        hidden=hidden, heads=heads, kv_heads=heads, head_dim=f.head_dim(hidden, heads),
        ffn=f.size("intermediate_size"), vocab=f.size("vocab_size"), activation=f.text("hidden_act", "gelu"),
        norm="post-ln", gated_ffn=False, attention_bias=True, ffn_bias=True,
        norm_eps=f.positive("layer_norm_eps", 1e-12),
    )


FAMILY = Family(name="bert", label="BERT", model_types=("bert",), is_decoder=False, read_config=read_config,
                package=__name__, positions_key="max_position_embeddings")
