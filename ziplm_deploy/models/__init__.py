"""Layer 2 (torch side): one adapter per model family, physical shrink, save/load of pruned models."""

from __future__ import annotations

from typing import Any

from ..core.arch import ArchSpec, arch_from_config
from ..core.errors import UserError
from .base import FamilyAdapter, LayerPlan, apply_ranks, apply_shape, magnitude_plan, shrink
from .bert import BertAdapter
from .gpt2 import GPT2Adapter
from .llama import LlamaAdapter

_ADAPTERS: dict[str, FamilyAdapter] = {a.family: a for a in (BertAdapter(), GPT2Adapter(), LlamaAdapter())}


def adapter_for(model_or_arch: Any) -> FamilyAdapter:
    """The adapter of a live transformers model or an ``ArchSpec``."""
    if isinstance(model_or_arch, ArchSpec):
        arch = model_or_arch
    else:
        config = getattr(model_or_arch, "config", None)
        if config is None:
            raise UserError(f"{type(model_or_arch).__name__} is not a transformers model (it has no .config)")
        arch = arch_from_config(config.to_dict(), source=type(model_or_arch).__name__)
    return _ADAPTERS[arch.family]


from .io import load_model, save_model  # noqa: E402  (needs adapter_for)

__all__ = [
    "FamilyAdapter", "LayerPlan", "adapter_for", "apply_ranks", "apply_shape", "load_model", "magnitude_plan",
    "save_model", "shrink",
]
