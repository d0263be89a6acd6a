"""Latency-constrained level selection (torch-free): one solve per speedup target over one database.

Each module (a layer's attention or FFN) offers options (units kept, table time, loss). The dynamic
program picks one option per module minimising the summed loss under a time budget; times are
rounded *up* to buckets, so the unrounded sum of the chosen times never exceeds the budget (and is
re-checked anyway). Budgets follow the table's calibration: ``T = α·Σ entries + β``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import product
from typing import Sequence

import numpy as np

from ..core.errors import InternalError, UserError
from ..core.shape import LayerShape, ModelShape
from ..core.table import LatencyTable
from .database import Database


@dataclass(frozen=True)
class Option:
    units: int
    time: float  # raw table ms (before calibration)
    cost: float


def dp_select(modules: Sequence[Sequence[Option]], budget: float, buckets: int = 10000) -> list[int] | None:
    """Option index per module minimising Σ cost subject to Σ time <= budget; None if infeasible."""
    if budget <= 0:
        return None
    step = budget / buckets
    dp = np.full(buckets + 1, np.inf)
    dp[0] = 0.0
    choices = np.full((len(modules), buckets + 1), -1, dtype=np.int32)
    widths = []
    for m, options in enumerate(modules):
        new = np.full(buckets + 1, np.inf)
        arg = np.full(buckets + 1, -1, dtype=np.int32)
        w_m = [max(0, math.ceil(o.time / step - 1e-9)) for o in options]
        widths.append(w_m)
        for j, (o, w) in enumerate(zip(options, w_m)):
            if w > buckets:
                continue
            cand = np.full(buckets + 1, np.inf)
            cand[w:] = dp[: buckets + 1 - w] + o.cost
            better = cand < new
            new[better] = cand[better]
            arg[better] = j
        dp = new
        choices[m] = arg
    if not np.isfinite(dp).any():
        return None
    b = int(np.argmin(dp))
    picked = []
    for m in range(len(modules) - 1, -1, -1):
        j = int(choices[m, b])
        picked.append(j)
        b -= widths[m][j]
    picked.reverse()
    if sum(modules[m][j].time for m, j in enumerate(picked)) > budget * (1 + 1e-9):
        raise InternalError("DP solution exceeds its budget")
    return picked


def brute_force(modules: Sequence[Sequence[Option]], budget: float) -> tuple[float, list[int]] | None:
    """Exhaustive reference for tests."""
    best = None
    for combo in product(*[range(len(o)) for o in modules]):
        t = sum(modules[m][j].time for m, j in enumerate(combo))
        if t <= budget:
            c = sum(modules[m][j].cost for m, j in enumerate(combo))
            if best is None or c < best[0]:
                best = (c, list(combo))
    return best


@dataclass
class SearchResult:
    target: float
    reachable: bool
    max_speedup: float
    shape: ModelShape | None = None
    predicted_ms: float = 0.0
    predicted_speedup: float = 0.0
    loss: float = 0.0
    units: dict[tuple[int, str], int] = field(default_factory=dict)  # (layer, kind) -> units kept

    def summary(self) -> dict:
        return {"target": self.target, "reachable": self.reachable, "max_speedup": round(self.max_speedup, 4),
                "predicted_ms": round(self.predicted_ms, 4), "predicted_speedup": round(self.predicted_speedup, 4),
                "loss": self.loss, "shape": self.shape.to_json() if self.shape else None}


def module_options(db: Database, table: LatencyTable, loss: str = "relative",
                   coefficients: dict[int, float] | None = None,
                   costs: dict[tuple[int, str], Sequence[float]] | None = None) -> list[tuple[int, str, list[Option]]]:
    """The options of every module of the database, timed by the table; ``coefficients`` (per layer)
    scale the losses (SPDY's randomised search); ``costs`` ((layer, kind) -> one cost per level, e.g.
    measured end-to-end sensitivities) replace the OBS losses."""
    arch = table.arch
    per_unit = arch.group_size if arch.kv_heads != arch.heads else 1
    gqa = arch.kv_heads != arch.heads
    out = []
    for m in db.modules:
        opts = []
        measured = (costs or {}).get((m.layer, m.kind))
        for j, lv in enumerate(m.levels):
            if m.kind == "attn":
                heads = lv.units * per_unit
                t = table.attention_ms(heads, lv.units if gqa else None)
            else:
                t = table.ffn_ms(lv.units)
            cost = measured[j] if measured is not None else lv.rel_loss if loss == "relative" else lv.loss
            opts.append(Option(lv.units, t, cost * (coefficients or {}).get(m.layer, 1.0)))
        out.append((m.layer, m.kind, opts))
    return out


def shape_from_units(db: Database, table: LatencyTable, units: dict[tuple[int, str], int]) -> ModelShape:
    arch = table.arch
    gqa = arch.kv_heads != arch.heads
    per_unit = arch.group_size if gqa else 1
    layers = []
    for layer in range(arch.num_layers):
        a = units.get((layer, "attn"), 0)
        f = units.get((layer, "ffn"), 0)
        layers.append(LayerShape(a * per_unit, f, a if gqa else None))
    return ModelShape(tuple(layers))


def search(db: Database, table: LatencyTable, targets: Sequence[float], loss: str = "relative",
           uniform: bool = False, buckets: int = 10000, coefficients: dict[int, float] | None = None,
           costs: dict[tuple[int, str], Sequence[float]] | None = None) -> list[SearchResult]:
    """One result per speedup target: the least-loss shape whose predicted latency meets ``T_dense / target``."""
    if any(t < 1.0 for t in targets):
        raise UserError(f"speedup targets must be >= 1, got {list(targets)}")
    modules = module_options(db, table, loss, coefficients, costs)
    layers = {m.layer for m in db.modules}
    if db.arch.get("num_layers", len(layers)) != table.arch.num_layers or max(layers) >= table.arch.num_layers:
        raise UserError("the database covers another number of layers than the table's model",
                        "prune a model that has all its layers")
    alpha, beta = table.calibration.alpha, table.calibration.beta
    dense_ms = table.predict(table.dense_shape())
    fixed = _absent_ms(db, table)  # blocks an earlier pruning removed: constant time, not searched
    min_raw = sum(min(o.time for o in opts) for _, _, opts in modules)
    max_speedup = dense_ms / (alpha * (min_raw + fixed) + beta)
    results = []
    for target in targets:
        raw_budget = (dense_ms / target - beta) / alpha - fixed
        if raw_budget < min_raw:
            results.append(SearchResult(target, False, max_speedup))
            continue
        if target <= 1.0:  # the dense model itself (bucket rounding must not shave a level off it)
            picked = [max(range(len(opts)), key=lambda j: opts[j].units) for _, _, opts in modules]
        elif uniform:
            picked = _uniform_select([opts for _, _, opts in modules], [k for _, k, _ in modules], raw_budget)
        else:
            picked = dp_select([opts for _, _, opts in modules], raw_budget, buckets)
        if picked is None:
            results.append(SearchResult(target, False, max_speedup))
            continue
        units = {(layer, kind): opts[j].units for (layer, kind, opts), j in zip(modules, picked)}
        shape = shape_from_units(db, table, units)
        predicted = table.predict(shape)
        if predicted > dense_ms / target * (1 + 1e-9):
            raise InternalError(f"search result {predicted:.4f} ms exceeds the budget {dense_ms / target:.4f} ms")
        cost = sum(opts[j].cost for (_, _, opts), j in zip(modules, picked))
        results.append(SearchResult(target, True, max_speedup, shape, predicted, dense_ms / predicted, cost, units))
    return results


def _absent_ms(db: Database, table: LatencyTable) -> float:
    """Raw table time of the blocks the database lacks: on an already pruned model (gradual pruning)
    these were removed earlier and cost their table entry at size 0. Zero for a dense model's database."""
    total = 0.0
    for layer in range(table.arch.num_layers):
        if db.module(layer, "attn") is None:
            total += table.attention_ms(0)
        if db.module(layer, "ffn") is None:
            total += table.ffn_ms(0)
    return total


def _uniform_select(modules: list[list[Option]], kinds: list[str], budget: float) -> list[int] | None:
    """Same units in every attention and in every FFN: the feasible pair with the least total cost."""
    attn_units = sorted({o.units for opts, k in zip(modules, kinds) if k == "attn" for o in opts})
    ffn_units = sorted({o.units for opts, k in zip(modules, kinds) if k == "ffn" for o in opts})
    best = None
    for a, f in product(attn_units or [None], ffn_units or [None]):
        picked, time, cost = [], 0.0, 0.0
        for opts, k in zip(modules, kinds):
            want = a if k == "attn" else f
            j = next((i for i, o in enumerate(opts) if o.units == want), None)
            if j is None:
                break
            picked.append(j)
            time += opts[j].time
            cost += opts[j].cost
        else:
            if time <= budget and (best is None or cost < best[0]):
                best = (cost, picked)
    return best[1] if best else None
