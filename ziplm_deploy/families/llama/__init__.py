"""Llama (causal LM with RoPE and GQA; Mistral and Qwen2 share the layout, Qwen2 adds q/k/v biases):
pre-RMSNorm blocks, SwiGLU FFN."""

from __future__ import annotations

from ...core import checks
from ...core.arch import ArchSpec
from ...core.errors import UserError
from ..base import ConfigFields, Family


def read_config(f: ConfigFields, family: str = "llama") -> ArchSpec:
    """The Llama layout's fields (also read by families that extend it, under their own ``family``)."""
    hidden, heads = f.size("hidden_size"), f.size("num_attention_heads")
    kv_heads = f.optional_size("num_key_value_heads") or heads
    if heads % kv_heads:
        raise UserError(f"{f.source}: {heads} attention heads do not split into {kv_heads} key/value heads",
                        "fix num_key_value_heads in config.json")
    model_type = f.text("model_type", "llama")
    rope = checks.mapping(f.c.get("rope_parameters") or {}, f.source, "rope_parameters")
    theta = rope.get("rope_theta", f.c.get("rope_theta"))
    return ArchSpec(
        family=family, model_type=model_type, num_layers=f.size("num_hidden_layers"),
        hidden=hidden, heads=heads, kv_heads=kv_heads, head_dim=f.head_dim(hidden, heads, exact=False),
        ffn=f.size("intermediate_size"), vocab=f.size("vocab_size"), activation=f.text("hidden_act", "silu"),
        norm="rms", gated_ffn=True, attention_bias=f.flag("attention_bias", model_type == "qwen2"),
        ffn_bias=f.flag("mlp_bias", False), norm_eps=f.positive("rms_norm_eps", 1e-6),
        rope_theta=10000.0 if theta is None else checks.number(theta, f.source, "rope_theta", lo=0, lo_open=True),
        tie_word_embeddings=f.flag("tie_word_embeddings", False),
    )


FAMILY = Family(name="llama", label="Llama", model_types=("llama", "mistral", "qwen2"), is_decoder=True,
                read_config=read_config, package=__name__,
                genai_types={"llama": "llama", "mistral": "mistral", "qwen2": "qwen2"})
