"""A model's dense architecture, read from a Hugging Face ``config.json`` without torch.

This is what the torch-free side (profiler, predictor, verifier on an edge box) knows about a model.
Family adapters in ``models/`` use the same object to find modules.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from . import checks
from .errors import UserError
from .jsonio import read_json

SHAPE_CONFIG_KEY = "ziplm_shape"


@dataclass(frozen=True)
class ArchSpec:
    family: str  # "bert" | "gpt2" | "llama"
    model_type: str  # the config's own model_type ("mistral" is family "llama")
    num_layers: int  # layers of the dense model (dropped layers included)
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    activation: str
    norm: str  # "post-ln" (BERT) | "pre-ln" (GPT-2) | "rms" (Llama)
    gated_ffn: bool  # SwiGLU-style gate+up projections
    attention_bias: bool
    ffn_bias: bool
    norm_eps: float
    rope_theta: float | None = None
    tie_word_embeddings: bool = False
    architecture: str | None = None  # config.architectures[0], e.g. "LlamaForCausalLM"

    @property
    def group_size(self) -> int:
        """Query heads per KV head (1 without GQA)."""
        return self.heads // self.kv_heads

    @property
    def is_decoder(self) -> bool:
        return self.family in ("gpt2", "llama")


class _Fields:
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


def _bert(f: _Fields) -> ArchSpec:
    hidden, heads = f.size("hidden_size"), f.size("num_attention_heads")
    return ArchSpec(
        family="bert", model_type=f.text("model_type", "bert"), num_layers=f.size("num_hidden_layers"),
        hidden=hidden, heads=heads, kv_heads=heads, head_dim=f.head_dim(hidden, heads),
        ffn=f.size("intermediate_size"), vocab=f.size("vocab_size"), activation=f.text("hidden_act", "gelu"),
        norm="post-ln", gated_ffn=False, attention_bias=True, ffn_bias=True,
        norm_eps=f.positive("layer_norm_eps", 1e-12),
    )


def _gpt2(f: _Fields) -> ArchSpec:
    hidden, heads = f.size("n_embd", 768), f.size("n_head", 12)
    return ArchSpec(
        family="gpt2", model_type="gpt2", num_layers=f.size("n_layer", 12), hidden=hidden,
        heads=heads, kv_heads=heads, head_dim=f.head_dim(hidden, heads), ffn=f.optional_size("n_inner") or 4 * hidden,
        vocab=f.size("vocab_size", 50257), activation=f.text("activation_function", "gelu_new"),
        norm="pre-ln", gated_ffn=False, attention_bias=True, ffn_bias=True,
        norm_eps=f.positive("layer_norm_epsilon", 1e-5), tie_word_embeddings=f.flag("tie_word_embeddings", True),
    )


def _llama(f: _Fields) -> ArchSpec:
    hidden, heads = f.size("hidden_size"), f.size("num_attention_heads")
    kv_heads = f.optional_size("num_key_value_heads") or heads
    if heads % kv_heads:
        raise UserError(f"{f.source}: {heads} attention heads do not split into {kv_heads} key/value heads",
                        "fix num_key_value_heads in config.json")
    model_type = f.text("model_type", "llama")
    rope = checks.mapping(f.c.get("rope_parameters") or {}, f.source, "rope_parameters")
    theta = rope.get("rope_theta", f.c.get("rope_theta"))
    return ArchSpec(
        family="llama", model_type=model_type, num_layers=f.size("num_hidden_layers"),
        hidden=hidden, heads=heads, kv_heads=kv_heads, head_dim=f.head_dim(hidden, heads, exact=False),
        ffn=f.size("intermediate_size"), vocab=f.size("vocab_size"), activation=f.text("hidden_act", "silu"),
        norm="rms", gated_ffn=True, attention_bias=f.flag("attention_bias", model_type == "qwen2"),
        ffn_bias=f.flag("mlp_bias", False), norm_eps=f.positive("rms_norm_eps", 1e-6),
        rope_theta=10000.0 if theta is None else checks.number(theta, f.source, "rope_theta", lo=0, lo_open=True),
        tie_word_embeddings=f.flag("tie_word_embeddings", False),
    )


# model_type -> reader. Qwen2 and Mistral share Llama's module layout (Qwen2 adds q/k/v biases).
_READERS: dict[str, Callable[[_Fields], ArchSpec]] = {
    "bert": _bert,
    "gpt2": _gpt2,
    "llama": _llama,
    "mistral": _llama,
    "qwen2": _llama,
}
SUPPORTED_MODEL_TYPES = tuple(_READERS)


def arch_from_config(config: Any, source: str = "config") -> ArchSpec:
    """The architecture a config dict describes; every field it uses is type-checked (``source`` names the file)."""
    config = checks.mapping(config, source)
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in _READERS:
        raise UserError(
            f"{source}: unsupported architecture model_type={model_type!r}",
            f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}",
        )
    spec = _READERS[model_type](_Fields(config, source))
    archs = config.get("architectures") or [None]
    if not isinstance(archs, list) or not all(a is None or isinstance(a, str) for a in archs):
        raise UserError(f"{source}: architectures must be a list of class names, got {archs!r}", "fix config.json")
    return replace(spec, architecture=archs[0], num_layers=_recorded_layers(config, source, spec.num_layers))


def _recorded_layers(config: dict[str, Any], source: str, dense_layers: int) -> int:
    """Layers of a pruned model's recorded shape (dropped ones included), else the config's."""
    shape = config.get(SHAPE_CONFIG_KEY)
    if shape is None:
        return dense_layers
    layers = checks.mapping(shape, source, SHAPE_CONFIG_KEY).get("layers")
    if not isinstance(layers, list) or not layers:
        raise UserError(f"{source}: {SHAPE_CONFIG_KEY}.layers must be a non-empty list", "re-save the pruned model")
    return len(layers)


def config_path(model_dir: str | os.PathLike) -> Path:
    """``config.json`` of a model directory (or the file itself), with a clear error when it is missing."""
    path = Path(model_dir)
    if not path.exists():
        raise UserError(f"model directory not found: {path}", "pass a local Hugging Face model directory")
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise UserError(f"{path} not found", "a model directory must contain config.json")
    return path


def read_model_config(model_dir: str | os.PathLike) -> dict[str, Any]:
    """The raw ``config.json`` of a model directory: a JSON object, with a clear error otherwise."""
    path = config_path(model_dir)
    return checks.mapping(read_json(path, "model config"), str(path))


def arch_from_dir(model_dir: str | os.PathLike) -> ArchSpec:
    return arch_from_config(read_model_config(model_dir), source=str(config_path(model_dir)))
