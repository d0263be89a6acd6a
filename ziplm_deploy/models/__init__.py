"""Layer 2 (torch side): physical shrink, save/load of pruned models; each family's adapter lives in its
package (``families/<name>/adapter.py``) and is found here by the model's architecture."""

from __future__ import annotations

from typing import Any

from ..core.arch import ArchSpec, arch_from_config
from ..core.errors import UserError
from ..families import family_for
from .base import FamilyAdapter, LayerPlan, apply_ranks, apply_shape, magnitude_plan, shrink


def adapter_for(model_or_arch: Any) -> FamilyAdapter:
    """The adapter of a live transformers model or an ``ArchSpec``."""
    if isinstance(model_or_arch, ArchSpec):
        arch = model_or_arch
    else:
        config = getattr(model_or_arch, "config", None)
        if config is None:
            raise UserError(f"{type(model_or_arch).__name__} is not a transformers model (it has no .config)")
        arch = arch_from_config(config.to_dict(), source=type(model_or_arch).__name__)
    return family_for(arch).adapter()


def generation_cache():
    """A fresh KV cache for ``model.generate(past_key_values=...)`` whose every slot keeps all positions.

    ``generate`` otherwise types cache slots from ``config.layer_types``; after attention is removed from some
    layers the slots are renumbered over the layers that keep it, so a sliding-window slot could serve a
    full-attention layer (Gemma 3). With full slots the sliding window is applied by each layer's mask: exact
    for every family and length, as in the exported graphs."""
    from transformers import DynamicCache

    return DynamicCache()


from .io import load_model, save_model  # noqa: E402  (needs adapter_for)

__all__ = [
    "FamilyAdapter", "LayerPlan", "adapter_for", "apply_ranks", "apply_shape", "generation_cache", "load_model",
    "magnitude_plan",
    "save_model", "shrink",
]
