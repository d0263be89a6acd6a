"""Latency-constrained level selection (torch-free): one solve per speedup target over one database.

Each module (a layer's attention or FFN) offers options (units kept, time, loss). The dynamic
program picks one option per module minimising the summed loss under a time budget; times are
rounded *up* to buckets, so the unrounded sum of the chosen times never exceeds the budget (and is
re-checked anyway).

What is budgeted is a ``LatencyModel``: a non-negative combination of calibrated latency tables,
``T(shape) = Σ_k c_k · (α_k · Σ entries_k(shape) + β_k)``, linear in the per-module entries, so a
module's option costs ``Σ_k c_k α_k t_k`` and the constant is ``Σ_k c_k β_k``. One table is the case
``c = 1`` (``T = α·Σ entries + β``); a workload's end-to-end time is the prefill table plus its decode
tables weighted by ``WorkloadTables.decode_weights()``; its TTFT the prefill table alone; its decode
speed (mean ms per token) the decode part divided by the number of decode steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from itertools import product
from typing import Sequence

import numpy as np

from ..core.arch import ArchSpec
from ..core.errors import InternalError, UserError
from ..core.fingerprint import DeviceFingerprint
from ..core.shape import LayerShape, ModelShape
from ..core.table import LatencyTable
from ..core.workload import WorkloadTables
from .database import Database, Level

BUDGETS = ("e2e", "ttft", "decode")  # what a workload search budgets: end-to-end, time to first token, ms per token
TABLE_METRIC = "latency"  # a plain latency table's one metric (one pass)
_METRIC_WORDS = {"latency": "latency", "e2e": "end-to-end time", "ttft": "time to first token",
                 "decode": "decode time per token"}


@dataclass(frozen=True)
class LatencyModel:
    """What a search budgets: ``T(shape) = Σ_k c_k · table_k.predict(shape)`` (weights ``c_k`` >= 0), i.e.
    ``Σ_k c_k α_k · Σ entries_k + Σ_k c_k β_k``: per-module option times plus a constant.

    ``metric`` names what ``T`` is: ``latency`` (one table, ``of_table``) or a workload's ``e2e`` /
    ``ttft`` / ``decode`` (``of_workload``; ``tables`` is then set). ``source`` names the file(s), for
    error messages. ``vocab``: the output tokens of a model whose LM head ``trim-vocab`` trimmed (its head's
    time is then part of the constant, and every shape is predicted with it; ``with_vocab``)."""

    terms: tuple[tuple[float, LatencyTable], ...]
    metric: str = TABLE_METRIC
    tables: WorkloadTables | None = None
    source: str = "latency table"
    vocab: int | None = None

    def __post_init__(self) -> None:
        if not self.terms or any(not (c >= 0 and math.isfinite(c)) for c, _ in self.terms):
            raise InternalError(f"a latency model needs tables with finite non-negative weights, got "
                                f"{[c for c, _ in self.terms]}")
        if self.metric not in (TABLE_METRIC, *BUDGETS) or (self.metric == TABLE_METRIC) != (self.tables is None):
            raise InternalError(f"latency model metric {self.metric!r} with{'out' if self.tables is None else ''} "
                                "workload tables")

    # --- construction ---------------------------------------------------------------------------
    @staticmethod
    def of_table(table: LatencyTable, source: str = "latency table") -> "LatencyModel":
        return LatencyModel(((1.0, table),), TABLE_METRIC, None, source)

    @staticmethod
    def of_workload(tables: WorkloadTables, budget: str = "e2e", source: str = "workload tables") -> "LatencyModel":
        """The workload's ``budget`` metric: ``e2e`` = prefill + Σ W_k decode_k, ``ttft`` = prefill,
        ``decode`` = Σ (W_k / steps) decode_k (mean ms per generated token after the first)."""
        if budget not in BUDGETS:
            raise UserError(f"unknown budget {budget!r}", f"choose one of: {', '.join(BUDGETS)}")
        steps = len(tables.workload.step_kv_lens)
        if budget == "decode" and not steps:
            raise UserError(f"{source}: workload {tables.workload.name} has no decode step, so there is no decode "
                            "time to budget", "budget e2e or ttft, or profile a workload that generates 2 or more tokens")
        weights = tables.decode_weights()
        decode = [(w, t) for w, t in zip(weights, tables.decode) if w]
        if budget == "ttft":
            terms = [(1.0, tables.prefill)]
        elif budget == "decode":
            terms = [(w / steps, t) for w, t in decode]
        else:
            terms = [(1.0, tables.prefill), *decode]
        return LatencyModel(tuple(terms), budget, tables, source)

    # --- what it describes ----------------------------------------------------------------------
    @property
    def arch(self) -> ArchSpec:
        return self.terms[0][1].arch

    @property
    def fingerprint(self) -> DeviceFingerprint:
        """The deployment: the workload's prefill table's fingerprint, or the one table's."""
        return (self.tables.prefill if self.tables is not None else self.terms[0][1]).fingerprint

    @property
    def precision(self) -> str:
        return self.fingerprint.precision

    @property
    def words(self) -> str:
        """What ``T`` is, in words (for logs)."""
        return _METRIC_WORDS[self.metric]

    def dense_shape(self) -> ModelShape:
        return replace(ModelShape.dense(self.arch), vocab=self.vocab)

    def with_vocab(self, vocab: int | None) -> "LatencyModel":
        """The same latency model for a model whose LM head keeps ``vocab`` output tokens; a table without head
        entries is refused here (a ``UserError`` naming ``profile --vocab-step``), before any work."""
        model = replace(self, vocab=vocab)
        model.predict(model.dense_shape())
        if model.tables is not None:  # a decode or TTFT budget leaves some of the workload's tables out of terms
            model.tables.predict(model.dense_shape())
        return model

    def check_arch(self, arch: ArchSpec, source: str = "model") -> None:
        """Every table must describe ``arch``; a mismatch names the table."""
        tables = [self.tables.prefill, *self.tables.decode] if self.tables is not None else [t for _, t in self.terms]
        for t in tables:
            try:
                t.check_arch(arch, source)
            except UserError as e:
                if self.tables is None:
                    raise
                fp = t.fingerprint
                which = f"prefill table (seq {fp.seq})" if fp.mode == "prefill" else f"decode table (KV {fp.kv_len})"
                raise UserError(f"{self.source}: {which}: {e.message}", e.hint) from None

    # --- the latency model ------------------------------------------------------------------------
    @property
    def constant_ms(self) -> float:
        """What no block option changes: each table's intercept, and a trimmed head's saving."""
        return sum(c * (t.calibration.beta + t.calibration.alpha * t.head_delta_ms(self.vocab)) for c, t in self.terms)

    def attention_ms(self, heads: int, kv_heads: int | None = None) -> float:
        """Calibrated time an attention block with ``heads`` (``kv_heads``) adds to ``T``."""
        return sum(c * t.calibration.alpha * t.attention_ms(heads, kv_heads) for c, t in self.terms)

    def ffn_ms(self, width: int, layer: int | None = None) -> float:
        """Calibrated time an FFN block of ``width`` neurons (in layer ``layer``: a table may time some layers'
        output projections in another precision) adds to ``T``."""
        return sum(c * t.calibration.alpha * t.ffn_ms(width, layer) for c, t in self.terms)

    def predict(self, shape: ModelShape) -> float:
        """``T(shape)`` in ms (each table's own prediction, weighted; with the model's trimmed head when the
        shape does not name one)."""
        if self.vocab is not None and shape.vocab is None:
            shape = replace(shape, vocab=self.vocab)
        return sum(c * t.predict(shape) for c, t in self.terms)

    def dense_ms(self) -> float:
        return self.predict(self.dense_shape())

    def baseline_ms(self) -> float:
        """What speedups of ``T`` are over: the dense model's ``T`` (fp32 tables), or, for quantized tables,
        the fp32 dense model's timed in each table's own run (``LatencyTable.speedup_baseline_ms``)."""
        return sum(c * t.speedup_baseline_ms() for c, t in self.terms)


