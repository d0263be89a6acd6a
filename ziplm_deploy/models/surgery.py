"""Family-independent tensor surgery: in-place slicing that keeps dtype, device and requires_grad."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def _index(idx: Sequence[int], device: torch.device) -> torch.Tensor:
    return torch.as_tensor(list(idx), dtype=torch.long, device=device)


def slice_param(module: nn.Module, name: str, dim: int, idx: Sequence[int]) -> None:
    param = getattr(module, name)
    if param is None:
        return
    new = param.detach().index_select(dim, _index(idx, param.device)).clone()
    setattr(module, name, nn.Parameter(new, requires_grad=param.requires_grad))


def slice_linear_out(lin: nn.Linear, idx: Sequence[int]) -> None:
    """Keep output features ``idx`` (rows of weight, entries of bias)."""
    slice_param(lin, "weight", 0, idx)
    slice_param(lin, "bias", 0, idx)
    lin.out_features = len(idx)


def slice_linear_in(lin: nn.Linear, idx: Sequence[int]) -> None:
    """Keep input features ``idx`` (columns of weight)."""
    slice_param(lin, "weight", 1, idx)
    lin.in_features = len(idx)


def slice_conv1d_out(conv: nn.Module, idx: Sequence[int]) -> None:
    """GPT-2 ``Conv1D`` stores weight as (in, out): output features are columns."""
    slice_param(conv, "weight", 1, idx)
    slice_param(conv, "bias", 0, idx)
    conv.nf = len(idx)


def slice_conv1d_in(conv: nn.Module, idx: Sequence[int]) -> None:
    slice_param(conv, "weight", 0, idx)
    if hasattr(conv, "nx"):
        conv.nx = len(idx)


def head_columns(heads: Sequence[int], head_dim: int) -> list[int]:
    """Feature indices of the given heads, in order: head h owns [h*d, (h+1)*d)."""
    return [h * head_dim + j for h in heads for j in range(head_dim)]


def group_norms(weight_cols: torch.Tensor, group: int) -> torch.Tensor:
    """L2 norm of each consecutive block of ``group`` input columns of a (out, in) matrix."""
    w = weight_cols.detach().float()
    return w.reshape(w.shape[0], -1, group).pow(2).sum(dim=(0, 2)).sqrt()


class RemovedBlock(nn.Module):
    """Stands in for a fully removed attention or FFN block: returns a constant, computes nothing.

    ``bias`` is the output projection's bias (what a zero-width block would still add), or absent when
    the projection had none; then the block adds zero. Returned as a broadcastable tensor, never a
    zero-width one, so the residual add, ONNX export and the KV cache all stay well-defined.
    """

    def __init__(self, bias: torch.Tensor | None, returns_tuple: bool):
        super().__init__()
        self.returns_tuple = returns_tuple
        if bias is not None:
            self.bias = nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad)
        else:
            self.bias = None

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        out = self.bias if self.bias is not None else hidden_states.new_zeros(())
        return (out, None) if self.returns_tuple else out


class PostLNRemovedBlock(nn.Module):
    """A removed block in a post-LayerNorm model (BERT): ``LayerNorm(residual + bias)``.

    Called with the residual as its last positional argument (``BertSelfOutput(h, input)`` style) or,
    for attention, with the hidden states as its first one.
    """

    def __init__(self, bias: torch.Tensor, layer_norm: nn.LayerNorm, returns_tuple: bool):
        super().__init__()
        self.returns_tuple = returns_tuple
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad)
        self.LayerNorm = layer_norm

    def forward(self, *args, **kwargs):
        residual = args[0] if self.returns_tuple else args[-1]
        out = self.LayerNorm(residual + self.bias)
        return (out, None) if self.returns_tuple else out


class PassThrough(nn.Module):
    """Returns its first argument; stands in for a first half of a removed FFN (BERT intermediate)."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return hidden_states
