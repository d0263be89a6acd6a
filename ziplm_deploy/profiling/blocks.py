"""Block graphs and whole models built directly with ``onnx.helper`` (no torch).

The operators, normalisation placement and residuals follow what ``torch.onnx.export(dynamo=True)``
emits for transformers 5.23 models (opset 18):

- BERT (post-LN): Q/K/V ``MatMul+Add`` → ``Reshape/Transpose`` → scaled ``MatMul`` → ``Add`` mask →
  ``Softmax`` → ``MatMul`` → output ``MatMul+Add`` → ``LayerNormalization(out + x)``; FFN ``MatMul+Add``,
  erf GELU (``Div, Erf, Add, Mul, Mul``), ``MatMul+Add``, ``LayerNormalization(out + x)``.
- GPT-2 (pre-LN): ``LayerNormalization`` → fused QKV Conv1D (``Reshape`` to 2-D, ``Gemm``, ``Reshape``) → ``Split`` → attention → ``MatMul+Add``
  → ``Add`` residual; FFN with tanh GELU.
- Llama (RMSNorm as ``Pow, ReduceMean, Add, Sqrt, Reciprocal, Mul, Mul``): Q/K/V ``MatMul``, RoPE
  (``Slice, Neg, Concat, Mul, Add``), GQA by ``Unsqueeze/Expand/Reshape`` of K and V, SwiGLU FFN.

A block removed by pruning is what the exporter leaves of it: BERT ``LayerNormalization(x + bias)``,
GPT-2 ``x + bias``, Llama ``x + 0``. Decode blocks take one token plus the layer's KV cache
(``past_key``/``past_value``: batch, kv_heads, past, head_dim) and return the grown cache.
Weights are random (or given by name, for tests); timing does not depend on their values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..core.arch import ArchSpec
from ..core.errors import UserError
from ..core.shape import LINEAR_KINDS, ModelShape, kind_dims

OPSET = 18
IR_VERSION = 9  # what onnxruntime >= 1.16 reads
DTYPES = {"float32": np.float32, "float16": np.float16}


@dataclass(frozen=True)
class Sizes:
    """Input sizes: prefill (``batch`` x ``seq``) or decode (one token, KV cache of ``kv_len``)."""

    batch: int = 1
    seq: int = 128
    mode: str = "prefill"  # "prefill" | "decode"
    kv_len: int = 0

    def __post_init__(self) -> None:
        if self.mode not in ("prefill", "decode"):
            raise UserError(f"unknown mode {self.mode!r}", "prefill or decode")
        if self.batch < 1 or self.seq < 1 or self.kv_len < 0:
            raise UserError(f"sizes must be positive: batch={self.batch} seq={self.seq} kv_len={self.kv_len}")
        if self.mode == "decode" and self.kv_len < 1:
            raise UserError("decode needs a KV-cache length >= 1", "pass --decode-kv-len L")

    @property
    def decode(self) -> bool:
        return self.mode == "decode"

    @property
    def q_len(self) -> int:
        return 1 if self.decode else self.seq

    @property
    def dims(self) -> dict[str, int]:
        """Values of the symbolic dimensions used by the graphs built here."""
        past = self.kv_len if self.decode else 0
        return {"batch": self.batch, "seq": self.q_len, "past": past, "total": past + self.q_len}


class GraphBuilder:
    """Accumulates nodes and initializers; names are unique; weights random unless given by key."""

    def __init__(self, dtype: str = "float32", seed: int = 0, weights: Mapping[str, np.ndarray] | None = None):
        if dtype not in DTYPES:
            raise UserError(f"unsupported dtype {dtype!r}", f"choose one of {', '.join(DTYPES)}")
        self.dtype = dtype
        self.np_dtype = DTYPES[dtype]
        self.elem = helper.np_dtype_to_tensor_dtype(np.dtype(self.np_dtype))
        self.rng = np.random.default_rng(seed)
        self.weights = dict(weights or {})
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._count = 0

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, value: Any, hint: str = "const") -> str:
        name = self.fresh(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def fconst(self, value: Any, hint: str = "const") -> str:
        return self.const(np.asarray(value, dtype=self.np_dtype), hint)

    def ints(self, values: list[int]) -> str:
        return self.const(np.asarray(values, dtype=np.int64), "shape")

    def param(self, key: str, shape: tuple[int, ...], init: str = "normal") -> str:
        if key in self.weights:
            arr = np.asarray(self.weights[key])
            if arr.shape != shape:
                raise UserError(f"weight {key} has shape {arr.shape}, block expects {shape}")
        elif init == "ones":
            arr = np.ones(shape)
        elif init == "zeros":
            arr = np.zeros(shape)
        else:
            arr = self.rng.standard_normal(shape, dtype=np.float32) * 0.02
        self.inits.append(numpy_helper.from_array(arr.astype(self.np_dtype, copy=False), key))
        return key

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs: Any) -> Any:
        outs = [self.fresh(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, **attrs))
        return outs[0] if n_out == 1 else outs

    def add_input(self, name: str, dims: list[int | str], elem: int | None = None) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, self.elem if elem is None else elem, dims))
        return name

    def add_output(self, value: str, name: str, dims: list[int | str]) -> None:
        self.nodes.append(helper.make_node("Identity", [value], [name]))
        self.outputs.append(helper.make_tensor_value_info(name, self.elem, dims))

    def model(self, name: str) -> onnx.ModelProto:
        used = {i for n in self.nodes for i in n.input}
        inputs = [i for i in self.inputs if i.name in used]  # a removed block ignores mask, cache, RoPE
        graph = helper.make_graph(self.nodes, name, inputs, self.outputs, initializer=self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="ziplm-deploy")
        model.ir_version = IR_VERSION
        return model


# --- building blocks -------------------------------------------------------------------------------
def _linear(b: GraphBuilder, x: str, key: str, din: int, dout: int, bias: bool) -> str:
    y = b.op("MatMul", [x, b.param(f"{key}.weight", (din, dout))])
    return b.op("Add", [y, b.param(f"{key}.bias", (dout,))]) if bias else y


def _addmm(b: GraphBuilder, x: str, key: str, din: int, dout: int) -> str:
    """GPT-2's Conv1D as the exporter writes it: flatten to 2-D, ``Gemm`` with bias, reshape back."""
    lead = b.op("Slice", [b.op("Shape", [x]), b.ints([0]), b.ints([2]), b.ints([0])])
    y = b.op("Gemm", [b.op("Reshape", [x, b.ints([-1, din])]), b.param(f"{key}.weight", (din, dout)),
                      b.param(f"{key}.bias", (dout,))])
    return b.op("Reshape", [y, b.op("Concat", [lead, b.ints([dout])], axis=0)])


