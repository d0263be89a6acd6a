"""Output parity: per-output max / mean abs error against ``atol + rtol * max|reference|``.

The same rule as the exporter's self-validation (``export.onnx.compare_outputs``), kept torch-free here
so parity of ONNX files and engines runs on an edge install.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np


def compare(got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray], atol: float,
            rtol: float) -> list[dict[str, Any]]:
    """One entry per output present in both; a shape mismatch or a non-finite value fails the output."""
    rows = []
    for name in [n for n in want if n in got]:
        a, b = np.asarray(got[name], dtype=np.float64), np.asarray(want[name], dtype=np.float64)
        scale = float(np.abs(b).max()) if b.size else 0.0
        tolerance = atol + rtol * scale
        if a.shape != b.shape:
            max_abs = mean_abs = float("inf")
        else:
            err = np.abs(a - b)
            max_abs = float(err.max()) if err.size else 0.0
            mean_abs = float(err.mean()) if err.size else 0.0
        ok = bool(np.isfinite(max_abs)) and max_abs <= tolerance
        rows.append({"name": name, "max_abs": _num(max_abs), "mean_abs": _num(mean_abs), "ref_max": scale,
                     "tolerance": tolerance, "ok": ok})
    return rows


def _num(x: float) -> float | None:
    """JSON has no inf/nan: a non-finite error is stored as null (and the output fails)."""
    return float(x) if np.isfinite(x) else None


def torch_outputs(model_dir: str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The model directory's outputs in PyTorch (fp32, CPU) for the graph's inputs; imports torch lazily."""
    import torch

    from ..models import load_model

    model = load_model(model_dir).eval()
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()}
    with torch.no_grad():
        kwargs = dict(tensors)
        if "position_ids" in kwargs:
            kwargs["use_cache"] = False
        out = model(**kwargs)
    name = "logits" if "logits" in out else "last_hidden_state"
    return {name: out[name].float().numpy()}
