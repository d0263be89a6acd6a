"""A model's dense architecture, read from a Hugging Face ``config.json`` without torch.

This is what the torch-free side (profiler, predictor, verifier on an edge box) knows about a model.
Each family's reader lives in its package (``families/<name>``), found by ``model_type``; family
adapters use the same object to find modules. The registry is imported when first needed (it sits in
a higher layer); ``SUPPORTED_MODEL_TYPES`` is re-exported from it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import checks
from .errors import UserError
from .jsonio import read_json

SHAPE_CONFIG_KEY = "ziplm_shape"


@dataclass(frozen=True)
class ArchSpec:
    family: str  # the name of its family package in families/ ("bert", "gpt2", "llama")
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
    query_scale: float | None = None  # attention scores scale by query_scale**-0.5 (Gemma); None: head_dim
    architecture: str | None = None  # config.architectures[0], e.g. "LlamaForCausalLM"

    @property
    def group_size(self) -> int:
        """Query heads per KV head (1 without GQA)."""
        return self.heads // self.kv_heads

    @property
    def is_decoder(self) -> bool:
        """A causal LM (decode mode, KV cache, logits): what its family says."""
        from ..families import family_for

        return family_for(self).is_decoder


def arch_from_config(config: Any, source: str = "config") -> ArchSpec:
    """The architecture a config dict describes; every field it uses is type-checked (``source`` names the file)."""
    from ..families import SUPPORTED_MODEL_TYPES, ConfigFields, family_for

    config = checks.mapping(config, source)
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in SUPPORTED_MODEL_TYPES:
        raise UserError(
            f"{source}: unsupported architecture model_type={model_type!r}",
            f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}",
        )
    spec = family_for(model_type).read_config(ConfigFields(config, source))
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


def __getattr__(name: str) -> Any:
    """``SUPPORTED_MODEL_TYPES``: the family registry's, imported on first use."""
    if name == "SUPPORTED_MODEL_TYPES":
        from ..families import SUPPORTED_MODEL_TYPES

        return SUPPORTED_MODEL_TYPES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