def as_latency_model(latency: "LatencyTable | LatencyModel") -> LatencyModel:
    """A plain latency table is the one-table latency model."""
    return latency if isinstance(latency, LatencyModel) else LatencyModel.of_table(latency)


@dataclass(frozen=True)
class Option:
    units: int
    time: float  # ms the option adds to the budgeted latency (calibrated: attention_ms / ffn_ms)
    cost: float
    kv: int | None = None  # KV groups kept (a database level of unit "gqa_head")


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
    levels: dict[tuple[int, str], Level] = field(default_factory=dict)  # (layer, kind) -> database level chosen

    @property
    def units(self) -> dict[tuple[int, str], int]:
        """(layer, kind) -> units kept (heads, KV groups or neurons; see the database module's unit)."""
        return {key: lv.units for key, lv in self.levels.items()}

    def summary(self) -> dict:
        return {"target": self.target, "reachable": self.reachable, "max_speedup": round(self.max_speedup, 4),
                "predicted_ms": round(self.predicted_ms, 4), "predicted_speedup": round(self.predicted_speedup, 4),
                "loss": self.loss, "shape": self.shape.to_json() if self.shape else None}


def module_options(db: Database, latency: LatencyTable | LatencyModel, loss: str = "relative",
                   coefficients: dict[int, float] | None = None,
                   costs: dict[tuple[int, str], Sequence[float]] | None = None) -> list[tuple[int, str, list[Option]]]:
    """The options of every module of the database, timed by the latency model (or table); ``coefficients``
    (per layer) scale the losses (SPDY's randomised search); ``costs`` ((layer, kind) -> one cost per level,
    e.g. measured end-to-end sensitivities) replace the OBS losses."""
    model = as_latency_model(latency)
    out = []
    for m in db.modules:
        opts = []
        measured = (costs or {}).get((m.layer, m.kind))
        for j, lv in enumerate(m.levels):
            t = model.attention_ms(*m.attention_shape(lv)) if m.kind == "attn" else model.ffn_ms(lv.units, m.layer)
            cost = measured[j] if measured is not None else lv.rel_loss if loss == "relative" else lv.loss
            opts.append(Option(lv.units, t, cost * (coefficients or {}).get(m.layer, 1.0), lv.kv))
        out.append((m.layer, m.kind, opts))
    return out


