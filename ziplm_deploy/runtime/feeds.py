"""Synthetic inputs for timing a model from its input signature (no tokenizer, no torch)."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from ..core.errors import UserError
from .base import TensorInfo


def synthetic_feeds(inputs: tuple[TensorInfo, ...], dims: Mapping[str, int], vocab: int = 1000,
                    seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs for one call. ``dims`` gives symbolic axes: batch, seq (query tokens), past, total.

    ``input_ids`` are random tokens below ``vocab``, ``attention_mask`` ones over past + new tokens,
    ``position_ids`` continue after the cache, masks named ``mask`` are additive zeros, and other floating
    inputs (hidden states, KV caches, RoPE tables) are random normal.
    """
    rng = np.random.default_rng(seed)
    batch, seq = dims["batch"], dims["seq"]
    past = dims.get("past", 0)
    feeds: dict[str, np.ndarray] = {}
    for info in inputs:
        name = info.name
        if name == "input_ids":
            feeds[name] = rng.integers(0, vocab, (batch, seq), dtype=np.int64).astype(info.dtype)
            continue
        if name == "attention_mask":
            feeds[name] = np.ones((batch, past + seq), dtype=info.dtype)
            continue
        if name == "position_ids":
            feeds[name] = np.tile(np.arange(past, past + seq, dtype=info.dtype), (batch, 1))
            continue
        shape = []
        for axis, dim in enumerate(info.shape):
            if isinstance(dim, int) and dim > 0:
                shape.append(dim)
            elif isinstance(dim, str) and dim in dims:
                shape.append(dims[dim])
            elif "past" in name and axis == 2:
                shape.append(past)
            elif axis == 0:
                shape.append(batch)
            elif axis == 1:
                shape.append(seq)
            else:
                raise UserError(f"cannot size dynamic axis {axis} ({dim!r}) of input {name!r}",
                                "name the axis batch/seq/past/total when exporting")
        if np.issubdtype(info.dtype, np.floating):
            arr = np.zeros(shape) if "mask" in name else rng.standard_normal(shape)
            feeds[name] = arr.astype(info.dtype)
        else:
            feeds[name] = np.zeros(shape, dtype=info.dtype)
    return feeds
