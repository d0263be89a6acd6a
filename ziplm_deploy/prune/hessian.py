"""Input Hessians of every attention output projection and FFN down projection, from calibration data."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ..models import adapter_for
from .obs import accumulate_hessian


@dataclass
class LayerHessians:
    attn: torch.Tensor | None  # (heads*head_dim)², None if the layer has no attention
    ffn: torch.Tensor | None  # (ffn)²
    tokens: int


@torch.no_grad()
def collect_hessians(model: nn.Module, windows: torch.Tensor, batch_size: int = 4,
                     progress: bool = True) -> list[LayerHessians]:
    """``H = 2 X Xᵀ / N`` (fp32, running mean) of the inputs of each live layer's output projections,
    on the unpruned model's own activations (one forward pass per batch, hooks on every layer)."""
    adapter = adapter_for(model)
    extra = {"use_cache": False} if adapter.arch(model).is_decoder else {}
    model.eval()
    device = next(model.parameters()).device
    state: list[dict[str, list]] = []
    handles = []

    def hook(slot: list):
        def fn(module, args):
            x = args[0].detach().float()
            if slot[0] is None:
                slot[0] = torch.zeros(x.shape[-1], x.shape[-1], dtype=torch.float32, device=x.device)
            slot[0], slot[1] = accumulate_hessian(slot[0], slot[1], x)

        return fn

    for layer in adapter.layers(model):
        entry = {}
        for kind, proj in (("attn", adapter.attn_out_proj(layer)), ("ffn", adapter.ffn_out_proj(layer))):
            if proj is not None:
                entry[kind] = [None, 0]
                handles.append(proj.register_forward_pre_hook(hook(entry[kind])))
        state.append(entry)
    try:
        for start in tqdm(range(0, len(windows), batch_size), desc="calibration (Hessians)", disable=not progress,
                          leave=False):
            model(input_ids=windows[start : start + batch_size].to(device), **extra)
    finally:
        for h in handles:
            h.remove()
    out = []
    for entry in state:
        attn, ffn = entry.get("attn"), entry.get("ffn")
        out.append(LayerHessians(attn[0] if attn else None, ffn[0] if ffn else None,
                                 (attn or ffn or [None, 0])[1]))
    return out
