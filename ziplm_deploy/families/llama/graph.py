"""Llama in ONNX: RMSNorm as ``Pow, ReduceMean, Add, Sqrt, Reciprocal, Mul, Mul``; Q/K/V ``MatMul``, RoPE
(``Slice, Neg, Concat, Mul, Add``), GQA by ``Unsqueeze/Expand/Reshape`` of K and V, SwiGLU FFN. A removed
block is ``x + 0``. Whole model: token embeddings and RoPE cos/sin of ``position_ids`` in, final RMSNorm
and LM head out.
"""

from __future__ import annotations

from ...core.arch import ArchSpec
from ...profiling import onnx_ops as ops
from ...profiling.onnx_ops import BlockContext, GraphBuilder, Sizes
from ..base import GraphParts


def _context_inputs(b: GraphBuilder, arch: ArchSpec) -> BlockContext:
    mask = ops.causal_mask_input(b)
    return BlockContext(mask, b.add_input("cos", ["batch", "seq", arch.head_dim]),
                        b.add_input("sin", ["batch", "seq", arch.head_dim]))


def _embeddings(b: GraphBuilder, arch: ArchSpec, ids: str, hidden: str, pad: str,
                sizes: Sizes) -> tuple[str, BlockContext]:
    position_ids, ctx = ops.decoder_positions(b, ids, pad, sizes)
    ops.rotary_tables(b, arch, position_ids, ctx)
    return hidden, ctx


PARTS = GraphParts(
    context_inputs=_context_inputs, block_input=ops.pre_norm, block_output=ops.residual,
    removed_block=ops.removed_adds_zero, qkv=ops.separate_qkv, rotate=ops.rotary, dense=ops.linear,
    embeddings=_embeddings, head=ops.lm_head,
    # Qwen2's q/k/v carry biases (attention_bias) but its o_proj never does; Llama's and Mistral's follow the flag
    attention_out_bias=lambda arch: arch.attention_bias and arch.model_type != "qwen2",
)
