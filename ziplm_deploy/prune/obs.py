"""Structured OBS (ZipLM): pure functions on a layer's weight W (out, in) and input Hessian H (in, in).

``H = 2 X Xᵀ / N`` for the layer input X (columns = tokens). Removing a group S of input columns
(a head = ``head_dim`` consecutive columns, a GQA KV group = ``group_size * head_dim``, a neuron = one)
costs ``score_S / 2`` with ``score_S = Σ_rows W[r,S] ((H⁻¹)_SS)⁻¹ W[r,S]ᵀ``, and the remaining columns
are updated to compensate: ``W -= W[:,S] ((H⁻¹)_SS)⁻¹ (H⁻¹)_S,:``, ``H⁻¹ -= (H⁻¹)_:,S ((H⁻¹)_SS)⁻¹ (H⁻¹)_S,:``.
Greedy removal of the cheapest group, repeated, gives nested levels; at every level the OBS weights
equal the least-squares reconstruction from the kept columns (``reconstruct``), so a level is stored
as its kept groups and loss only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch


@dataclass(frozen=True)
class ObsLevel:
    kept: tuple[int, ...]  # kept group indices, ascending
    loss: float  # cumulative OBS loss: ||(W - Ŵ) X||² / N under the (dampened) Hessian


def accumulate_hessian(h: torch.Tensor, count: int, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Running mean of ``2 x xᵀ`` over tokens; ``x`` is (..., in). Returns the new (H, token count)."""
    x = x.reshape(-1, x.shape[-1]).to(h.dtype)
    n = x.shape[0]
    total = count + n
    h.mul_(count / total).addmm_(x.T, x, alpha=2.0 / total)
    return h, total


