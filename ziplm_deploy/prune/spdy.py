"""SPDY's randomised search (optional for ZipLM): per-layer loss coefficients, scored end to end.

The DP's summed per-module losses ignore how errors interact across layers. SPDY samples a
coefficient ``c_l ~ U(0, 1)`` per layer, solves the DP on ``c_l · loss``, stitches the model and scores
it by calibration loss (the model's own next-token cross-entropy, or output MSE for encoders); then
refines the best coefficients by re-sampling a few of them. The plain DP solution (all ``c_l = 1``)
is always a candidate, so the result is never worse on the calibration score than the plain DP.
"""

from __future__ import annotations

import copy
import random

import torch

from .search import SearchResult, search


@torch.no_grad()
def calibration_score(model, windows, reference=None, batch_size: int = 8) -> float:
    """Mean next-token cross-entropy (decoders) or mean squared error to ``reference`` outputs (encoders)."""
    total, n = 0.0, 0
    for start in range(0, len(windows), batch_size):
        ids = windows[start : start + batch_size]
        out = model(input_ids=ids)
        if "logits" in out and reference is None:
            logits = out["logits"][:, :-1].float()
            total += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                             ids[:, 1:].reshape(-1), reduction="sum"))
            n += ids[:, 1:].numel()
        else:
            h = (out["logits"] if "logits" in out else out["last_hidden_state"]).float()
            total += float(((h - reference[start : start + batch_size]) ** 2).sum())
            n += h.numel()
    return total / n


def spdy_search(dense, db, hessians, table, plain: SearchResult, windows, config, log,
                costs=None) -> SearchResult:
    from .stitch import stitch

    rng = random.Random(config.seed)
    layers = sorted({m.layer for m in db.modules})
    score_windows = windows[: max(4, min(16, len(windows)))]
    reference = None
    if not table.arch.is_decoder:
        out = dense(input_ids=score_windows)
        reference = (out["logits"] if "logits" in out else out["last_hidden_state"]).float()

    def evaluate(result: SearchResult) -> float:
        model = stitch(copy.deepcopy(dense), db, hessians, result.levels)
        return calibration_score(model, score_windows, reference)

    best, best_score = plain, evaluate(plain)
    best_coeffs = {layer: 1.0 for layer in layers}
    samples = config.spdy_samples
    for i in range(samples):
        if i < samples // 2:  # exploration: fresh coefficients
            coeffs = {layer: rng.random() for layer in layers}
        else:  # refinement: re-sample a few coefficients of the best so far
            coeffs = dict(best_coeffs)
            for layer in rng.sample(layers, k=max(1, len(layers) // 10)):
                coeffs[layer] = rng.random()
        (candidate,) = search(db, table, [plain.target], loss=config.loss, buckets=config.buckets, coefficients=coeffs, costs=costs)
        if not candidate.reachable:
            continue
        score = evaluate(candidate)
        if score < best_score:
            best, best_score, best_coeffs = candidate, score, coeffs
    log(f"  SPDY {plain.target:g}x: calibration score {evaluate(plain):.4f} (plain DP) -> {best_score:.4f} "
        f"after {samples} samples")
    return best