def _dense(b: GraphBuilder, arch: ArchSpec, x: str, key: str, din: int, dout: int, bias: bool) -> str:
    return _addmm(b, x, key, din, dout) if arch.family == "gpt2" else _linear(b, x, key, din, dout, bias)


def _ffn_linear(b: GraphBuilder, arch: ArchSpec, x: str, key: str, din: int, dout: int, rank: int | None) -> str:
    """An FFN Linear: dense, or (FLOP) factorised to ``rank`` as two MatMuls, as the exporter writes
    ``LowRankLinear`` (``first`` without bias, ``second`` with the Linear's bias)."""
    if rank is None:
        return _dense(b, arch, x, key, din, dout, arch.ffn_bias)
    return _linear(b, _linear(b, x, f"{key}.first", din, rank, False), f"{key}.second", rank, dout, arch.ffn_bias)


def _layer_norm(b: GraphBuilder, x: str, key: str, arch: ArchSpec) -> str:
    e = arch.hidden
    return b.op("LayerNormalization", [x, b.param(f"{key}.weight", (e,), "ones"), b.param(f"{key}.bias", (e,), "zeros")],
                axis=-1, epsilon=arch.norm_eps)


def _rms_norm(b: GraphBuilder, x: str, key: str, arch: ArchSpec) -> str:
    var = b.op("ReduceMean", [b.op("Pow", [x, b.fconst(2.0)]), b.ints([-1])], keepdims=1)
    inv = b.op("Reciprocal", [b.op("Sqrt", [b.op("Add", [var, b.fconst(arch.norm_eps)])])])
    return b.op("Mul", [b.param(f"{key}.weight", (arch.hidden,), "ones"), b.op("Mul", [x, inv])])


