"""GPT-2 in ONNX (pre-LN): ``LayerNormalization`` → fused QKV Conv1D (``Reshape`` to 2-D, ``Gemm``,
``Reshape``) → ``Split`` → attention → Conv1D → ``Add`` residual; FFN with tanh GELU. A removed block is
``x + bias``. Whole model: token + learned position embeddings in, final LayerNorm and LM head out.
"""

from __future__ import annotations

from ...core.arch import ArchSpec
from ...profiling import onnx_ops as ops
from ...profiling.onnx_ops import BlockContext, GraphBuilder, Sizes
from ..base import GraphParts


def _context_inputs(b: GraphBuilder, arch: ArchSpec) -> BlockContext:
    return BlockContext(ops.causal_mask_input(b))


def _qkv(b: GraphBuilder, arch: ArchSpec, h: str, p: str, heads: int, kv: int) -> tuple[str, str, str]:
    width = heads * arch.head_dim
    qkv = ops.addmm(b, h, f"{p}.qkv", arch.hidden, 3 * width)
    return tuple(b.op("Split", [qkv, b.ints([width] * 3)], n_out=3, axis=-1))


def _embeddings(b: GraphBuilder, arch: ArchSpec, ids: str, hidden: str, pad: str,
                sizes: Sizes) -> tuple[str, BlockContext]:
    position_ids, ctx = ops.decoder_positions(b, ids, pad, sizes)
    table = b.param("embed.positions", (sizes.max_positions, arch.hidden))
    return b.op("Add", [hidden, b.op("Gather", [table, position_ids], axis=0)]), ctx


PARTS = GraphParts(
    context_inputs=_context_inputs, block_input=ops.pre_norm, block_output=ops.residual,
    removed_block=ops.removed_keeps_bias, qkv=_qkv, rotate=ops.no_rotation, dense=ops.addmm,
    embeddings=_embeddings, head=ops.lm_head,
)
