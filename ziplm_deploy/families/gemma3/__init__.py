"""Gemma 3 text models (``gemma3_text``, e.g. Gemma-3-270m): the Llama layout (RoPE, GQA, q/k/v/o, gated
FFN) with Gemma's differences: every RMSNorm scales by ``1 + weight``; each sublayer is normalised before
*and after* (``post_attention_layernorm``, ``post_feedforward_layernorm``, before the residual add); q/k
RMSNorms over each head; scores scaled by ``query_pre_attn_scalar**-0.5``; GELU-tanh gate; embeddings
multiplied by sqrt(hidden); sliding-window attention on most layers (``layer_types``) with its own RoPE
base. The sliding window changes which positions a layer sees, not what a block costs at a given length:
the tables time every layer as full attention over the same keys (what the exported graph computes)."""

from __future__ import annotations

from ...core import checks
from ...core.arch import ArchSpec
from ...core.errors import UserError
from ..base import ConfigFields, Family


def read_config(f: ConfigFields) -> ArchSpec:
    hidden, heads = f.size("hidden_size"), f.size("num_attention_heads")
    kv_heads = f.size("num_key_value_heads", 1)
    if heads % kv_heads:
        raise UserError(f"{f.source}: {heads} attention heads do not split into {kv_heads} key/value heads",
                        "fix num_key_value_heads in config.json")
    for key in ("final_logit_softcapping", "attn_logit_softcapping"):
        if f.c.get(key) is not None:  # Gemma 2's; Gemma 3 has none
            raise UserError(f"{f.source}: {key}={f.c[key]!r} is not supported (Gemma 3 models have none)",
                            "use a Gemma 3 text model")
    if f.flag("attention_bias", False):  # no Gemma 3 checkpoint has one; a removed block would keep norm(bias)
        raise UserError(f"{f.source}: Gemma 3 with attention_bias=true is not supported", "use a Gemma 3 text model")
    if f.flag("use_bidirectional_attention", False):
        raise UserError(f"{f.source}: bidirectional Gemma 3 (an embedding model) is not supported",
                        "use a causal Gemma 3 text model")
    rope = checks.mapping(f.c.get("rope_parameters") or {}, f.source, "rope_parameters")
    local = rope.get("sliding_attention") or {}
    theta = (local.get("rope_theta") if isinstance(local, dict) else None) or f.c.get("rope_local_base_freq")
    return ArchSpec(
        family="gemma3", model_type=f.text("model_type", "gemma3_text"), num_layers=f.size("num_hidden_layers"),
        hidden=hidden, heads=heads, kv_heads=kv_heads, head_dim=f.head_dim(hidden, heads, exact=False),
        ffn=f.size("intermediate_size"), vocab=f.size("vocab_size"),
        activation=f.text("hidden_activation", "gelu_pytorch_tanh"), norm="rms", gated_ffn=True,
        attention_bias=False, ffn_bias=False, norm_eps=f.positive("rms_norm_eps", 1e-6),
        rope_theta=10000.0 if theta is None else checks.number(theta, f.source, "rope_theta", lo=0, lo_open=True),
        tie_word_embeddings=f.flag("tie_word_embeddings", True),
        query_scale=f.positive("query_pre_attn_scalar", 256.0),
    )


FAMILY = Family(name="gemma3", label="Gemma 3", model_types=("gemma3_text",), is_decoder=True,
                read_config=read_config, package=__name__, genai_types={"gemma3_text": "gemma3_text"})
