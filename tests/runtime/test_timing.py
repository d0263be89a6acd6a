"""The timing protocol: warm-up, shuffled round-robin, raw samples, percentiles, drift."""

from __future__ import annotations

import numpy as np
import pytest

from ziplm_deploy.core.table import Stats
from ziplm_deploy.runtime.timing import Protocol, drift, round_robin, stats_of


def test_round_robin_visits_every_entry_once_per_round_in_shuffled_order():
    log: list[str] = []
    calls = {name: (lambda n=name: log.append(n)) for name in "abcd"}
    samples = round_robin(calls, Protocol(warmup=2, rounds=6, seed=1))
    assert log[:8] == list("aabbccdd")  # warm-up
    rounds = [log[8 + 4 * r: 12 + 4 * r] for r in range(6)]
    assert all(sorted(r) == list("abcd") for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1  # shuffled
    assert all(s.shape == (6,) and (s >= 0).all() for s in samples.values())


def test_stats_and_drift():
    st = stats_of(np.arange(1, 101, dtype=float))
    assert (st.p25, st.p50, st.p90, st.n) == (pytest.approx(25.75), pytest.approx(50.5), pytest.approx(90.1), 100)
    assert drift(Stats(10, 11, 12, 5), Stats(10.5, 11, 12, 5)) == pytest.approx(0.05)