def _norm(b: GraphBuilder, x: str, key: str, arch: ArchSpec) -> str:
    return _rms_norm(b, x, key, arch) if arch.norm == "rms" else _layer_norm(b, x, key, arch)


def _activation(b: GraphBuilder, x: str, name: str) -> str:
    if name in ("gelu", "gelu_python"):  # erf GELU as the dynamo exporter writes it
        erf = b.op("Erf", [b.op("Div", [x, b.fconst(math.sqrt(2.0))])])
        return b.op("Mul", [b.op("Mul", [x, b.op("Add", [erf, b.fconst(1.0)])]), b.fconst(0.5)])
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        cube = b.op("Mul", [b.op("Pow", [x, b.fconst(3.0)]), b.fconst(0.044715)])
        inner = b.op("Mul", [b.op("Add", [x, cube]), b.fconst(math.sqrt(2.0 / math.pi))])
        half = b.op("Mul", [x, b.fconst(0.5)])
        return b.op("Mul", [half, b.op("Add", [b.op("Tanh", [inner]), b.fconst(1.0)])])
    if name in ("silu", "swish"):
        return b.op("Mul", [x, b.op("Sigmoid", [x])])
    if name == "relu":
        return b.op("Relu", [x])
    raise UserError(f"activation {name!r} is not supported by the block graphs", "gelu, gelu_new, silu, relu")


def _split_heads(b: GraphBuilder, x: str, n: int, d: int) -> str:
    """(B, S, n*d) -> (B, n, S, d)"""
    return b.op("Transpose", [b.op("Reshape", [x, b.ints([0, 0, n, d])])], perm=[0, 2, 1, 3])


def _merge_heads(b: GraphBuilder, x: str, n: int, d: int) -> str:
    return b.op("Reshape", [b.op("Transpose", [x], perm=[0, 2, 1, 3]), b.ints([0, 0, n * d])])


def _rope(b: GraphBuilder, x: str, cos: str, sin: str, d: int) -> str:
    half = d // 2
    x1 = b.op("Slice", [x, b.ints([0]), b.ints([half]), b.ints([-1])])
    x2 = b.op("Slice", [x, b.ints([half]), b.ints([d]), b.ints([-1])])
    rotated = b.op("Concat", [b.op("Neg", [x2]), x1], axis=-1)
    return b.op("Add", [b.op("Mul", [x, cos]), b.op("Mul", [rotated, sin])])


