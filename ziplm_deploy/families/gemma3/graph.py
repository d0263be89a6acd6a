"""Gemma 3 in ONNX: Llama's parts with ``(1 + w)`` RMSNorms, a norm after each sublayer before the residual
add, per-head q/k norms, and the embeddings scaled by sqrt(hidden)."""

from __future__ import annotations

import math
from dataclasses import replace

from ...core.arch import ArchSpec
from ...profiling import onnx_ops as ops
from ...profiling.onnx_ops import BlockContext, GraphBuilder, Sizes
from ..base import GraphParts
from ..llama.graph import PARTS as LLAMA_PARTS
from ..qwen3.graph import head_rms_norm


def _pre_norm(b: GraphBuilder, arch: ArchSpec, x: str, p: str) -> str:
    return ops.rms_norm(b, x, f"{p}.norm", arch, offset=True)


def _post_norm_residual(b: GraphBuilder, arch: ArchSpec, x: str, out: str, p: str) -> str:
    """``x + RMSNorm(out)`` (``{p}.post_norm``)."""
    return b.op("Add", [x, ops.rms_norm(b, out, f"{p}.post_norm", arch, offset=True)])


def _qkv(b: GraphBuilder, arch: ArchSpec, h: str, p: str, heads: int, kv: int) -> tuple[str, str, str]:
    q, k, v = ops.separate_qkv(b, arch, h, p, heads, kv)
    return (head_rms_norm(b, q, f"{p}.q_norm", arch, heads, offset=True),
            head_rms_norm(b, k, f"{p}.k_norm", arch, kv, offset=True), v)


def _embeddings(b: GraphBuilder, arch: ArchSpec, ids: str, hidden: str, pad: str,
                sizes: Sizes) -> tuple[str, BlockContext]:
    hidden, ctx = LLAMA_PARTS.embeddings(b, arch, ids, hidden, pad, sizes)
    return b.op("Mul", [hidden, b.fconst(math.sqrt(arch.hidden))]), ctx


def _head(b: GraphBuilder, arch: ArchSpec, hidden: str) -> None:
    hidden = ops.rms_norm(b, hidden, "final_norm", arch, offset=True)
    logits = b.op("MatMul", [hidden, ops.lm_head_weight(b, arch)])
    b.add_output(logits, "logits", ["batch", "seq", arch.vocab])


PARTS: GraphParts = replace(LLAMA_PARTS, block_input=_pre_norm, block_output=_post_norm_residual, qkv=_qkv,
                            embeddings=_embeddings, head=_head, attention_out_bias=lambda arch: arch.attention_bias)
