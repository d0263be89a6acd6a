"""GPT-2 (causal LM): pre-LayerNorm blocks, fused ``c_attn`` Conv1D, learned positions."""

from __future__ import annotations

from ...core.arch import ArchSpec
from ..base import ConfigFields, Family


def read_config(f: ConfigFields) -> ArchSpec:
    hidden, heads = f.size("n_embd", 768), f.size("n_head", 12)
    return ArchSpec(
        family="gpt2", model_type="gpt2", num_layers=f.size("n_layer", 12), hidden=hidden,
        heads=heads, kv_heads=heads, head_dim=f.head_dim(hidden, heads), ffn=f.optional_size("n_inner") or 4 * hidden,
        vocab=f.size("vocab_size", 50257), activation=f.text("activation_function", "gelu_new"),
        norm="pre-ln", gated_ffn=False, attention_bias=True, ffn_bias=True,
        norm_eps=f.positive("layer_norm_epsilon", 1e-5), tie_word_embeddings=f.flag("tie_word_embeddings", True),
    )


FAMILY = Family(name="gpt2", label="GPT-2", model_types=("gpt2",), is_decoder=True, read_config=read_config,
                package=__name__, positions_key="n_positions", num_layers_key="n_layer",
                genai_types={"gpt2": "decoder"})  # GenAI 0.18's own "gpt2" type does not load this graph