def prepare_hessian(h: torch.Tensor, w: torch.Tensor, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Dead inputs (``H_ii == 0``) get ``H_ii = 1`` and zero weight; then ``H += damp · mean(diag H) · I``."""
    h, w = h.clone(), w.clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    if damp > 0:
        h.diagonal().add_(damp * torch.diagonal(h).mean())
    return h, w


def output_energy(w: torch.Tensor, h: torch.Tensor) -> float:
    """``||W X||² / N = ½ tr(W H Wᵀ)``: the loss of removing everything; normalises losses across layers."""
    return 0.5 * float(torch.einsum("ri,ij,rj->", w, h, w))


def group_scores(w: torch.Tensor, hinv: torch.Tensor, group: int) -> torch.Tensor:
    """OBS score of every group of ``group`` consecutive columns of the (compacted) W / H⁻¹."""
    n = w.shape[1] // group
    if group == 1:
        return (w * w).sum(dim=0) / torch.diagonal(hinv)
    idx = torch.arange(n * group, device=w.device).view(n, group)
    blocks = hinv[idx[:, :, None], idx[:, None, :]]  # (n, g, g)
    wg = w.view(w.shape[0], n, group)  # (out, n, g)
    solved = torch.linalg.solve(blocks, wg.permute(1, 2, 0))  # (n, g, out)
    return torch.einsum("rng,ngr->n", wg, solved)


def one_at_a_time(alive: int) -> int:
    return 1


def geometric(fraction: float = 1 / 32) -> Callable[[int], int]:
    """Remove ``ceil(fraction · alive)`` groups per step: ~``ln(n)/fraction`` steps instead of n."""
    return lambda alive: max(1, int(alive * fraction))


def obs_greedy(w: torch.Tensor, h: torch.Tensor, group: int, levels: Sequence[int], damp: float = 0.01,
               progress: Callable[[int], None] | None = None,
               per_step: Callable[[int], int] = one_at_a_time) -> dict[int, ObsLevel]:
    """Greedy structured OBS: remove the cheapest group(s), update, repeat; snapshot at each level.

    Returns ``{groups_kept: ObsLevel}`` for every requested level. ``per_step(alive)`` groups are
    removed jointly per step (the k cheapest by score, with the exact joint OBS update, never past the
    next level), so loss and weights stay exact for the kept set; only the choice is approximate.
    Computes in the dtype of ``w`` (float64 for exactness tests); the matrices shrink as groups go.
    """
    n = w.shape[1] // group
    if w.shape[1] != n * group or h.shape != (w.shape[1], w.shape[1]):
        raise ValueError(f"W {tuple(w.shape)} and H {tuple(h.shape)} do not fit groups of {group}")
    wanted = sorted({int(k) for k in levels if 0 <= k <= n}, reverse=True)
    h, w = prepare_hessian(h.to(w.dtype), w, damp)
    hinv = torch.cholesky_inverse(torch.linalg.cholesky(h))
    alive = list(range(n))  # original group ids, in the order of the compacted columns
    loss = 0.0
    out: dict[int, ObsLevel] = {}
    if wanted and wanted[0] == n:
        out[n] = ObsLevel(tuple(alive), 0.0)
    stop = wanted[-1] if wanted else n
    while len(alive) > stop:
        next_level = max(k for k in wanted if k < len(alive))
        k = max(1, min(per_step(len(alive)), len(alive) - next_level))
        scores = group_scores(w, hinv, group)
        drop = torch.topk(scores, k, largest=False).indices if k > 1 else torch.argmin(scores).view(1)
        drop_groups = sorted(int(j) for j in drop)
        w, hinv, removed = _remove_groups(w, hinv, drop_groups, group)
        loss += removed
        for j in reversed(drop_groups):
            del alive[j]
        if progress:
            progress(k)
        if len(alive) in wanted:
            out[len(alive)] = ObsLevel(tuple(sorted(alive)), loss)
    return out


def _remove_groups(w: torch.Tensor, hinv: torch.Tensor, groups: Sequence[int],
                   group: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Jointly remove the given groups (positions in the compacted columns) with the exact OBS update.
    Returns the compacted (W, H⁻¹) and the loss it adds."""
    cols = torch.tensor([j * group + c for j in groups for c in range(group)], device=w.device)
    w_s = w[:, cols]
    inv_ss = torch.linalg.inv(hinv[cols][:, cols])
    row = inv_ss @ hinv[cols]  # (k·g, in)
    loss = 0.5 * float(torch.einsum("ri,ij,rj->", w_s, inv_ss, w_s))
    w = w - w_s @ row
    hinv = hinv - hinv[:, cols] @ row
    mask = torch.ones(w.shape[1], dtype=torch.bool, device=w.device)
    mask[cols] = False
    return w[:, mask], hinv[mask][:, mask], loss


def obs_grouped_heads(w: torch.Tensor, h: torch.Tensor, head_dim: int, group: int, damp: float = 0.01,
                      progress: Callable[[int], None] | None = None) -> dict[tuple[int, int], ObsLevel]:
    """Structured OBS for GQA attention with query heads removed *within* kept KV groups.

    The input columns of the output projection are ``n_groups`` KV groups of ``group`` query heads of
    ``head_dim`` columns. Returns ``{(kv_groups_kept, heads_per_group): ObsLevel(kept query heads, loss)}``
    for every ``kv`` in 1..n_groups and ``per`` in 1..group, plus ``(0, 0)``. Whole groups go first, by
    the greedy group chain (``obs_greedy`` on groups); from each kept set of groups, rounds remove the
    cheapest remaining head of every kept group (exact OBS updates), so each level has the same number of
    heads in every kept group, as GQA requires. Losses are exact for the kept set (= ``reconstruct``).
    """
    n_groups = w.shape[1] // (group * head_dim)
    if w.shape[1] != n_groups * group * head_dim:
        raise ValueError(f"W {tuple(w.shape)} does not fit {group}-head groups of {head_dim} columns")
    chain = obs_greedy(w, h, group * head_dim, range(n_groups + 1), damp=damp, progress=progress)
    out = {(0, 0): ObsLevel((), chain[0].loss)}
    hp, wp = prepare_hessian(h.to(w.dtype), w, damp)
    for kv in range(1, n_groups + 1):
        kept_groups = chain[kv].kept
        alive = [g * group + j for g in kept_groups for j in range(group)]  # query heads, compacted order
        cols = torch.tensor([a * head_dim + c for a in alive for c in range(head_dim)], device=w.device)
        hinv = torch.cholesky_inverse(torch.linalg.cholesky(hp[cols][:, cols]))
        wk = torch.linalg.solve(hp[cols][:, cols], (wp @ hp[:, cols]).T).T  # OBS weights of the kept groups
        loss = chain[kv].loss
        out[(kv, group)] = ObsLevel(tuple(alive), loss)
        for per in range(group - 1, 0, -1):
            for g in kept_groups:
                members = [i for i, a in enumerate(alive) if a // group == g]
                scores = group_scores(wk, hinv, head_dim)[members]
                j = members[int(torch.argmin(scores))]
                wk, hinv, removed = _remove_groups(wk, hinv, [j], head_dim)
                loss += removed
                del alive[j]
                if progress:
                    progress(1)
            out[(kv, per)] = ObsLevel(tuple(sorted(alive)), loss)
    return out


def reconstruct(w: torch.Tensor, h: torch.Tensor, kept_cols: Sequence[int], damp: float = 0.01) -> torch.Tensor:
    """Least-squares weights for the kept input columns: ``Ŵ_K = W H_{:,K} (H_KK)⁻¹`` (dampened H).

    Equal to the OBS-updated weights of the same kept set; ``(out, len(kept_cols))``.
    """
    h, w = prepare_hessian(h.to(w.dtype), w, damp)
    k = torch.as_tensor(list(kept_cols), dtype=torch.long, device=w.device)
    if k.numel() == 0:
        return w[:, :0].clone()
    rhs = (w @ h[:, k]).T  # (K, out)
    return torch.linalg.solve(h[k][:, k], rhs).T.contiguous()