def shape_from_levels(db: Database, arch: ArchSpec, levels: dict[tuple[int, str], Level]) -> ModelShape:
    """The model shape the chosen levels give (a block the database lacks has size 0)."""
    gqa = arch.kv_heads != arch.heads
    layers = []
    for layer in range(arch.num_layers):
        heads, kv = 0, (0 if gqa else None)
        attn = db.module(layer, "attn")
        if attn is not None and (layer, "attn") in levels:
            heads, kv = attn.attention_shape(levels[(layer, "attn")])
        ffn = levels[(layer, "ffn")].units if (layer, "ffn") in levels else 0
        layers.append(LayerShape(heads, ffn, kv))
    return ModelShape(tuple(layers))


def search(db: Database, latency: LatencyTable | LatencyModel, targets: Sequence[float], loss: str = "relative",
           uniform: bool = False, buckets: int = 10000, coefficients: dict[int, float] | None = None,
           costs: dict[tuple[int, str], Sequence[float]] | None = None) -> list[SearchResult]:
    """One result per speedup target: the least-loss shape whose predicted latency ``T`` (a table's, or a
    latency model's metric) meets ``T_dense / target``."""
    if any(t < 1.0 for t in targets):
        raise UserError(f"speedup targets must be >= 1, got {list(targets)}")
    model = as_latency_model(latency)
    modules = module_options(db, model, loss, coefficients, costs)
    layers = {m.layer for m in db.modules}
    if db.arch.get("num_layers", len(layers)) != model.arch.num_layers or max(layers) >= model.arch.num_layers:
        raise UserError("the database covers another number of layers than the table's model",
                        "prune a model that has all its layers")
    dense_ms = model.dense_ms()
    fixed = model.constant_ms + _absent_ms(db, model)  # + blocks an earlier pruning removed: not searched
    min_time = sum(min(o.time for o in opts) for _, _, opts in modules)
    max_speedup = dense_ms / (min_time + fixed)
    results = []
    for target in targets:
        budget = dense_ms / target - fixed
        if budget < min_time:
            results.append(SearchResult(target, False, max_speedup))
            continue
        if target <= 1.0:  # the dense model itself (bucket rounding must not shave a level off it)
            picked = [0 for _ in modules]  # levels[0]: each module as it is
        elif uniform:
            picked = _uniform_select([opts for _, _, opts in modules], [k for _, k, _ in modules], budget)
        else:
            picked = dp_select([opts for _, _, opts in modules], budget, buckets)
        if picked is None:
            results.append(SearchResult(target, False, max_speedup))
            continue
        levels = {(m.layer, m.kind): m.levels[j] for m, j in zip(db.modules, picked)}
        shape = shape_from_levels(db, model.arch, levels)
        predicted = model.predict(shape)
        if predicted > dense_ms / target * (1 + 1e-9):
            raise InternalError(f"search result {predicted:.4f} ms exceeds the budget {dense_ms / target:.4f} ms")
        cost = sum(opts[j].cost for (_, _, opts), j in zip(modules, picked))
        results.append(SearchResult(target, True, max_speedup, shape, predicted, dense_ms / predicted, cost, levels))
    return results


def _absent_ms(db: Database, model: LatencyModel) -> float:
    """Time of the blocks the database lacks: on an already pruned model (gradual pruning) these were
    removed earlier and cost their entries at size 0. Zero for a dense model's database."""
    total = 0.0
    for layer in range(model.arch.num_layers):
        if db.module(layer, "attn") is None:
            total += model.attention_ms(0)
        if db.module(layer, "ffn") is None:
            total += model.ffn_ms(0, layer)
    return total


def _uniform_select(modules: list[list[Option]], kinds: list[str], budget: float) -> list[int] | None:
    """Same level (units, KV groups) in every attention and in every FFN: the feasible pair with the least
    total cost."""
    attn_units = sorted({(o.units, o.kv) for opts, k in zip(modules, kinds) if k == "attn" for o in opts},
                        key=lambda u: (u[0], u[1] or 0))
    ffn_units = sorted({(o.units, o.kv) for opts, k in zip(modules, kinds) if k == "ffn" for o in opts})
    best = None
    for a, f in product(attn_units or [None], ffn_units or [None]):
        picked, time, cost = [], 0.0, 0.0
        for opts, k in zip(modules, kinds):
            want = a if k == "attn" else f
            j = next((i for i, o in enumerate(opts) if (o.units, o.kv) == want), None)
            if j is None:
                break
            picked.append(j)
            time += opts[j].time
            cost += opts[j].cost
        else:
            if time <= budget and (best is None or cost < best[0]):
                best = (cost, picked)
    return best[1] if best else None
