"""BERT in ONNX (post-LN): Q/K/V ``MatMul+Add`` → ``Reshape/Transpose`` → scaled ``MatMul`` → ``Add`` mask →
``Softmax`` → ``MatMul`` → output ``MatMul+Add`` → ``LayerNormalization(out + x)``; FFN ``MatMul+Add``, erf
GELU (``Div, Erf, Add, Mul, Mul``), ``MatMul+Add``, ``LayerNormalization(out + x)``. A removed block is
``LayerNormalization(x + bias)``. Whole model: token + position + token-type embeddings and their
LayerNorm in, ``last_hidden_state`` out; no decode mode.
"""

from __future__ import annotations

import numpy as np

from ...core.arch import ArchSpec
from ...profiling import onnx_ops as ops
from ...profiling.onnx_ops import BlockContext, GraphBuilder, Sizes
from ..base import GraphParts


def _context_inputs(b: GraphBuilder, arch: ArchSpec) -> BlockContext:
    return BlockContext(b.add_input("mask", ["batch", 1, 1, "total"]))


def _removed_block(b: GraphBuilder, arch: ArchSpec, x: str, p: str, proj: str) -> str:
    return ops.layer_norm(b, ops.removed_keeps_bias(b, arch, x, p, proj), f"{p}.ln", arch)


def _embeddings(b: GraphBuilder, arch: ArchSpec, ids: str, hidden: str, pad: str,
                sizes: Sizes) -> tuple[str, BlockContext]:
    e = arch.hidden
    # positions 0..S-1 per row, computed so that shape inference keeps (batch, seq): ORT's fusions
    # (SkipLayerNormalization) depend on it, as they do on the exporter's annotated shapes
    ones = b.op("Add", [b.op("Mul", [ids, b.const(np.int64(0))]), b.const(np.int64(1))])
    positions = b.op("Sub", [b.op("CumSum", [ones, b.const(np.int64(1))]), b.const(np.int64(1))])
    pos = b.op("Gather", [b.param("embed.positions", (sizes.max_positions, e)), positions], axis=0)
    hidden = b.op("Add", [b.op("Add", [hidden, pos]), b.param("embed.token_type", (e,))])
    return ops.layer_norm(b, hidden, "embed.ln", arch), BlockContext(pad)


def _head(b: GraphBuilder, arch: ArchSpec, hidden: str) -> None:
    b.add_output(hidden, "last_hidden_state", ["batch", "seq", arch.hidden])


PARTS = GraphParts(
    context_inputs=_context_inputs, block_input=ops.as_is, block_output=ops.post_ln_residual,
    removed_block=_removed_block, qkv=ops.separate_qkv, rotate=ops.no_rotation, dense=ops.linear,
    embeddings=_embeddings, head=_head,
)
