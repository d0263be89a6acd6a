"""Which layers' FFN output projections to keep fp32 in an int8 model (``int8-dynamic/fp32-down=L,...``).

ONNX Runtime's dynamic int8 quantizes a MatMul's input per tensor at run time (one uint8 scale for the whole
call). Where a few tokens carry massive activations (the first token of each window in SmolLM2, 10^5-10^6x the
median in some layers), that one scale leaves almost no resolution for every other token. The FFN output
projection's input is where they enter; this measures, for each layer, the relative error of quantizing that
input exactly as ``DynamicQuantizeLinear`` does (asymmetric uint8 over [min(x, 0), max(x, 0)]), one window per
call as at batch 1, and ranks the layers by it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class DownInputError:
    layer: int  # dense-model index
    error: float  # mean over windows and tokens of |q(x_t) - x_t| / |x_t|, x the output projection's input


def uint8_dynamic_error(x: torch.Tensor) -> float:
    """Mean over tokens (every position of the leading dims) of each token's relative error when ``x`` is
    quantized as ONNX Runtime's per-tensor dynamic uint8 does: one massive token sets the scale and every other
    token loses its resolution (a whole-tensor norm would hide that behind the massive token's own size)."""
    x = x.float().reshape(-1, x.shape[-1])
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = (hi - lo) / 255.0
    if scale == 0.0:
        return 0.0
    zero = round(-lo / scale)
    q = (torch.clamp(torch.round(x / scale) + zero, 0, 255) - zero) * scale
    norms = x.norm(dim=-1)
    live = norms > 0
    if not bool(live.any()):
        return 0.0
    return float(((q - x).norm(dim=-1)[live] / norms[live]).mean())


@torch.no_grad()
def down_input_errors(model: Any, windows: torch.Tensor) -> list[DownInputError]:
    """Each layer's FFN output projection input error on ``windows`` (n, seq), one window per forward pass.
    Layers without an FFN (pruned to 0, dropped) are left out; indices are the dense model's."""
    from ..models import adapter_for

    adapter = adapter_for(model)
    shape = adapter.shape_of(model)
    live = [i for i, layer in enumerate(shape.layers) if not layer.dropped]
    errors: dict[int, list[float]] = {}
    hooks = []
    for physical, layer in enumerate(adapter.layers(model)):
        proj = adapter.ffn_out_proj(layer)
        if proj is None or shape.layers[live[physical]].ffn == 0:
            continue
        dense_index = live[physical]
        hooks.append(proj.register_forward_hook(
            lambda _m, inp, _out, i=dense_index: errors.setdefault(i, []).append(uint8_dynamic_error(inp[0]))))
    try:
        for k in range(len(windows)):
            model(input_ids=windows[k : k + 1])
    finally:
        for h in hooks:
            h.remove()
    return [DownInputError(i, sum(v) / len(v)) for i, v in sorted(errors.items())]


def pick_layers(errors: list[DownInputError], count: int) -> tuple[int, ...]:
    """The ``count`` layers with the largest error, in layer order."""
    worst = sorted(errors, key=lambda e: (-e.error, e.layer))[:count]
    return tuple(sorted(e.layer for e in worst))
