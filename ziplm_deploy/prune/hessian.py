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


class _StopForward(Exception):
    pass


def _to(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_to(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


@torch.no_grad()
def first_layer_inputs(model: nn.Module, windows: torch.Tensor,
                       batch_size: int = 4) -> tuple[list[torch.Tensor], list[tuple[tuple, dict]]]:
    """Per batch of ``windows``: the hidden states entering the first transformer block, and the other
    arguments the model passes to every block (masks, position embeddings), captured without running
    any block."""
    adapter = adapter_for(model)
    extra = {"use_cache": False} if adapter.arch(model).is_decoder else {}
    captured: list[tuple[tuple, dict]] = []

    def catch(module, args, kwargs):
        captured.append((args, kwargs))
        raise _StopForward

    handle = adapter.layers(model)[0].register_forward_pre_hook(catch, with_kwargs=True)
    try:
        for start in range(0, len(windows), batch_size):
            try:
                model(input_ids=windows[start : start + batch_size], **extra)
            except _StopForward:
                pass
    finally:
        handle.remove()
    hidden = [args[0] if args else kwargs["hidden_states"] for args, kwargs in captured]
    rest = [(args[1:], {k: v for k, v in kwargs.items() if k != "hidden_states"}) for args, kwargs in captured]
    return hidden, rest


def run_layer(layer: nn.Module, hidden: torch.Tensor, args: tuple, kwargs: dict,
              device: str | torch.device | None = None) -> torch.Tensor:
    """One block on one batch (on ``device`` if given); its output hidden states, where ``hidden`` was."""
    if device is not None:
        hidden, args, kwargs = _to(hidden, device), _to(args, device), _to(kwargs, device)
    y = layer(hidden, *args, **kwargs)
    return y[0] if isinstance(y, tuple) else y


@torch.no_grad()
def collect_hessians_sequential(model: nn.Module, windows: torch.Tensor, device: str | torch.device = "cpu",
                                batch_size: int = 4, progress: bool = True) -> list[LayerHessians]:
    """Same Hessians as ``collect_hessians``, but one transformer block on ``device`` at a time.

    The inputs of the first block are captured once (with the arguments the model passes to it:
    masks, position embeddings); then each block in turn is moved to ``device``, run on every batch
    with hooks on its output projections, and its outputs become the next block's inputs. The rest of
    the model stays where it is, so a model larger than the accelerator still fits.
    """
    adapter = adapter_for(model)
    layers = adapter.layers(model)
    model.eval()
    hidden, rest = first_layer_inputs(model, windows, batch_size)
    out: list[LayerHessians] = []
    for layer in tqdm(layers, desc="calibration (Hessians, block by block)", disable=not progress, leave=False):
        home = next(layer.parameters()).device
        layer.to(device)
        slots = {kind: [None, 0] for kind, proj in (("attn", adapter.attn_out_proj(layer)),
                                                      ("ffn", adapter.ffn_out_proj(layer))) if proj is not None}
        handles = []
        for kind, proj in (("attn", adapter.attn_out_proj(layer)), ("ffn", adapter.ffn_out_proj(layer))):
            if proj is not None:
                def fn(module, args, slot=slots[kind]):
                    x = args[0].detach().float()
                    if slot[0] is None:
                        slot[0] = torch.zeros(x.shape[-1], x.shape[-1], dtype=torch.float32, device=x.device)
                    slot[0], slot[1] = accumulate_hessian(slot[0], slot[1], x)
                handles.append(proj.register_forward_pre_hook(fn))
        try:
            for b, (h, (args, kwargs)) in enumerate(zip(hidden, rest)):
                hidden[b] = run_layer(layer, h, args, kwargs, device).to(h.device)
        finally:
            for hd in handles:
                hd.remove()
            layer.to(home)
        attn, ffn = slots.get("attn"), slots.get("ffn")
        out.append(LayerHessians(attn[0].cpu() if attn else None, ffn[0].cpu() if ffn else None,
                                 (attn or ffn or [None, 0])[1]))
    return out
