"""What a model family is: the ``Family`` record, its ONNX graph parts, and typed config reads.

A family package (``families/<name>/``) holds everything the project knows about one family:

- ``__init__.py``: the config reader and the ``FAMILY`` record (torch-free, stdlib only);
- ``graph.py``: ``PARTS``, the pieces its ONNX block graphs are made of (torch-free: numpy/onnx);
- ``adapter.py``: ``ADAPTER``, the PyTorch ``FamilyAdapter`` (where heads, FFN and layers live).

The graph parts and the adapter are imported only when asked for, so reading a config needs neither
onnx nor torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import import_module
from typing import TYPE_CHECKING, Any, Callable

from ..core import checks
from ..core.arch import ArchSpec
from ..core.errors import UserError

if TYPE_CHECKING:  # typing only: neither import may run on the torch-free side
    from ..models.base import FamilyAdapter
    from ..profiling.onnx_ops import BlockContext, GraphBuilder, Sizes


@dataclass(frozen=True)
class GraphParts:
    """How one family's blocks and whole models are written in ONNX, as ``torch.onnx.export`` emits them.

    ``blocks.py`` asks for these in order; ``p`` is the sublayer's weight prefix (``layers.{i}.attn`` /
    ``layers.{i}.ffn``). Common choices are in ``profiling.onnx_ops``.
    """

    # (b, arch) -> context: the block graph's mask (and rotary cos/sin) inputs
    context_inputs: Callable[[GraphBuilder, ArchSpec], BlockContext]
    # (b, arch, x, p) -> h: what a sublayer computes on (pre-norm, or x itself)
    block_input: Callable[[GraphBuilder, ArchSpec, str, str], str]
    # (b, arch, x, out, p) -> y: residual and any norm after it
    block_output: Callable[[GraphBuilder, ArchSpec, str, str, str], str]
    # (b, arch, x, p, proj) -> y: what the exporter leaves of a removed sublayer (proj: "o" | "down")
    removed_block: Callable[[GraphBuilder, ArchSpec, str, str, str], str]
    # (b, arch, h, p, heads, kv) -> (q, k, v) of shape (B, S, n*d)
    qkv: Callable[[GraphBuilder, ArchSpec, str, str, int, int], tuple[str, str, str]]
    # (b, arch, q, k, ctx) -> (q, k): positions applied inside attention (RoPE), or none
    rotate: Callable[[GraphBuilder, ArchSpec, str, str, BlockContext], tuple[str, str]]
    # (b, x, key, din, dout, bias) -> y: a dense projection (Linear, or GPT-2's Conv1D)
    dense: Callable[[GraphBuilder, str, str, int, int, bool], str]
    # (b, arch, ids, hidden, pad, sizes) -> (hidden, ctx): whole model, after the token embedding lookup
    embeddings: Callable[[GraphBuilder, ArchSpec, str, str, str, Sizes], tuple[str, BlockContext]]
    # (b, arch, hidden) -> None: whole model, adds its outputs
    head: Callable[[GraphBuilder, ArchSpec, str], None]
    # arch -> whether the attention output projection has a bias (Llama: attention_bias; Qwen2: never)
    attention_out_bias: Callable[[ArchSpec], bool] = lambda arch: arch.attention_bias


@dataclass(frozen=True)
class Family:
    """One model family, registered by the ``model_type`` values of its configs."""

    name: str  # ArchSpec.family
    label: str  # in messages ("BERT")
    model_types: tuple[str, ...]
    is_decoder: bool  # a causal LM: has a decode mode, a KV cache and logits
    read_config: Callable[[ConfigFields], ArchSpec]
    package: str  # the family's package (its __name__): graph parts and adapter are found there
    positions_key: str | None = None  # config key bounding the sequence length (learned positions)
    num_layers_key: str = "num_hidden_layers"  # config key holding the layer count
    genai_types: dict[str, str] = field(default_factory=dict)  # model_type -> ONNX Runtime GenAI model.type

    def graph(self) -> GraphParts:
        """The family's ONNX graph parts (imports onnx and numpy, never torch)."""
        return import_module(f"{self.package}.graph").PARTS

    def adapter(self) -> FamilyAdapter:
        """The family's PyTorch adapter (imports torch)."""
        return import_module(f"{self.package}.adapter").ADAPTER


class ConfigFields:
    """Typed reads of the config.json fields a reader uses: each a ``UserError`` naming the file and key."""

    def __init__(self, config: dict[str, Any], source: str):
        self.c, self.source = config, source

    def _get(self, key: str, default: Any) -> Any:
        value = self.c.get(key)
        if value is None:
            if default is _REQUIRED:
                raise UserError(f"{self.source}: missing required key {key!r} for model_type "
                                f"{self.c.get('model_type')!r}", "fix config.json or re-save the model")
            return default
        return value

    def size(self, key: str, default: Any = None) -> int:
        """A positive integer (``default`` when absent or null; absent without a default: an error)."""
        value = self._get(key, _REQUIRED if default is None else default)
        return checks.integer(value, self.source, key, lo=1)

    def optional_size(self, key: str) -> int | None:
        value = self.c.get(key)
        return None if value is None else checks.integer(value, self.source, key, lo=1)

    def positive(self, key: str, default: float) -> float:
        return checks.number(self._get(key, default), self.source, key, lo=0, lo_open=True)

    def text(self, key: str, default: str) -> str:
        return checks.typed(self._get(key, default), str, self.source, key, "a string")

    def flag(self, key: str, default: bool) -> bool:
        return checks.typed(self._get(key, default), bool, self.source, key, "true or false")

    def head_dim(self, hidden: int, heads: int, exact: bool = True) -> int:
        """``head_dim``, else hidden // heads (BERT and GPT-2 need an exact split; Llama floors it)."""
        explicit = self.optional_size("head_dim")
        if explicit is not None:
            return explicit
        if (hidden % heads if exact else hidden < heads):
            raise UserError(f"{self.source}: hidden size {hidden} is not divisible by {heads} attention heads",
                            "fix config.json")
        return hidden // heads


_REQUIRED = object()
