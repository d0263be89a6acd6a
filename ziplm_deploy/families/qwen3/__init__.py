"""Qwen3 (causal LM): the Llama layout (RoPE, GQA, pre-RMSNorm, SwiGLU) plus an RMSNorm over each query and
key head (``q_norm``/``k_norm``, one ``head_dim`` weight shared by all heads) before RoPE; no q/k/v biases.
Removing a head keeps the shared norm weights; removing the attention removes them with it."""

from __future__ import annotations

from ...core.arch import ArchSpec
from ..base import ConfigFields, Family
from ..llama import read_config as read_llama_layout


def read_config(f: ConfigFields) -> ArchSpec:
    return read_llama_layout(f, family="qwen3")


FAMILY = Family(name="qwen3", label="Qwen3", model_types=("qwen3",), is_decoder=True, read_config=read_config,
                package=__name__, genai_types={"qwen3": "qwen3"})
