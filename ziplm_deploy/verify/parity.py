"""Output parity: per-output max / mean abs error against ``atol + rtol * max|reference|``.

The rule itself is ``core.parity.output_diff``, shared with the exporter's self-validation. A quantized
graph against fp32 outputs is judged by ``compare_top1`` instead: arg-max agreement of its logits.
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


def compare_top1(got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray],
                 min_top1: float) -> list[dict[str, Any]]:
    """One row per ``logits`` reference output: top-1 agreement of the candidate's arg-max with the
    reference's, ok at ``>= min_top1`` (a missing output, a shape mismatch or non-finite logits: 0);
    max/mean abs error alongside for information. A reference without logits cannot be judged so: []."""
    from .ort_quality import top1_agreement

    rows = []
    for name in (n for n in want if n == "logits"):
        row = compare(got, {name: want[name]}, 0.0, 0.0)[0]
        agreement = top1_agreement(got[name], want[name]) if name in got else 0.0
        positions = int(np.prod(np.shape(want[name])[:-1]))
        rows.append({**row, "tolerance": None, "top1_agreement": round(agreement, 6), "min_top1_agreement": min_top1,
                     "positions": positions, "ok": bool(agreement >= min_top1)})
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
