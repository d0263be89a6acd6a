"""LayerChop (Just CHOP): remove whole layers. Which ones: from the top, a given list, or the least
Block Influence ``1 − cos(x_in, x_out)`` on calibration data (ShortGPT's rule)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..core.errors import UserError
from ..core.shape import LayerShape, ModelShape
from ..core.table import LatencyTable

RULES = ("influence", "top", "indices")


@torch.no_grad()
def block_influence(model: nn.Module, windows: torch.Tensor, batch_size: int = 4) -> list[float]:
    """Mean over tokens of ``1 − cos(h_l, h_{l+1})`` for every layer l (lower = less influential)."""
    from ..models import adapter_for

    extra = {"use_cache": False} if adapter_for(model).arch(model).is_decoder else {}
    sums = None
    count = 0
    for start in range(0, len(windows), batch_size):
        out = model(input_ids=windows[start : start + batch_size], output_hidden_states=True, **extra)
        hs = out.hidden_states
        cos = [nn.functional.cosine_similarity(hs[i].float(), hs[i + 1].float(), dim=-1) for i in range(len(hs) - 1)]
        vals = torch.stack([(1 - c).sum() for c in cos])
        sums = vals if sums is None else sums + vals
        count += hs[0].shape[0] * hs[0].shape[1]
    return (sums / count).tolist()


def drop_order(rule: str, num_layers: int, influence: Sequence[float] | None = None,
               indices: Sequence[int] = ()) -> list[int]:
    """Layers in the order they are dropped. The first and last layers go last under 'influence'
    only if they really are the least influential; 'top' drops from the second-to-last downwards."""
    if rule == "top":
        return list(range(num_layers - 2, -1, -1))
    if rule == "indices":
        bad = [i for i in indices if not 0 <= i < num_layers]
        if bad or len(set(indices)) != len(indices):
            raise UserError(f"layer indices {list(indices)} must be distinct and in [0, {num_layers})")
        return list(indices)
    if rule == "influence":
        if influence is None:
            raise UserError("rule 'influence' needs calibration data")
        return sorted(range(num_layers), key=lambda i: influence[i])
    raise UserError(f"unknown LayerChop rule {rule!r}", f"choose one of: {', '.join(RULES)}")


def chop_for_target(table: LatencyTable, order: Sequence[int], target: float) -> ModelShape | None:
    """Drop layers in ``order`` until the predicted speedup reaches ``target``; None if it never does."""
    dense = table.dense_shape()
    budget = table.predict(dense) / target
    layers = list(dense.layers)
    for i in order:
        if table.predict(ModelShape(tuple(layers))) <= budget:
            break
        if sum(not s.dropped for s in layers) == 1:
            return None
        layers[i] = LayerShape(dropped=True)
    shape = ModelShape(tuple(layers))
    return shape if table.predict(shape) <= budget else None