def _repeat_kv(b: GraphBuilder, x: str, heads: int, kv: int, d: int) -> str:
    if heads == kv:
        return x
    expanded = b.op("Expand", [b.op("Unsqueeze", [x, b.ints([2])]), b.ints([1, 1, heads // kv, 1, 1])])
    return b.op("Reshape", [expanded, b.ints([0, heads, -1, d])])


def _sdpa(b: GraphBuilder, q: str, k: str, v: str, mask: str, d: int) -> str:
    s = b.fconst(1.0 / math.sqrt(math.sqrt(d)))  # the exporter splits the scale over q and k
    kt = b.op("Transpose", [k], perm=[0, 1, 3, 2])
    scores = b.op("MatMul", [b.op("Mul", [q, s]), b.op("Mul", [kt, s])])
    probs = b.op("Softmax", [b.op("Add", [scores, mask])], axis=-1)
    probs = b.op("Where", [b.op("IsNaN", [probs]), b.fconst(0.0), probs])  # the exporter's fully-masked-row guard
    return b.op("MatMul", [probs, v])


@dataclass
class BlockContext:
    """Shared tensors a block reads: the additive mask and, for Llama, RoPE cos/sin of shape (B, S, d)."""

    mask: str
    cos: str | None = None
    sin: str | None = None


def attention_block(b: GraphBuilder, arch: ArchSpec, layer: int, x: str, heads: int, kv: int, ctx: BlockContext,
                    past: tuple[str, str] | None = None) -> tuple[str, tuple[str, str] | None]:
    """One attention sublayer with ``heads`` query heads (``kv`` KV heads); returns (y, present k/v)."""
    p, d, e = f"layers.{layer}.attn", arch.head_dim, arch.hidden
    if arch.kv_heads == arch.heads:  # no GQA: one KV head per query head
        kv = heads
    if heads == 0:  # what the exporter leaves of a removed attention block
        if arch.family == "bert":
            return _layer_norm(b, b.op("Add", [x, b.param(f"{p}.o.bias", (e,))]), f"{p}.ln", arch), None
        if arch.family == "gpt2":
            return b.op("Add", [x, b.param(f"{p}.o.bias", (e,))]), None
        return b.op("Add", [x, b.fconst(np.zeros(e))]), None
    h = x if arch.family == "bert" else _norm(b, x, f"{p}.norm", arch)
    if arch.family == "gpt2":
        qkv = _addmm(b, h, f"{p}.qkv", e, 3 * heads * d)
        q, k, v = b.op("Split", [qkv, b.ints([heads * d] * 3)], n_out=3, axis=-1)
    else:
        bias = arch.attention_bias
        q = _linear(b, h, f"{p}.q", e, heads * d, bias)
        k = _linear(b, h, f"{p}.k", e, kv * d, bias)
        v = _linear(b, h, f"{p}.v", e, kv * d, bias)
    q, k, v = _split_heads(b, q, heads, d), _split_heads(b, k, kv, d), _split_heads(b, v, kv, d)
    if arch.family == "llama":
        cos = b.op("Unsqueeze", [ctx.cos, b.ints([1])])
        sin = b.op("Unsqueeze", [ctx.sin, b.ints([1])])
        q, k = _rope(b, q, cos, sin, d), _rope(b, k, cos, sin, d)
    present = None
    if past is not None:
        k = b.op("Concat", [past[0], k], axis=2)
        v = b.op("Concat", [past[1], v], axis=2)
        present = (k, v)
    ctx_heads = _sdpa(b, q, _repeat_kv(b, k, heads, kv, d), _repeat_kv(b, v, heads, kv, d), ctx.mask, d)
    out = _dense(b, arch, _merge_heads(b, ctx_heads, heads, d), f"{p}.o", heads * d, e,
                 arch.family != "llama" or arch.attention_bias)
    if arch.family == "bert":
        return _layer_norm(b, b.op("Add", [out, x]), f"{p}.ln", arch), present
    return b.op("Add", [x, out]), present


def ffn_block(b: GraphBuilder, arch: ArchSpec, layer: int, x: str, width: int,
              ranks: Mapping[str, int] | None = None) -> str:
    """One FFN sublayer with ``width`` intermediate neurons; ``ranks``: FLOP-factorised Linears by role."""
    ranks = ranks or {}
    p, e = f"layers.{layer}.ffn", arch.hidden
    if width == 0:
        if arch.family == "bert":
            return _layer_norm(b, b.op("Add", [x, b.param(f"{p}.down.bias", (e,))]), f"{p}.ln", arch)
        if arch.family == "gpt2":
            return b.op("Add", [x, b.param(f"{p}.down.bias", (e,))])
        return b.op("Add", [x, b.fconst(np.zeros(e))])
    h = x if arch.family == "bert" else _norm(b, x, f"{p}.norm", arch)
    if arch.gated_ffn:
        gate = _activation(b, _ffn_linear(b, arch, h, f"{p}.gate", e, width, ranks.get("gate")), arch.activation)
        act = b.op("Mul", [gate, _ffn_linear(b, arch, h, f"{p}.up", e, width, ranks.get("up"))])
    else:
        act = _activation(b, _ffn_linear(b, arch, h, f"{p}.up", e, width, ranks.get("up")), arch.activation)
    out = _ffn_linear(b, arch, act, f"{p}.down", width, e, ranks.get("down"))
    if arch.family == "bert":
        return _layer_norm(b, b.op("Add", [out, x]), f"{p}.ln", arch)
    return b.op("Add", [x, out])


# --- graphs -----------------------------------------------------------------------------------------
def _block_context_inputs(b: GraphBuilder, arch: ArchSpec) -> BlockContext:
    if arch.family == "bert":
        mask = b.add_input("mask", ["batch", 1, 1, "total"])
    else:
        mask = b.add_input("mask", ["batch", 1, "seq", "total"])
    if arch.family == "llama":
        return BlockContext(mask, b.add_input("cos", ["batch", "seq", arch.head_dim]),
                            b.add_input("sin", ["batch", "seq", arch.head_dim]))
    return BlockContext(mask)


def block_graph(arch: ArchSpec, kind: str, width: int, sizes: Sizes, kv_heads: int | None = None,
                dtype: str = "float32", seed: int = 0, weights: Mapping[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """A graph of one block: ``kind`` "attention" (``width`` heads) or "ffn" (``width`` neurons).

    Inputs: ``hidden`` (batch, seq, hidden), and as the block needs them ``mask`` (additive), ``cos``/``sin``
    (Llama) and ``past_key``/``past_value`` (decode). Outputs: ``out`` (and ``present_key``/``present_value``).
    Weight names are ``layers.0.attn.*`` / ``layers.0.ffn.*``.
    """
    if arch.family == "bert" and sizes.decode:
        raise UserError("BERT has no decode mode", "profile BERT models with prefill sizes")
    b = GraphBuilder(dtype, seed, weights)
    x = b.add_input("hidden", ["batch", "seq", arch.hidden])
    if kind == "attention":
        kv = width if kv_heads is None or arch.kv_heads == arch.heads else kv_heads
        ctx = _block_context_inputs(b, arch)
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
    b.add_output(_ffn_linear(b, arch, x, "ffn", din, dout, rank), "y", ["batch", "seq", dout])
    return b.model(f"{arch.family}_linear_{kind}_{rank or 'dense'}")


def _lm_head_weight(b: GraphBuilder, arch: ArchSpec) -> str:
    """The LM head's (hidden, vocab) weight as the exporter writes it: with tied embeddings a ``Transpose``
    of the embedding table (constant-folded in fp32; quantization keeps it a transposed int8 table that is
    dequantized on every call and multiplied in fp32, the head's real cost in an int8 model)."""
    if arch.tie_word_embeddings:
        return b.op("Transpose", ["embed.tokens"], perm=[1, 0])
    return b.param("lm_head.weight", (arch.hidden, arch.vocab))


def model_graph(arch: ArchSpec, shape: ModelShape, sizes: Sizes, dtype: str = "float32", seed: int = 0) -> onnx.ModelProto:
    """The whole model pruned to ``shape``, built from the same blocks, with the exporter's inputs/outputs.

    BERT: ``input_ids, attention_mask -> last_hidden_state``. Decoders: ``input_ids, attention_mask,
    position_ids -> logits``; decode adds ``past_key_values.{i}.key/.value`` for each layer that still
    has attention (compact index i) and returns ``present.{i}.key/.value``.
    """
    if arch.family == "bert" and sizes.decode:
        raise UserError("BERT has no decode mode", "profile BERT models with prefill sizes")
    shape = shape.validate(arch)
    b = GraphBuilder(dtype, seed)
    e, d = arch.hidden, arch.head_dim
    ids = b.add_input("input_ids", ["batch", "seq"], onnx.TensorProto.INT64)
    attn_mask = b.add_input("attention_mask", ["batch", "total"], onnx.TensorProto.INT64)
    neg = -1e4 if dtype == "float16" else -1e9
    pad = b.op("Mul", [b.op("Sub", [b.fconst(1.0), b.op("Cast", [attn_mask], to=b.elem)]), b.fconst(neg)])
    pad = b.op("Unsqueeze", [pad, b.ints([1, 2])])  # (B, 1, 1, T)
    max_pos = max(1024, sizes.seq + sizes.kv_len)
    hidden = b.op("Gather", [b.param("embed.tokens", (arch.vocab, e)), ids], axis=0)
    ctx = BlockContext(pad)
    if arch.family == "bert":
        # positions 0..S-1 per row, computed so that shape inference keeps (batch, seq): ORT's fusions
        # (SkipLayerNormalization) depend on it, as they do on the exporter's annotated shapes
        ones = b.op("Add", [b.op("Mul", [ids, b.const(np.int64(0))]), b.const(np.int64(1))])
        positions = b.op("Sub", [b.op("CumSum", [ones, b.const(np.int64(1))]), b.const(np.int64(1))])
        pos = b.op("Gather", [b.param("embed.positions", (max_pos, e)), positions], axis=0)
        hidden = b.op("Add", [b.op("Add", [hidden, pos]), b.param("embed.token_type", (e,))])
        hidden = _layer_norm(b, hidden, "embed.ln", arch)
    else:
        position_ids = b.add_input("position_ids", ["batch", "seq"], onnx.TensorProto.INT64)
        if not sizes.decode:  # causal part of the mask: (S, S) lower triangle
            seq_len = b.op("Gather", [b.op("Shape", [ids]), b.const(np.int64(1))], axis=0)
            square = b.op("Concat", [b.op("Unsqueeze", [seq_len, b.ints([0])])] * 2, axis=0)
            ones = b.op("ConstantOfShape", [square], value=helper.make_tensor("one", b.elem, [1], [1.0]))
            causal = b.op("Mul", [b.op("Sub", [b.fconst(1.0), b.op("Trilu", [ones], upper=0)]), b.fconst(neg)])
            ctx = BlockContext(b.op("Add", [pad, causal]))  # (B, 1, S, S)
        if arch.family == "gpt2":
            hidden = b.op("Add", [hidden, b.op("Gather", [b.param("embed.positions", (max_pos, e)), position_ids], axis=0)])
        else:
            theta = arch.rope_theta or 10000.0
            inv_freq = 1.0 / theta ** (np.arange(0, d, 2, dtype=np.float64) / d)
            pos_f = b.op("Unsqueeze", [b.op("Cast", [position_ids], to=onnx.TensorProto.FLOAT), b.ints([-1])])
            freqs = b.op("Mul", [pos_f, b.const(inv_freq.astype(np.float32))])
            emb = b.op("Concat", [freqs, freqs], axis=-1)
            ctx.cos = b.op("Cast", [b.op("Cos", [emb])], to=b.elem)
            ctx.sin = b.op("Cast", [b.op("Sin", [emb])], to=b.elem)
    slot = 0
    for i, layer in enumerate(shape.layers):
        if layer.dropped:
            continue
        past = None
        if sizes.decode and layer.heads > 0:
            dims = ["batch", layer.kv, "past", d]
            past = (b.add_input(f"past_key_values.{slot}.key", dims), b.add_input(f"past_key_values.{slot}.value", dims))
        hidden, present = attention_block(b, arch, i, hidden, layer.heads, layer.kv, ctx, past)
        if present is not None:
            b.add_output(present[0], f"present.{slot}.key", ["batch", layer.kv, "total", d])
            b.add_output(present[1], f"present.{slot}.value", ["batch", layer.kv, "total", d])
        if layer.heads > 0:
            slot += 1
        hidden = ffn_block(b, arch, i, hidden, layer.ffn, layer.rank_of)
    if arch.family == "bert":
        b.add_output(hidden, "last_hidden_state", ["batch", "seq", e])
    else:
        hidden = _norm(b, hidden, "final_norm", arch)
        logits = b.op("MatMul", [hidden, _lm_head_weight(b, arch)])
        b.add_output(logits, "logits", ["batch", "seq", arch.vocab])
    # outputs in the exporter's order: logits first
    b.outputs.sort(key=lambda o: (not o.name.startswith(("logits", "last_hidden")), 0))
    return b.model(f"{arch.family}_model")
