"""The backend interface: load a model (ONNX file/bytes or engine), bind inputs, run, time.

A ``Session`` is a context manager. ``bind(feeds)`` places inputs (and pre-allocated outputs) where the
runtime wants them, once; ``run_bound()`` then runs one synchronised inference and is what the timing
protocol times. ``run(feeds)`` is the plain convenience call returning numpy outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...]  # ints, or symbolic names / None for dynamic axes


class Session:
    inputs: tuple[TensorInfo, ...] = ()
    outputs: tuple[TensorInfo, ...] = ()

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def bind(self, feeds: Mapping[str, np.ndarray]) -> None:
        raise NotImplementedError

    def run_bound(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release runtime resources (idempotent)."""

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Backend:
    """Creates sessions with fixed deployment options (threads, optimisation level, dtype...)."""

    name: str = ""

    def load(self, model: Any) -> Session:
        """``model``: a path to an ONNX file (or engine / program, per backend) or serialized bytes."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """runtime, runtime_version, provider, opt_level, threads, gpu: the fingerprint's runtime part."""
        raise NotImplementedError
