"""Qwen3 in ONNX: Llama's parts, with the per-head RMSNorm of queries and keys in the Q/K projections
(``Reshape`` to heads, RMSNorm over ``head_dim`` as the exporter writes it, ``Reshape`` back)."""

from __future__ import annotations

from dataclasses import replace

from ...core.arch import ArchSpec
from ...profiling import onnx_ops as ops
from ...profiling.onnx_ops import GraphBuilder
from ..base import GraphParts
from ..llama.graph import PARTS as LLAMA_PARTS


def head_rms_norm(b: GraphBuilder, x: str, key: str, arch: ArchSpec, n: int, offset: bool = False) -> str:
    """RMSNorm over each head of ``x`` (B, S, n*d) with the ``head_dim`` weight ``{key}.weight`` (``offset``: a
    scale of 1 + weight, Gemma's)."""
    d = arch.head_dim
    normed = ops.rms_norm(b, b.op("Reshape", [x, b.ints([0, 0, n, d])]), key, arch, width=d, offset=offset)
    return b.op("Reshape", [normed, b.ints([0, 0, n * d])])


def _qkv(b: GraphBuilder, arch: ArchSpec, h: str, p: str, heads: int, kv: int) -> tuple[str, str, str]:
    q, k, v = ops.separate_qkv(b, arch, h, p, heads, kv)
    return head_rms_norm(b, q, f"{p}.q_norm", arch, heads), head_rms_norm(b, k, f"{p}.k_norm", arch, kv), v


PARTS: GraphParts = replace(LLAMA_PARTS, qkv=_qkv, attention_out_bias=lambda arch: arch.attention_bias)
