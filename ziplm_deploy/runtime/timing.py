"""The one timing protocol (see ``shared/research/latency-protocol.md``).

1. warm up every entry (``warmup`` calls each);
2. ``rounds`` shuffled round-robin passes over all entries, one call per visit, never back-to-back,
   keeping every raw sample;
3. summarise each entry by p25 / p50 / p90 (p25 is robust to neighbours on a shared machine);
4. re-time the dense reference at the end: if it moved by more than ``max_drift`` the run was disturbed.

Only the raw runtime call is inside the timer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from ..core.table import Stats


def stats_of(samples_ms: np.ndarray) -> Stats:
    s = np.asarray(samples_ms, dtype=np.float64)
    p25, p50, p90 = np.percentile(s, [25, 50, 90])
    return Stats(round(float(p25), 5), round(float(p50), 5), round(float(p90), 5), int(s.size))


def time_call(fn: Callable[[], None]) -> float:
    """Milliseconds of one synchronised call."""
    t0 = time.perf_counter_ns()
    fn()
    return (time.perf_counter_ns() - t0) / 1e6


@dataclass(frozen=True)
class Protocol:
    warmup: int = 5
    rounds: int = 50
    recheck: int = 10  # runs of the dense reference at the end
    max_drift: float = 0.05
    statistic: str = "p25"
    seed: int = 0

    def to_json(self) -> dict[str, object]:
        return {"statistic": self.statistic, "warmup": self.warmup, "rounds": self.rounds,
                "recheck": self.recheck, "max_drift": self.max_drift, "order": "shuffled round-robin",
                "seed": self.seed}


def round_robin(calls: Mapping[str, Callable[[], None]], protocol: Protocol,
                progress: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """Raw samples (ms) per entry; ``progress(n)`` is called after each round with the calls made."""
    names = list(calls)
    for name in names:
        for _ in range(protocol.warmup):
            calls[name]()
    rng = np.random.default_rng(protocol.seed)
    samples = {name: np.empty(protocol.rounds) for name in names}
    for r in range(protocol.rounds):
        for j in rng.permutation(len(names)):
            name = names[j]
            samples[name][r] = time_call(calls[name])
        if progress:
            progress(len(names))
    return samples


def recheck(call: Callable[[], None], runs: int) -> np.ndarray:
    return np.array([time_call(call) for _ in range(runs)])


def drift(before: Stats, after: Stats, statistic: str = "p25") -> float:
    return after.get(statistic) / before.get(statistic) - 1.0
