"""The DP against brute force, and budgets always met (torch-free module)."""

from __future__ import annotations

import random

import pytest

from ziplm_deploy.prune.search import Option, brute_force, dp_select


def _instance(seed, modules=4, options=4):
    rng = random.Random(seed)
    out = []
    for _ in range(modules):
        times = sorted(rng.uniform(0.1, 3.0) for _ in range(options - 1)) + [0.05]
        costs = sorted((rng.uniform(0, 1) for _ in range(options - 1))) + [rng.uniform(1, 2)]
        out.append([Option(i, t, c) for i, (t, c) in enumerate(zip(sorted(times, reverse=True), costs))])
    return out


@pytest.mark.parametrize("seed", range(25))
def test_dp_equals_brute_force(seed):
    mods = _instance(seed)
    total = sum(max(o.time for o in opts) for opts in mods)
    budget = random.Random(seed).uniform(0.2, 1.0) * total
    want = brute_force(mods, budget)
    got = dp_select(mods, budget, buckets=20000)
    if want is None:
        assert got is None
        return
    cost = sum(mods[m][j].cost for m, j in enumerate(got))
    assert sum(mods[m][j].time for m, j in enumerate(got)) <= budget
    # times round up to buckets: never infeasible, and at least as good as any solution with one
    # bucket of slack per module
    assert cost >= want[0] - 1e-12
    slack = brute_force(mods, budget - len(mods) * budget / 20000)
    if slack is not None:
        assert cost <= slack[0] + 1e-12


@pytest.mark.parametrize("seed", range(10))
def test_dp_is_exact_when_times_fall_on_buckets(seed):
    rng = random.Random(seed)
    mods = [[Option(j, rng.randint(0, 10) / 10, rng.uniform(0, 1)) for j in range(4)] for _ in range(4)]
    budget = rng.randint(5, 30) / 10
    want = brute_force(mods, budget)
    got = dp_select(mods, budget, buckets=int(budget * 10))
    assert (got is None) == (want is None)
    if got is not None:
        assert sum(mods[m][j].cost for m, j in enumerate(got)) == pytest.approx(want[0], abs=1e-12)


def test_infeasible_budget_gives_none():
    mods = _instance(0)
    assert dp_select(mods, 0.01) is None


def test_every_pruning_method_has_one_solver():
    """The method registry: the names the CLI and pipeline files accept are exactly the methods there are."""
    from ziplm_deploy.cli import prune as cli_prune
    from ziplm_deploy.prune.family import METHOD_REGISTRY, METHODS

    assert tuple(METHOD_REGISTRY) == METHODS == cli_prune.METHODS
