"""Block graphs and whole models built directly with ``onnx.helper`` (no torch).

The operators, normalisation placement and residuals follow what ``torch.onnx.export(dynamo=True)``
emits for transformers 5.23 models (opset 18). What differs between families (embeddings, attention
projections, norm placement, what a removed block leaves, positions, outputs) is asked of the family's
graph parts (``families/<name>/graph.py``); the generic operators are in ``onnx_ops``. This module is the
family-agnostic glue.

An attention sublayer: input (pre-norm or as is) → Q/K/V → ``Reshape/Transpose`` → positions (RoPE) →
KV cache ``Concat`` (decode) → GQA ``Unsqueeze/Expand/Reshape`` of K and V → scaled ``MatMul`` → ``Add``
mask → ``Softmax`` → ``MatMul`` → output projection → residual (and post-LN). An FFN sublayer: up (and
gate, SwiGLU) → activation → down → residual. Decode blocks take one token plus the layer's KV cache
(``past_key``/``past_value``: batch, kv_heads, past, head_dim) and return the grown cache.
Weights are random (or given by name, for tests); timing does not depend on their values.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import onnx

from ..core.arch import ArchSpec
from ..core.errors import UserError
from ..core.shape import LINEAR_KINDS, ModelShape, kind_dims
from ..families import Family, family_for
from .onnx_ops import (DTYPES, IR_VERSION, OPSET, BlockContext, GraphBuilder, Sizes, activation, linear,
                       lm_head_weight, merge_heads, repeat_kv, sdpa, split_heads)

__all__ = ["DTYPES", "IR_VERSION", "OPSET", "BlockContext", "GraphBuilder", "Sizes", "attention_block",
           "block_graph", "ffn_block", "head_graph", "linear_graph", "model_graph"]


def _ffn_linear(b: GraphBuilder, arch: ArchSpec, x: str, key: str, din: int, dout: int, rank: int | None) -> str:
    """An FFN Linear: dense, or (FLOP) factorised to ``rank`` as two MatMuls, as the exporter writes
    ``LowRankLinear`` (``first`` without bias, ``second`` with the Linear's bias)."""
    if rank is None:
        return family_for(arch).graph().dense(b, x, key, din, dout, arch.ffn_bias)
    return linear(b, linear(b, x, f"{key}.first", din, rank, False), f"{key}.second", rank, dout, arch.ffn_bias)


def attention_block(b: GraphBuilder, arch: ArchSpec, layer: int, x: str, heads: int, kv: int, ctx: BlockContext,
                    past: tuple[str, str] | None = None) -> tuple[str, tuple[str, str] | None]:
    """One attention sublayer with ``heads`` query heads (``kv`` KV heads); returns (y, present k/v)."""
    parts = family_for(arch).graph()
    p, d, e = f"layers.{layer}.attn", arch.head_dim, arch.hidden
    if arch.kv_heads == arch.heads:  # no GQA: one KV head per query head
        kv = heads
    if heads == 0:  # what the exporter leaves of a removed attention block
        return parts.removed_block(b, arch, x, p, "o"), None
    q, k, v = parts.qkv(b, arch, parts.block_input(b, arch, x, p), p, heads, kv)
    q, k, v = split_heads(b, q, heads, d), split_heads(b, k, kv, d), split_heads(b, v, kv, d)
    q, k = parts.rotate(b, arch, q, k, ctx)
    present = None
    if past is not None:
        k = b.op("Concat", [past[0], k], axis=2)
        v = b.op("Concat", [past[1], v], axis=2)
        present = (k, v)
    ctx_heads = sdpa(b, q, repeat_kv(b, k, heads, kv, d), repeat_kv(b, v, heads, kv, d), ctx.mask, arch.query_scale or d)
    out = parts.dense(b, merge_heads(b, ctx_heads, heads, d), f"{p}.o", heads * d, e, parts.attention_out_bias(arch))
    return parts.block_output(b, arch, x, out, p), present


def ffn_block(b: GraphBuilder, arch: ArchSpec, layer: int, x: str, width: int,
              ranks: Mapping[str, int] | None = None) -> str:
    """One FFN sublayer with ``width`` intermediate neurons; ``ranks``: FLOP-factorised Linears by role."""
    parts = family_for(arch).graph()
    ranks = ranks or {}
    p, e = f"layers.{layer}.ffn", arch.hidden
    if width == 0:
        return parts.removed_block(b, arch, x, p, "down")
    h = parts.block_input(b, arch, x, p)
    if arch.gated_ffn:
        gate = activation(b, _ffn_linear(b, arch, h, f"{p}.gate", e, width, ranks.get("gate")), arch.activation)
        act = b.op("Mul", [gate, _ffn_linear(b, arch, h, f"{p}.up", e, width, ranks.get("up"))])
    else:
        act = activation(b, _ffn_linear(b, arch, h, f"{p}.up", e, width, ranks.get("up")), arch.activation)
    out = _ffn_linear(b, arch, act, f"{p}.down", width, e, ranks.get("down"))
    return parts.block_output(b, arch, x, out, p)


# --- graphs -----------------------------------------------------------------------------------------
def _family_with_sizes(arch: ArchSpec, sizes: Sizes) -> Family:
    family = family_for(arch)
    if sizes.decode and not family.is_decoder:
        raise UserError(f"{family.label} has no decode mode", f"profile {family.label} models with prefill sizes")
    return family


def block_graph(arch: ArchSpec, kind: str, width: int, sizes: Sizes, kv_heads: int | None = None,
                dtype: str = "float32", seed: int = 0, weights: Mapping[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """A graph of one block: ``kind`` "attention" (``width`` heads) or "ffn" (``width`` neurons).

    Inputs: ``hidden`` (batch, seq, hidden), and as the block needs them ``mask`` (additive), ``cos``/``sin``
    (rotary positions) and ``past_key``/``past_value`` (decode). Outputs: ``out`` (and
    ``present_key``/``present_value``). Weight names are ``layers.0.attn.*`` / ``layers.0.ffn.*``.
    """
    family = _family_with_sizes(arch, sizes)
    b = GraphBuilder(dtype, seed, weights)
    x = b.add_input("hidden", ["batch", "seq", arch.hidden])
    if kind == "attention":
        kv = width if kv_heads is None or arch.kv_heads == arch.heads else kv_heads
        ctx = family.graph().context_inputs(b, arch)
        past = None
        if sizes.decode and width > 0:
            dims = ["batch", kv, "past", arch.head_dim]
            past = (b.add_input("past_key", dims), b.add_input("past_value", dims))
        y, present = attention_block(b, arch, 0, x, width, kv, ctx, past)
        if present is not None:
            b.add_output(present[0], "present_key", ["batch", kv, "total", arch.head_dim])
            b.add_output(present[1], "present_value", ["batch", kv, "total", arch.head_dim])
    elif kind == "ffn":
        y = ffn_block(b, arch, 0, x, width)
    else:
        raise UserError(f"unknown block kind {kind!r}", "attention or ffn")
    b.add_output(y, "out", ["batch", "seq", arch.hidden])
    return b.model(f"{arch.family}_{kind}_{width}")


def linear_graph(arch: ArchSpec, kind: str, rank: int | None, sizes: Sizes, dtype: str = "float32",
                 seed: int = 0) -> onnx.ModelProto:
    """One dense-width FFN Linear of ``kind`` ("in": hidden -> ffn, "out": ffn -> hidden), dense
    (``rank`` None) or factorised to ``rank``: input ``x`` (batch, seq, in), output ``y``."""
    if kind not in LINEAR_KINDS:
        raise UserError(f"unknown FFN Linear kind {kind!r}", "in or out")
    din, dout = kind_dims(arch, kind)
    b = GraphBuilder(dtype, seed)
    x = b.add_input("x", ["batch", "seq", din])
    key = "ffn.down" if kind == "out" else "ffn.up"  # names the role, as in the blocks (``int8-dynamic/fp32-down``)
    b.add_output(_ffn_linear(b, arch, x, key, din, dout, rank), "y", ["batch", "seq", dout])
    return b.model(f"{arch.family}_linear_{kind}_{rank or 'dense'}")


def head_graph(arch: ArchSpec, rows: int | None, sizes: Sizes, dtype: str = "float32", seed: int = 0) -> onnx.ModelProto:
    """A causal LM's head on final-normed hidden states: input ``x`` (batch, seq, hidden), output ``logits``
    (batch, seq, vocab). ``rows`` None: the dense head as the exporter writes the model's (tied: a Transpose
    of the embedding table). ``rows`` K: a head trimmed to K output tokens as ``TrimmedHead`` exports it:
    MatMul by a (hidden, K) weight, ReduceMax, Sub (the fill column), Concat, and a Gather with a constant
    index back to vocabulary positions (kept tokens spread evenly: the cost does not depend on which)."""
    if not arch.is_decoder:
        raise UserError(f"{family_for(arch).label} has no LM head", "trimmed heads apply to causal LMs")
    b = GraphBuilder(dtype, seed)
    x = b.add_input("x", ["batch", "seq", arch.hidden])
    if sizes.logits == "last":
        x = last_position(b, x)
    if rows is None:
        if arch.tie_word_embeddings:
            b.param("embed.tokens", (arch.vocab, arch.hidden))
        logits = b.op("MatMul", [x, lm_head_weight(b, arch)])
    else:
        if not 1 <= rows < arch.vocab:
            raise UserError(f"a trimmed LM head keeps 1..{arch.vocab - 1} output tokens, not {rows}")
        kept = b.op("MatMul", [x, b.param("lm_head.weight", (arch.hidden, rows))])
        fill = b.op("Sub", [b.op("ReduceMax", [kept, b.ints([-1])], keepdims=1), b.fconst(128.0)])
        index = np.full(arch.vocab, rows, dtype=np.int64)
        index[np.linspace(0, arch.vocab - 1, rows).astype(np.int64)] = np.arange(rows)
        logits = b.op("Gather", [b.op("Concat", [kept, fill], axis=-1), b.const(index, "vocab_index")], axis=-1)
    b.add_output(logits, "logits", ["batch", _logit_rows(sizes), arch.vocab])
    return b.model(f"{arch.family}_head_{rows or 'dense'}")


def last_position(b: GraphBuilder, x: str) -> str:
    """``x[:, -1:, :]``: what a generation graph gives its LM head (transformers' ``logits_to_keep=1``)."""
    return b.op("Slice", [x, b.ints([-1]), b.ints([2**62]), b.ints([1])])


def _logit_rows(sizes: Sizes) -> int | str:
    return 1 if sizes.logits == "last" else "seq"


def model_graph(arch: ArchSpec, shape: ModelShape, sizes: Sizes, dtype: str = "float32", seed: int = 0) -> onnx.ModelProto:
    """The whole model pruned to ``shape``, built from the same blocks, with the exporter's inputs/outputs.

    Encoders (BERT): ``input_ids, attention_mask -> last_hidden_state``. Decoders: ``input_ids,
    attention_mask, position_ids -> logits``; decode adds ``past_key_values.{i}.key/.value`` for each layer
    that still has attention (compact index i) and returns ``present.{i}.key/.value``. Prefill with
    ``sizes.logits`` "last" computes the last position's logits only (batch, 1, vocab), as generation graphs do.
    """
    parts = _family_with_sizes(arch, sizes).graph()
    if sizes.logits == "last" and not arch.is_decoder:
        raise UserError(f"a {arch.family} model has no LM head: its graph has no last-position logits",
                        "use logits 'all' for encoders")
    shape = shape.validate(arch)
    b = GraphBuilder(dtype, seed)
    ids = b.add_input("input_ids", ["batch", "seq"], onnx.TensorProto.INT64)
    attn_mask = b.add_input("attention_mask", ["batch", "total"], onnx.TensorProto.INT64)
    pad = b.op("Mul", [b.op("Sub", [b.fconst(1.0), b.op("Cast", [attn_mask], to=b.elem)]), b.fconst(b.mask_fill)])
    pad = b.op("Unsqueeze", [pad, b.ints([1, 2])])  # (B, 1, 1, T)
    hidden = b.op("Gather", [b.param("embed.tokens", (arch.vocab, arch.hidden)), ids], axis=0)
    hidden, ctx = parts.embeddings(b, arch, ids, hidden, pad, sizes)
    hidden = _layers(b, arch, shape, sizes, hidden, ctx)
    if sizes.logits == "last":  # generation: the LM head on the last position only (transformers slices after the
        # final norm, this graph before it: one normed row instead of P, a negligible difference)
        hidden = last_position(b, hidden)
        parts.head(b, arch, hidden)
        b.outputs = [onnx.helper.make_tensor_value_info(o.name, b.elem, ["batch", 1, arch.vocab])
                     if o.name == "logits" else o for o in b.outputs]
    else:
        parts.head(b, arch, hidden)
    # outputs in the exporter's order: logits first
    b.outputs.sort(key=lambda o: (not o.name.startswith(("logits", "last_hidden")), 0))
    return b.model(f"{arch.family}_model")


def _layers(b: GraphBuilder, arch: ArchSpec, shape: ModelShape, sizes: Sizes, hidden: str, ctx: BlockContext) -> str:
    """The kept layers of ``shape`` in order; with decode, each attention layer's cache in and out."""
    d, slot = arch.head_dim, 0
    for i, layer in enumerate(shape.layers):
        if layer.dropped:
            continue
        past = None
        if sizes.decode and layer.heads > 0:
            dims = ["batch", layer.kv, "past", d]
            past = (b.add_input(f"past_key_values.{slot}.key", dims),
                    b.add_input(f"past_key_values.{slot}.value", dims))
        hidden, present = attention_block(b, arch, i, hidden, layer.heads, layer.kv, ctx, past)
        if present is not None:
            b.add_output(present[0], f"present.{slot}.key", ["batch", layer.kv, "total", d])
            b.add_output(present[1], f"present.{slot}.value", ["batch", layer.kv, "total", d])
        if layer.heads > 0:
            slot += 1
        hidden = ffn_block(b, arch, i, hidden, layer.ffn, layer.rank_of)
    return hidden
