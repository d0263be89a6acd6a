"""Output parity: per-output max / mean abs error against ``atol + rtol * max|reference|``.

The rule itself is ``core.parity.output_diff``, shared with the exporter's self-validation.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..core.parity import output_diff


def compare(got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray], atol: float,
            rtol: float) -> list[dict[str, Any]]:
    """One entry per reference output; a missing output, a shape mismatch or a non-finite value fails it."""
    rows = []
    for name in want:
        if name not in got:
            scale = float(np.abs(want[name]).max()) if np.size(want[name]) else 0.0
            rows.append({"name": name, "max_abs": None, "mean_abs": None, "ref_max": scale,
                         "tolerance": atol + rtol * scale, "ok": False})
            continue
        d = output_diff("", name, got[name], want[name], atol, rtol)
        rows.append({"name": name, "max_abs": _num(d.max_abs), "mean_abs": _num(d.mean_abs), "ref_max": d.ref_max,
                     "tolerance": d.tolerance, "ok": d.ok})
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
