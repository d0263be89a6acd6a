"""The one parity rule (torch-free): an output passes when ``max|got - want| <= atol + rtol * max|want|``.

Used by the exporter's self-validation and by ``verify`` on edge devices alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class OutputDiff:
    graph: str
    name: str
    max_abs: float
    mean_abs: float
    ref_max: float  # max |reference| of this output: the scale rtol applies to
    tolerance: float  # atol + rtol * ref_max

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.max_abs)) and self.max_abs <= self.tolerance


def output_diff(graph: str, name: str, got: np.ndarray, want: np.ndarray, atol: float, rtol: float) -> OutputDiff:
    """Error statistics of one output; a shape mismatch gives an infinite (failing) error."""
    a, b = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    scale = float(np.abs(b).max()) if b.size else 0.0
    if a.shape != b.shape:
        return OutputDiff(graph, name, float("inf"), float("inf"), scale, atol + rtol * scale)
    err = np.abs(a - b)
    return OutputDiff(graph, name, float(err.max()) if err.size else 0.0, float(err.mean()) if err.size else 0.0,
                      scale, atol + rtol * scale)
