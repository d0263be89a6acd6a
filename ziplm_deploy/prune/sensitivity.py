"""Measured end-to-end sensitivity of each module's levels: the search's loss, calibrated on the model itself.

The OBS database ranks levels *within* a module well, but its per-module losses (relative output
error of one projection) do not compare *across* modules on decoders with massive activations: a
layer whose output energy sits in a few tokens looks cheap and is cut first (issue #16). Here each
module is pruned alone to a few probe levels (stitched with its OBS reconstruction, every other
module dense) and scored end to end by the KL divergence of the model's next-token distribution from
the dense model's on calibration windows (output MSE for encoders). The cost of every level of the
module is then the measured KL interpolated in the level's OBS loss (monotone, 0 at the dense level),
and the DP sums those: a first-order, additive model of end-to-end damage.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .database import Database, Level, ModuleDb

PROBE_FRACTIONS = (0.75, 0.5, 0.25, 0.0)  # kept fraction of the module's units at which it is measured


@dataclass(frozen=True)
class Probe:
    units: int
    rel_loss: float
    damage: float  # end-to-end KL (or relative output MSE) with only this module at this level
    kv: int | None = None  # the level's KV groups (database unit "gqa_head")

    @property
    def key(self) -> tuple[int, int | None]:
        return self.units, self.kv


def probe_levels(module: ModuleDb, fractions: Sequence[float] = PROBE_FRACTIONS) -> list[Level]:
    """The distinct non-dense levels nearest to each kept fraction of the units (every level when there are
    few); of levels with as many units, the one with the lowest OBS loss."""
    full = module.levels[0].units
    candidates = list(module.levels[1:])
    if len(candidates) <= len(fractions):
        return candidates
    picked = {min(candidates, key=lambda lv: (abs(lv.units - f * full), lv.rel_loss)) for f in fractions}
    return sorted(picked, key=lambda lv: (lv.units, lv.kv or 0), reverse=True)


@torch.no_grad()
def _outputs(model, windows: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    outs = []
    for start in range(0, len(windows), batch_size):
        out = model(input_ids=windows[start : start + batch_size])
        if "logits" in out:
            outs.append(torch.log_softmax(out["logits"].float(), dim=-1))
        else:
            outs.append(out["last_hidden_state"].float())
    return outs


def damage(reference: list[torch.Tensor], got: list[torch.Tensor], decoder: bool) -> float:
    """Mean per-token KL(reference || got) for log-probabilities; relative MSE for hidden states."""
    if decoder:
        kl = sum(float((r.exp() * (r - g)).sum()) for r, g in zip(reference, got))
        tokens = sum(r.shape[0] * r.shape[1] for r in reference)
        return max(0.0, kl / tokens)
    err = sum(float(((r - g) ** 2).sum()) for r, g in zip(reference, got))
    return err / max(sum(float((r**2).sum()) for r in reference), 1e-30)


@torch.no_grad()
def measure_probes(dense, db: Database, hessians, windows: torch.Tensor, batch_size: int = 4,
                   fractions: Sequence[float] = PROBE_FRACTIONS, progress: bool = True) -> dict[tuple[int, str], list[Probe]]:
    """End-to-end damage of each module alone at its probe levels (every other module dense).

    Decoders (pre-norm residual blocks): the level is applied in place by swapping the output projection
    for its OBS reconstruction over the kept columns (removed columns zero; bias zeroed too when nothing
    is kept), which computes exactly what the physically shrunk model computes, then restored. Other
    models: a stitched copy (``stitch``)."""
    from ..models import adapter_for

    reference = _outputs(dense, windows, batch_size)
    decoder = adapter_for(dense).arch(dense).is_decoder
    jobs = [(m, level) for m in db.modules for level in probe_levels(m, fractions)]
    probes: dict[tuple[int, str], list[Probe]] = {(m.layer, m.kind): [] for m in db.modules}
    apply = _swapped if decoder else _stitched
    for m, level in tqdm(jobs, desc="sensitivity probes", unit="probe", disable=not progress):
        with apply(dense, db, hessians, m, level) as model:
            hurt = damage(reference, _outputs(model, windows, batch_size), decoder)
        probes[(m.layer, m.kind)].append(Probe(level.units, level.rel_loss, hurt, level.kv))
    return probes


@contextlib.contextmanager
def _stitched(dense, db: Database, hessians, m: ModuleDb, level: Level) -> Iterator[torch.nn.Module]:
    from .stitch import stitch

    model = stitch(copy.deepcopy(dense), db, hessians, {(m.layer, m.kind): level})
    try:
        yield model
    finally:
        del model


@contextlib.contextmanager
def _swapped(dense, db: Database, hessians, m: ModuleDb, level: Level) -> Iterator[torch.nn.Module]:
    from ..models import adapter_for
    from .obs import reconstruct
    from .stitch import _cols

    adapter = adapter_for(dense)
    layer = list(adapter.layers(dense))[m.layer]
    view = (adapter.attn_out_weight if m.kind == "attn" else adapter.ffn_out_weight)(layer)
    proj = (adapter.attn_out_proj if m.kind == "attn" else adapter.ffn_out_proj)(layer)
    bias = getattr(proj, "bias", None) if level.units == 0 else None
    saved, saved_bias = view.detach().clone(), None if bias is None else bias.detach().clone()
    h = hessians[m.layer].attn if m.kind == "attn" else hessians[m.layer].ffn
    cols = _cols(level.kept, m.unit_cols)
    full = torch.zeros_like(saved, dtype=torch.float32)
    if cols:
        full[:, cols] = reconstruct(saved.float(), h.float(), cols, db.damp)
    try:
        with torch.no_grad():
            view.copy_(full.to(view.dtype))
            if bias is not None:
                bias.zero_()
        yield dense
    finally:
        with torch.no_grad():
            view.copy_(saved)
            if bias is not None:
                bias.copy_(saved_bias)


PROBES_FORMAT = "ziplm-deploy/sensitivity-probes"
PROBES_VERSION = 2  # 2: rows carry the level's KV groups


def probes_key(db: Database, windows: torch.Tensor) -> str:
    """What the probes depend on: the database (levels, losses, damp) and the scoring windows."""
    digest = hashlib.sha256(json.dumps(db.to_json(), sort_keys=True).encode())
    digest.update(windows.numpy().astype("int64").tobytes())
    digest.update(repr(PROBE_FRACTIONS).encode())
    return digest.hexdigest()[:16]


def save_probes(path: Path, probes: dict[tuple[int, str], list[Probe]]) -> None:
    from ..core.jsonio import atomic_write_json

    atomic_write_json(path, {"format": PROBES_FORMAT, "version": PROBES_VERSION, "modules": {
        f"{layer}.{kind}": [[p.units, p.rel_loss, p.damage, p.kv] for p in ps] for (layer, kind), ps in probes.items()}})


def load_probes(path: Path, db: Database) -> dict[tuple[int, str], list[Probe]] | None:
    """The cached probes, or None when the file is unreadable or does not cover ``db`` (then re-measured)."""
    try:
        payload = json.loads(path.read_text())
        ok = payload.get("format") == PROBES_FORMAT and payload.get("version") == PROBES_VERSION
        modules = payload["modules"] if ok else None
        probes = {}
        for m in db.modules:
            rows = modules[f"{m.layer}.{m.kind}"]
            ps = [Probe(int(u), float(r), float(d), None if kv is None else int(kv)) for u, r, d, kv in rows]
            if any(isinstance(u, bool) or isinstance(kv, bool) or not math.isfinite(p.damage) or p.damage < 0
                   or p.key not in {(lv.units, lv.kv) for lv in m.levels} for (u, _, _, kv), p in zip(rows, ps)):
                return None
            probes[(m.layer, m.kind)] = ps
        return probes
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def level_costs(module: ModuleDb, probes: Sequence[Probe]) -> list[float]:
    """A cost for every level of ``module``: measured damage interpolated in OBS loss, non-decreasing in
    OBS loss (for nested levels: as units are removed), 0 at the dense level."""
    measured = {p.key: p.damage for p in probes}
    ordered = sorted(probes, key=lambda p: p.rel_loss)
    xs = [module.levels[0].rel_loss] + [p.rel_loss for p in ordered]
    ys = [0.0] + [p.damage for p in ordered]
    costs = np.asarray([measured.get((lv.units, lv.kv), float(np.interp(lv.rel_loss, xs, ys)))
                        for lv in module.levels], dtype=np.float64)
    order = sorted(range(len(costs)), key=lambda j: (module.levels[j].rel_loss, j))
    costs[order] = np.maximum.accumulate(costs[order])
    return list(costs)


def sensitivity_costs(db: Database, probes: dict[tuple[int, str], list[Probe]]) -> dict[tuple[int, str], list[float]]:
    return {(m.layer, m.kind): level_costs(m, probes.get((m.layer, m.kind), [])) for m in db.modules}
