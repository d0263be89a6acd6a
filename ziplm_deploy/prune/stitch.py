"""Turn chosen levels into a physically pruned model with OBS-reconstructed output projections."""

from __future__ import annotations

import torch
from torch import nn

from ..core.errors import InternalError
from ..models import LayerPlan, adapter_for, shrink
from .database import Database, Level
from .hessian import LayerHessians
from .obs import reconstruct


def _cols(kept_units, unit_cols: int) -> list[int]:
    return [u * unit_cols + c for u in kept_units for c in range(unit_cols)]


@torch.no_grad()
def stitch(model: nn.Module, db: Database, hessians: list[LayerHessians],
           levels: dict[tuple[int, str], Level]) -> nn.Module:
    """Shrink the ``model`` the database was built on, in place, to the chosen database ``levels``
    ((layer, kind) -> level), replacing each pruned output projection by the least-squares (= OBS)
    weights of its kept columns."""
    adapter = adapter_for(model)
    layers = list(adapter.layers(model))
    plan, updates = [], []
    for i, layer in enumerate(layers):
        heads = ffn = None
        for kind in ("attn", "ffn"):
            mod = db.module(i, kind)
            if mod is None or (i, kind) not in levels:
                continue
            level = levels[(i, kind)]
            if level not in mod.levels:
                raise InternalError(f"layer {i} {kind}: level {level.units}/{level.kv} is not in the database")
            if level == mod.levels[0]:
                continue  # as it is: untouched
            if kind == "ffn":
                ffn = level.kept
            elif mod.unit == "kv_group":
                heads = tuple(u * mod.group + j for u in level.kept for j in range(mod.group))
            else:  # "head" / "gqa_head": kept query heads
                heads = level.kept
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
