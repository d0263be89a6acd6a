"""Which entries a latency table measures, and random non-uniform shapes for checking it."""

from __future__ import annotations

import numpy as np

from ..core.arch import ArchSpec
from ..core.errors import UserError
from ..core.shape import LayerShape, ModelShape, ffn_linear_dims, ffn_roles


def attention_grid(arch: ArchSpec) -> list[tuple[int, int]]:
    """Every (heads, kv_heads) a pruned layer can have: all head counts; with GQA, every number of kept
    KV groups times every number of query heads per group."""
    if arch.kv_heads == arch.heads:
        return [(h, h) for h in range(arch.heads + 1)]
    return [(0, 0)] + sorted((kv * r, kv) for kv in range(1, arch.kv_heads + 1) for r in range(1, arch.group_size + 1))


def ffn_grid(width: int, step: int) -> list[int]:
    """0, step, 2*step, ... and the dense ``width``."""
    if step < 1:
        raise UserError(f"FFN grid step must be >= 1, got {step}")
    return sorted({0, width, *range(step, width, step)})


def rank_grid(n_in: int, n_out: int, step: int) -> list[int]:
    """step, 2*step, ... up to and including min(n_in, n_out): the ranks a factorised Linear is timed at."""
    if step < 1:
        raise UserError(f"rank grid step must be >= 1, got {step}")
    top = min(n_in, n_out)
    return sorted({top, *range(step, top, step)})


def vocab_grid(vocab: int, step: int) -> list[int]:
    """step, 2*step, ... below ``vocab``: the output-token counts a trimmed LM head is timed at."""
    if step < 1:
        raise UserError(f"vocabulary grid step must be >= 1, got {step}")
    if step >= vocab:
        raise UserError(f"vocabulary grid step {step} leaves no trimmed head below the vocabulary of {vocab}",
                        f"use a step below {vocab}, e.g. {max(1, vocab // 12)}")
    return list(range(step, vocab, step))


def check_vocab_step(step: int, arch: ArchSpec) -> None:
    """Refuse, before any timing, a trimmed-head grid the model cannot have."""
    if not step:
        return
    if not arch.is_decoder:
        raise UserError(f"--vocab-step: a {arch.family} model has no LM head to trim", "drop --vocab-step")
    vocab_grid(arch.vocab, step)


def random_shape(arch: ArchSpec, rng: np.random.Generator, p_zero: float = 0.15, p_drop: float = 0.05,
                 p_rank: float = 0.0) -> ModelShape:
    """A random non-uniform shape: per layer random head count and FFN width (off-grid), some blocks
    removed (0) and some layers dropped; never all layers dropped. With ``p_rank`` a layer instead keeps
    its dense FFN with some of its Linears factorised (FLOP) to random ranks."""
    layers = []
    for _ in range(arch.num_layers):
        if rng.random() < p_drop:
            layers.append(LayerShape(dropped=True))
            continue
        if rng.random() < p_zero:
            heads, kv = 0, 0
        elif arch.kv_heads == arch.heads:
            heads = int(rng.integers(1, arch.heads + 1))
            kv = heads
        else:
            kv = int(rng.integers(1, arch.kv_heads + 1))
            heads = kv * int(rng.integers(1, arch.group_size + 1))
        ffn = 0 if rng.random() < p_zero else int(rng.integers(1, arch.ffn + 1))
        ranks: tuple[tuple[str, int], ...] = ()
        if p_rank > 0 and rng.random() < p_rank:  # no extra draw without ranks: seeds keep their shapes
            ffn = arch.ffn
            roles = [r for r in ffn_roles(arch) if rng.random() < 0.7] or [ffn_roles(arch)[-1]]
            ranks = tuple((r, int(rng.integers(1, min(ffn_linear_dims(arch, r, ffn)) + 1))) for r in sorted(roles))
        layers.append(LayerShape(heads, ffn, kv if arch.kv_heads != arch.heads else None, ranks=ranks))
    if all(layer.dropped for layer in layers):
        layers[0] = LayerShape(arch.heads, arch.ffn, arch.kv_heads if arch.kv_heads != arch.heads else None)
    return ModelShape(tuple(layers)).validate(arch)
