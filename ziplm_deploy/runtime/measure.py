"""Time model files (ONNX, engines) with the one protocol: what ``verify`` and edge devices use."""

from __future__ import annotations

import os
from typing import Mapping

from ..core.table import Stats
from .base import Backend
from .feeds import synthetic_feeds
from .timing import Protocol, drift, recheck, round_robin, stats_of


def time_models(backend: Backend, models: Mapping[str, str | os.PathLike | bytes], dims: Mapping[str, int],
                vocab: int = 1000, protocol: Protocol | None = None) -> dict[str, Stats]:
    """Stats (ms) per model, timed together in shuffled round-robin on synthetic inputs.

    ``dims``: batch, seq (new tokens), past (KV length, decode) and total. The first model is
    re-timed at the end; its drift is reported as the extra key ``"<name>:recheck"``.
    """
    protocol = protocol or Protocol()
    sessions = {}
    try:
        for name, model in models.items():
            session = backend.load(model)
            sessions[name] = session
            session.bind(synthetic_feeds(session.inputs, dims, vocab, seed=protocol.seed))
        samples = round_robin({k: s.run_bound for k, s in sessions.items()}, protocol)
        first = next(iter(sessions))
        samples[f"{first}:recheck"] = recheck(sessions[first].run_bound, protocol.recheck)
    finally:
        for s in sessions.values():
            s.close()
    return {k: stats_of(v) for k, v in samples.items()}


__all__ = ["time_models", "drift"]
