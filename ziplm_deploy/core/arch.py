"""A model's dense architecture, read from a Hugging Face ``config.json`` without torch.

This is what the torch-free side (profiler, predictor, verifier on an edge box) knows about a model.
Family adapters in ``models/`` use the same object to find modules.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

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


def _bert(c: dict[str, Any]) -> ArchSpec:
    heads = c["num_attention_heads"]
    return ArchSpec(
        family="bert", model_type=c["model_type"], num_layers=c["num_hidden_layers"],
        hidden=c["hidden_size"], heads=heads, kv_heads=heads, head_dim=c["hidden_size"] // heads,
        ffn=c["intermediate_size"], vocab=c["vocab_size"], activation=c.get("hidden_act", "gelu"),
        norm="post-ln", gated_ffn=False, attention_bias=True, ffn_bias=True,
        norm_eps=c.get("layer_norm_eps", 1e-12),
    )


def _gpt2(c: dict[str, Any]) -> ArchSpec:
    hidden = c.get("n_embd", 768)
    heads = c.get("n_head", 12)
    return ArchSpec(
        family="gpt2", model_type="gpt2", num_layers=c.get("n_layer", 12), hidden=hidden,
        heads=heads, kv_heads=heads, head_dim=hidden // heads, ffn=c.get("n_inner") or 4 * hidden,
        vocab=c.get("vocab_size", 50257), activation=c.get("activation_function", "gelu_new"),
        norm="pre-ln", gated_ffn=False, attention_bias=True, ffn_bias=True,
        norm_eps=c.get("layer_norm_epsilon", 1e-5), tie_word_embeddings=c.get("tie_word_embeddings", True),
    )


def _llama(c: dict[str, Any]) -> ArchSpec:
    heads = c["num_attention_heads"]
    rope = c.get("rope_parameters") or {}
    return ArchSpec(
        family="llama", model_type=c["model_type"], num_layers=c["num_hidden_layers"],
        hidden=c["hidden_size"], heads=heads, kv_heads=c.get("num_key_value_heads") or heads,
        head_dim=c.get("head_dim") or c["hidden_size"] // heads, ffn=c["intermediate_size"],
        vocab=c["vocab_size"], activation=c.get("hidden_act", "silu"), norm="rms", gated_ffn=True,
        attention_bias=bool(c.get("attention_bias", c["model_type"] == "qwen2")),
        ffn_bias=bool(c.get("mlp_bias", False)), norm_eps=c.get("rms_norm_eps", 1e-6),
        rope_theta=rope.get("rope_theta", c.get("rope_theta", 10000.0)),
        tie_word_embeddings=c.get("tie_word_embeddings", False),
    )


# model_type -> reader. Qwen2 and Mistral share Llama's module layout (Qwen2 adds q/k/v biases).
_READERS: dict[str, Callable[[dict[str, Any]], ArchSpec]] = {
    "bert": _bert,
    "gpt2": _gpt2,
    "llama": _llama,
    "mistral": _llama,
    "qwen2": _llama,
}
SUPPORTED_MODEL_TYPES = tuple(_READERS)


def arch_from_config(config: dict[str, Any], source: str = "config") -> ArchSpec:
    model_type = config.get("model_type")
    if model_type not in _READERS:
        raise UserError(
            f"{source}: unsupported architecture model_type={model_type!r}",
            f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}",
        )
    try:
        spec = _READERS[model_type](config)
    except KeyError as e:
        raise UserError(f"{source}: config of model_type {model_type!r} lacks key {e}") from None
    archs = config.get("architectures") or [None]
    shape = config.get(SHAPE_CONFIG_KEY)
    num_layers = len(shape["layers"]) if isinstance(shape, dict) and "layers" in shape else spec.num_layers
    return replace(spec, architecture=archs[0], num_layers=num_layers)


def read_model_config(model_dir: str | os.PathLike) -> dict[str, Any]:
    """The raw ``config.json`` of a model directory, with a clear error when it is missing."""
    path = Path(model_dir)
    if not path.exists():
        raise UserError(f"model directory not found: {path}", "pass a local Hugging Face model directory")
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise UserError(f"{path} not found", "a model directory must contain config.json")
    return read_json(path, "model config")


def arch_from_dir(model_dir: str | os.PathLike) -> ArchSpec:
    return arch_from_config(read_model_config(model_dir), source=str(model_dir))
