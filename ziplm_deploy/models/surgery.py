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


class LowRankLinear(nn.Module):
    """A Linear factorised to rank ``r`` (FLOP): ``second(first(x))``, ``first``: in -> r without bias,
    ``second``: r -> out with the original bias. Stored as ``<name>.first.weight``, ``<name>.second.weight``,
    ``<name>.second.bias``; exports to ONNX as two MatMuls."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool,
                 dtype: torch.dtype | None = None, device: torch.device | None = None):
        super().__init__()
        self.first = nn.Linear(in_features, rank, bias=False, dtype=dtype, device=device)
        self.second = nn.Linear(rank, out_features, bias=bias, dtype=dtype, device=device)

    @property
    def in_features(self) -> int:
        return self.first.in_features

    @property
    def out_features(self) -> int:
        return self.second.out_features

    @property
    def rank(self) -> int:
        return self.first.out_features

    @property
    def bias(self) -> torch.Tensor | None:
        return self.second.bias

    def dense_weight(self) -> torch.Tensor:
        """The (out, in) product matrix (a copy: writing to it changes nothing)."""
        return self.second.weight.detach() @ self.first.weight.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))

    @staticmethod
    def from_factors(first: torch.Tensor, second: torch.Tensor, bias: torch.Tensor | None) -> "LowRankLinear":
        """From ``first`` (r, in) and ``second`` (out, r) weight matrices."""
        r, n_in = first.shape
        out = LowRankLinear(n_in, second.shape[0], r, bias is not None, dtype=first.dtype, device=first.device)
        with torch.no_grad():
            out.first.weight.copy_(first)
            out.second.weight.copy_(second)
            if bias is not None:
                out.second.bias.copy_(bias)
        return out

    @staticmethod
    def from_svd(weight: torch.Tensor, bias: torch.Tensor | None, rank: int) -> "LowRankLinear":
        """The best rank-``rank`` approximation of an (out, in) ``weight`` (truncated SVD, split as √S)."""
        u, s, vh = torch.linalg.svd(weight.detach().double(), full_matrices=False)
        root = s[:rank].sqrt()
        return LowRankLinear.from_factors((root[:, None] * vh[:rank]).to(weight.dtype),
                                          (u[:, :rank] * root).to(weight.dtype), bias)
