"""Qwen3, PyTorch side: Llama's module layout (``self_attn.q/k/v/o_proj``, ``mlp.gate/up/down_proj``); the
per-head ``q_norm``/``k_norm`` weights are shared by every head, so keeping heads leaves them as they are."""

from __future__ import annotations

from ..llama.adapter import LlamaAdapter


class Qwen3Adapter(LlamaAdapter):
    family = "qwen3"


ADAPTER = Qwen3Adapter()
