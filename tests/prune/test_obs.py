"""Property tests of structured OBS against exact least squares (see shared/research/algorithms.md §1)."""

from __future__ import annotations

import pytest
import torch

from ziplm_deploy.prune.obs import (accumulate_hessian, geometric, obs_greedy, obs_grouped_heads, output_energy,
                                    reconstruct)


def _problem(seed, out=7, groups=6, group=3, tokens=200):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(groups * group, tokens, generator=g, dtype=torch.float64)
    x[2] *= 5.0  # uneven input scales make the greedy order non-trivial
    w = torch.randn(out, groups * group, generator=g, dtype=torch.float64)
    h = 2 * x @ x.T / tokens
    return w, h, x


def _lstsq_error(w, x, cols):
    """min over Ŵ (supported on cols) of ||W X − Ŵ X_cols||² / N, and the minimiser."""
    n = x.shape[1]
    if not cols:
        return float((w @ x).pow(2).sum()) / n, None
    xk = x[cols]
    sol = torch.linalg.lstsq(xk.T, (w @ x).T).solution.T  # (out, K)
    return float((w @ x - sol @ xk).pow(2).sum()) / n, sol


@pytest.mark.parametrize("chunked", [False, True], ids=["one-at-a-time", "several-per-step"])
@pytest.mark.parametrize("group", [1, 3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_loss_equals_least_squares_error_at_every_level(group, seed, chunked):
    w, h, x = _problem(seed, groups=18 // group, group=group)
    n = 18 // group
    steps = {"per_step": geometric(0.3)} if chunked else {}
    levels = obs_greedy(w, h, group, range(n + 1) if not chunked else sorted({n, n // 2 + 1, 2, 1, 0}), damp=0.0, **steps)
    assert sorted(levels) == (list(range(n + 1)) if not chunked else sorted({n, n // 2 + 1, 2, 1, 0}))
    previous = set(range(n))
    for k in sorted(levels, reverse=True):
        level = levels[k]
        assert len(level.kept) == k and set(level.kept) <= previous  # nested
        previous = set(level.kept)
        cols = [c for gid in level.kept for c in range(gid * group, (gid + 1) * group)]
        err, sol = _lstsq_error(w, x, cols)
        assert level.loss == pytest.approx(err, rel=1e-8, abs=1e-9)
        if cols:
            assert torch.allclose(reconstruct(w, h, cols, damp=0.0), sol, atol=1e-9)
    assert levels[0].loss == pytest.approx(output_energy(w, h), rel=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_heads_within_kv_groups_levels_are_exact_and_even(seed):
    """Every (kv groups, heads per group) level keeps the same number of heads in each kept group, its
    groups are the greedy group chain's, and its loss is the least-squares error of its kept columns."""
    head_dim, group, n_groups = 2, 3, 3
    w, h, x = _problem(seed, groups=n_groups * group, group=head_dim)
    levels = obs_grouped_heads(w, h, head_dim, group, damp=0.0)
    assert sorted(levels) == [(0, 0)] + [(kv, per) for kv in range(1, n_groups + 1) for per in range(1, group + 1)]
    chain = obs_greedy(w, h, group * head_dim, range(n_groups + 1), damp=0.0)
    for (kv, per), level in levels.items():
        groups = {}
        for head in level.kept:
            groups[head // group] = groups.get(head // group, 0) + 1
        assert sorted(groups) == sorted(chain[kv].kept) and set(groups.values()) <= {per}
        assert len(level.kept) == kv * per
        cols = [head * head_dim + c for head in level.kept for c in range(head_dim)]
        err, sol = _lstsq_error(w, x, cols)
        assert level.loss == pytest.approx(err, rel=1e-8, abs=1e-9), (kv, per)
    for kv in range(1, n_groups + 1):  # nested within a number of kept groups, loss non-decreasing
        for per in range(group, 1, -1):
            assert set(levels[(kv, per - 1)].kept) < set(levels[(kv, per)].kept)
            assert levels[(kv, per - 1)].loss >= levels[(kv, per)].loss - 1e-12
    assert levels[(n_groups, group)].loss == pytest.approx(0.0, abs=1e-12)


def test_heads_within_kv_groups_find_the_useless_head():
    """A head whose inputs are zero costs nothing: the first round of its group removes it."""
    head_dim, group = 2, 3
    w, h, x = _problem(5, groups=2 * group, group=head_dim)
    x[4:6] = 0.0  # head 2 (group 0, last head) is dead
    h = 2 * x @ x.T / x.shape[1]
    levels = obs_grouped_heads(w, h, head_dim, group, damp=0.0)
    assert 2 not in levels[(2, 2)].kept


def test_obs_weights_equal_least_squares_weights():
    """Re-run the greedy updates by hand for 2 removals and compare W with the lstsq weights."""
    w, h, x = _problem(3, groups=5, group=2)
    levels = obs_greedy(w, h, 2, [3], damp=0.0)
    cols = [c for gid in levels[3].kept for c in (2 * gid, 2 * gid + 1)]
    _, sol = _lstsq_error(w, x, cols)
    assert torch.allclose(reconstruct(w, h, cols, damp=0.0), sol, atol=1e-9)


def test_damped_reconstruction_is_ridge_least_squares():
    w, h, x = _problem(4, groups=6, group=1)
    damp = 0.1
    lam = damp * torch.diagonal(h).mean()
    cols = [0, 2, 5]
    hk = h[cols][:, cols] + lam * torch.eye(3, dtype=h.dtype)
    ridge = (w @ (h[:, cols] + lam * torch.eye(6, dtype=h.dtype)[:, cols])) @ torch.linalg.inv(hk)
    assert torch.allclose(reconstruct(w, h, cols, damp=damp), ridge, atol=1e-10)


def test_greedy_removes_the_cheapest_group_first():
    w, h, _ = _problem(5, groups=4, group=1)
    w[:, 1] *= 1e-4  # nearly useless column
    levels = obs_greedy(w, h, 1, [3], damp=0.0)
    assert levels[3].kept == (0, 2, 3)


def test_dead_inputs_are_dropped_for_free():
    w, h, _ = _problem(6, groups=5, group=1)
    h[3, :] = 0
    h[:, 3] = 0
    levels = obs_greedy(w, h, 1, [4], damp=0.01)
    assert 3 not in levels[4].kept and levels[4].loss == pytest.approx(0.0, abs=1e-12)


def test_running_hessian_equals_batch_hessian():
    x = torch.randn(2, 37, 5, dtype=torch.float64)
    h, n = torch.zeros(5, 5, dtype=torch.float64), 0
    for chunk in (x[:1], x[1:, :10], x[1:, 10:]):
        h, n = accumulate_hessian(h, n, chunk)
    flat = x.reshape(-1, 5)
    assert n == 74 and torch.allclose(h, 2 * flat.T @ flat / 74)
