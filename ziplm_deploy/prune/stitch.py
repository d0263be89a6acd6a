"""Turn chosen levels into a physically pruned model with OBS-reconstructed output projections."""

from __future__ import annotations

import torch
from torch import nn

from ..models import LayerPlan, adapter_for, shrink
from .database import Database
from .hessian import LayerHessians
from .obs import reconstruct


def _cols(kept_units, unit_cols: int) -> list[int]:
    return [u * unit_cols + c for u in kept_units for c in range(unit_cols)]


@torch.no_grad()
def stitch(model: nn.Module, db: Database, hessians: list[LayerHessians],
           units: dict[tuple[int, str], int]) -> nn.Module:
    """Shrink the dense ``model`` in place to the database levels ``units`` ((layer, kind) -> units kept),
    replacing each pruned output projection by the least-squares (= OBS) weights of its kept columns."""
    adapter = adapter_for(model)
    arch = adapter.arch(model)
    heads_per_unit = arch.group_size if arch.kv_heads != arch.heads else 1
    layers = list(adapter.layers(model))
    plan, updates = [], []
    for i, layer in enumerate(layers):
        heads = ffn = None
        for kind in ("attn", "ffn"):
            mod = db.module(i, kind)
            if mod is None or (i, kind) not in units:
                continue
            level = mod.level(units[(i, kind)])
            if level.units == mod.levels[0].units:
                continue  # dense: untouched
            if kind == "attn":
                heads = tuple(u * heads_per_unit + j for u in level.kept for j in range(heads_per_unit))
            else:
                ffn = level.kept
            if level.kept:
                w = (adapter.attn_out_weight if kind == "attn" else adapter.ffn_out_weight)(layer)
                h = hessians[i].attn if kind == "attn" else hessians[i].ffn
                new = reconstruct(w.detach().float(), h.float(), _cols(level.kept, mod.unit_cols), db.damp)
                updates.append((layer, kind, new))
        plan.append(LayerPlan(heads=heads, ffn=ffn))
    shrink(model, plan)
    for layer, kind, new in updates:
        view = (adapter.attn_out_weight if kind == "attn" else adapter.ffn_out_weight)(layer)
        view.copy_(new.to(view.dtype))
    return model
