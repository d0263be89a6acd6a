"""The generic ONNX pieces the block graphs are made of, built with ``onnx.helper`` (no torch).

``GraphBuilder`` accumulates nodes and initializers; the functions below each emit one operator pattern
as ``torch.onnx.export(dynamo=True)`` writes it for transformers 5.23 models (opset 18). Which pieces a
model family uses, and in which order, lives in the family's own package (``families/<name>/graph.py``);
``blocks.py`` glues them into block and whole-model graphs.
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
from ..core.fingerprint import LOGITS

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
    logits: str = "all"  # prefill: logits of every position ("all") or of the last only ("last": generation)

    def __post_init__(self) -> None:
        if self.mode not in ("prefill", "decode"):
            raise UserError(f"unknown mode {self.mode!r}", "prefill or decode")
        if self.logits not in LOGITS:
            raise UserError(f"unknown logits {self.logits!r}", " or ".join(LOGITS))
        if self.mode == "decode" and self.logits != "all":
            raise UserError("a decode step has one position: its logits are 'all'", "drop --logits for decode tables")
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

    @property
    def max_positions(self) -> int:
        """Rows of a learned position table: enough for every position these sizes reach."""
        return max(1024, self.seq + self.kv_len)


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

    @property
    def mask_fill(self) -> float:
        """The additive mask value of a hidden position (fp16 cannot hold -1e9)."""
        return -1e4 if self.dtype == "float16" else -1e9

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
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=outs[0], **attrs))  # named: quantizers exclude by name
        return outs[0] if n_out == 1 else outs

    def add_input(self, name: str, dims: list[int | str], elem: int | None = None) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, self.elem if elem is None else elem, dims))
        return name

    def add_output(self, value: str, name: str, dims: list[int | str]) -> None:
        self.nodes.append(helper.make_node("Identity", [value], [name], name=name))
        self.outputs.append(helper.make_tensor_value_info(name, self.elem, dims))

    def model(self, name: str) -> onnx.ModelProto:
        used = {i for n in self.nodes for i in n.input}
        inputs = [i for i in self.inputs if i.name in used]  # a removed block ignores mask, cache, RoPE
        graph = helper.make_graph(self.nodes, name, inputs, self.outputs, initializer=self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="ziplm-deploy")
        model.ir_version = IR_VERSION
        return model


@dataclass
class BlockContext:
    """Shared tensors a block reads: the additive mask and, with rotary positions, cos/sin of shape (B, S, d)."""

    mask: str
    cos: str | None = None
    sin: str | None = None


# --- projections and norms ------------------------------------------------------------------------
def linear(b: GraphBuilder, x: str, key: str, din: int, dout: int, bias: bool) -> str:
    y = b.op("MatMul", [x, b.param(f"{key}.weight", (din, dout))])
    return b.op("Add", [y, b.param(f"{key}.bias", (dout,))]) if bias else y


def addmm(b: GraphBuilder, x: str, key: str, din: int, dout: int, bias: bool = True) -> str:
    """A Conv1D (GPT-2) as the exporter writes it: flatten to 2-D, ``Gemm`` with bias, reshape back
    (``bias`` is ignored: a Conv1D always has one; the argument matches ``linear``'s)."""
    lead = b.op("Slice", [b.op("Shape", [x]), b.ints([0]), b.ints([2]), b.ints([0])])
    y = b.op("Gemm", [b.op("Reshape", [x, b.ints([-1, din])]), b.param(f"{key}.weight", (din, dout)),
                      b.param(f"{key}.bias", (dout,))])
    return b.op("Reshape", [y, b.op("Concat", [lead, b.ints([dout])], axis=0)])


def layer_norm(b: GraphBuilder, x: str, key: str, arch: ArchSpec) -> str:
    e = arch.hidden
    return b.op("LayerNormalization", [x, b.param(f"{key}.weight", (e,), "ones"), b.param(f"{key}.bias", (e,), "zeros")],
                axis=-1, epsilon=arch.norm_eps)


def rms_norm(b: GraphBuilder, x: str, key: str, arch: ArchSpec, width: int | None = None,
             offset: bool = False) -> str:
    """RMSNorm over the last axis (``width``, default the hidden size) with weight ``{key}.weight``;
    ``offset``: the scale is ``1 + weight`` (Gemma)."""
    var = b.op("ReduceMean", [b.op("Pow", [x, b.fconst(2.0)]), b.ints([-1])], keepdims=1)
    inv = b.op("Reciprocal", [b.op("Sqrt", [b.op("Add", [var, b.fconst(arch.norm_eps)])])])
    weight = b.param(f"{key}.weight", (width or arch.hidden,), "zeros" if offset else "ones")
    if offset:
        weight = b.op("Add", [weight, b.fconst(1.0)])
    return b.op("Mul", [weight, b.op("Mul", [x, inv])])


def norm(b: GraphBuilder, x: str, key: str, arch: ArchSpec) -> str:
    return rms_norm(b, x, key, arch) if arch.norm == "rms" else layer_norm(b, x, key, arch)


def activation(b: GraphBuilder, x: str, name: str) -> str:
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


# --- attention ------------------------------------------------------------------------------------
def split_heads(b: GraphBuilder, x: str, n: int, d: int) -> str:
    """(B, S, n*d) -> (B, n, S, d)"""
    return b.op("Transpose", [b.op("Reshape", [x, b.ints([0, 0, n, d])])], perm=[0, 2, 1, 3])


def merge_heads(b: GraphBuilder, x: str, n: int, d: int) -> str:
    return b.op("Reshape", [b.op("Transpose", [x], perm=[0, 2, 1, 3]), b.ints([0, 0, n * d])])


def rope(b: GraphBuilder, x: str, cos: str, sin: str, d: int) -> str:
    half = d // 2
    x1 = b.op("Slice", [x, b.ints([0]), b.ints([half]), b.ints([-1])])
    x2 = b.op("Slice", [x, b.ints([half]), b.ints([d]), b.ints([-1])])
    rotated = b.op("Concat", [b.op("Neg", [x2]), x1], axis=-1)
    return b.op("Add", [b.op("Mul", [x, cos]), b.op("Mul", [rotated, sin])])


def repeat_kv(b: GraphBuilder, x: str, heads: int, kv: int, d: int) -> str:
    if heads == kv:
        return x
    expanded = b.op("Expand", [b.op("Unsqueeze", [x, b.ints([2])]), b.ints([1, 1, heads // kv, 1, 1])])
    return b.op("Reshape", [expanded, b.ints([0, heads, -1, d])])


def sdpa(b: GraphBuilder, q: str, k: str, v: str, mask: str, d: float) -> str:
    """Softmax attention with scores scaled by ``d**-0.5`` (``d``: the head size, or Gemma's query scalar)."""
    s = b.fconst(1.0 / math.sqrt(math.sqrt(d)))  # the exporter splits the scale over q and k
    kt = b.op("Transpose", [k], perm=[0, 1, 3, 2])
    scores = b.op("MatMul", [b.op("Mul", [q, s]), b.op("Mul", [kt, s])])
    probs = b.op("Softmax", [b.op("Add", [scores, mask])], axis=-1)
    probs = b.op("Where", [b.op("IsNaN", [probs]), b.fconst(0.0), probs])  # the exporter's fully-masked-row guard
    return b.op("MatMul", [probs, v])


def separate_qkv(b: GraphBuilder, arch: ArchSpec, h: str, p: str, heads: int, kv: int) -> tuple[str, str, str]:
    """Q, K and V as three Linears (``{p}.q/.k/.v``), with biases when the model has them."""
    d, e, bias = arch.head_dim, arch.hidden, arch.attention_bias
    return (linear(b, h, f"{p}.q", e, heads * d, bias), linear(b, h, f"{p}.k", e, kv * d, bias),
            linear(b, h, f"{p}.v", e, kv * d, bias))


def rotary(b: GraphBuilder, arch: ArchSpec, q: str, k: str, ctx: BlockContext) -> tuple[str, str]:
    """RoPE on (B, heads, S, d) queries and keys with the context's cos/sin."""
    cos = b.op("Unsqueeze", [ctx.cos, b.ints([1])])
    sin = b.op("Unsqueeze", [ctx.sin, b.ints([1])])
    return rope(b, q, cos, sin, arch.head_dim), rope(b, k, cos, sin, arch.head_dim)


def no_rotation(b: GraphBuilder, arch: ArchSpec, q: str, k: str, ctx: BlockContext) -> tuple[str, str]:
    """Absolute (embedded) positions: queries and keys as they are."""
    return q, k


# --- residual placement ---------------------------------------------------------------------------
def pre_norm(b: GraphBuilder, arch: ArchSpec, x: str, p: str) -> str:
    """The sublayer's input: normalised (``{p}.norm``) before it (pre-LN / RMSNorm blocks)."""
    return norm(b, x, f"{p}.norm", arch)


def as_is(b: GraphBuilder, arch: ArchSpec, x: str, p: str) -> str:
    """The sublayer's input unchanged (post-LN blocks normalise after the residual)."""
    return x


def residual(b: GraphBuilder, arch: ArchSpec, x: str, out: str, p: str) -> str:
    """``x + out`` (pre-LN / RMSNorm blocks)."""
    return b.op("Add", [x, out])


def post_ln_residual(b: GraphBuilder, arch: ArchSpec, x: str, out: str, p: str) -> str:
    """``LayerNorm(out + x)`` (``{p}.ln``; post-LN blocks)."""
    return layer_norm(b, b.op("Add", [out, x]), f"{p}.ln", arch)


def removed_keeps_bias(b: GraphBuilder, arch: ArchSpec, x: str, p: str, proj: str) -> str:
    """A removed sublayer whose output projection ``{p}.{proj}`` leaves its bias: ``x + bias``."""
    return b.op("Add", [x, b.param(f"{p}.{proj}.bias", (arch.hidden,))])


def removed_adds_zero(b: GraphBuilder, arch: ArchSpec, x: str, p: str, proj: str) -> str:
    """A removed sublayer without a bias to keep: ``x + 0`` as the exporter leaves it."""
    return b.op("Add", [x, b.fconst(np.zeros(arch.hidden))])


# --- whole-model inputs and outputs ---------------------------------------------------------------
def causal_mask_input(b: GraphBuilder) -> str:
    """A decoder block's additive mask input: (batch, 1, seq, total)."""
    return b.add_input("mask", ["batch", 1, "seq", "total"])


def decoder_positions(b: GraphBuilder, ids: str, pad: str, sizes: Sizes) -> tuple[str, BlockContext]:
    """A causal LM's ``position_ids`` input and the block context with the causal mask added to ``pad``
    (prefill: an (S, S) lower triangle; decode: the one new token sees everything)."""
    position_ids = b.add_input("position_ids", ["batch", "seq"], onnx.TensorProto.INT64)
    if sizes.decode:
        return position_ids, BlockContext(pad)
    seq_len = b.op("Gather", [b.op("Shape", [ids]), b.const(np.int64(1))], axis=0)
    square = b.op("Concat", [b.op("Unsqueeze", [seq_len, b.ints([0])])] * 2, axis=0)
    ones = b.op("ConstantOfShape", [square], value=helper.make_tensor("one", b.elem, [1], [1.0]))
    causal = b.op("Mul", [b.op("Sub", [b.fconst(1.0), b.op("Trilu", [ones], upper=0)]), b.fconst(b.mask_fill)])
    return position_ids, BlockContext(b.op("Add", [pad, causal]))  # (B, 1, S, S)


def rotary_tables(b: GraphBuilder, arch: ArchSpec, position_ids: str, ctx: BlockContext) -> None:
    """RoPE cos/sin (B, S, head_dim) of ``position_ids`` into ``ctx``."""
    d = arch.head_dim
    theta = arch.rope_theta or 10000.0
    inv_freq = 1.0 / theta ** (np.arange(0, d, 2, dtype=np.float64) / d)
    pos_f = b.op("Unsqueeze", [b.op("Cast", [position_ids], to=onnx.TensorProto.FLOAT), b.ints([-1])])
    freqs = b.op("Mul", [pos_f, b.const(inv_freq.astype(np.float32))])
    emb = b.op("Concat", [freqs, freqs], axis=-1)
    ctx.cos = b.op("Cast", [b.op("Cos", [emb])], to=b.elem)
    ctx.sin = b.op("Cast", [b.op("Sin", [emb])], to=b.elem)


def lm_head_weight(b: GraphBuilder, arch: ArchSpec) -> str:
    """The LM head's (hidden, vocab) weight as the exporter writes it: with tied embeddings a ``Transpose``
    of the embedding table (constant-folded in fp32; quantization keeps it a transposed int8 table that is
    dequantized on every call and multiplied in fp32, the head's real cost in an int8 model)."""
    if arch.tie_word_embeddings:
        return b.op("Transpose", ["embed.tokens"], perm=[1, 0])
    return b.param("lm_head.weight", (arch.hidden, arch.vocab))


def lm_head(b: GraphBuilder, arch: ArchSpec, hidden: str) -> None:
    """A causal LM's output: final norm, LM head, ``logits`` (batch, seq, vocab)."""
    hidden = norm(b, hidden, "final_norm", arch)
    logits = b.op("MatMul", [hidden, lm_head_weight(b, arch)])
    b.add_output(logits, "logits", ["batch", "seq", arch.vocab])
