"""The latency table: per-block latencies measured in the deployment runtime, and ``predict(shape)``.

JSON form (``ziplm-deploy profile`` writes it; the pruner's search reads it)::

    {"format": "ziplm-deploy/latency-table", "version": 1,
     "fingerprint": {...device, runtime, sizes...},
     "arch": {...the dense ArchSpec...},
     "protocol": {"statistic": "p25", "warmup": 5, "rounds": 50, ...},
     "attention": [{"heads": 0, "kv_heads": 0, "p25": 0.12, "p50": ..., "p90": ..., "n": 50}, ...],
     "ffn": [{"ffn": 0, ...}, {"ffn": 32, ...}, ...],
     "references": {"dense": {...stats...}, "removed": {...}, "dense_recheck": {...}},
     "calibration": {"alpha": 0.97, "beta": 3.1, "drift": 0.004},
     "lowrank": [{"linear": "in", "rank": 32, ...}, ...],          (optional: FLOP)
     "head": [{"rows": 4096, ...}, ...]}                            (optional: trimmed LM heads)

Every head count (and, for GQA, every valid heads/kv_heads pair) has an entry; FFN widths are on a
grid that includes 0 and the dense width, with linear interpolation between grid points. Widths
between 0 and the first non-zero grid point use the line through the two smallest non-zero points:
removing a block costs far less than the fitted intercept, so the 0 entry is never interpolated.

Prediction: ``T = alpha * sum(entries) + beta``, with alpha, beta fitted on the dense and the
all-blocks-removed reference models measured in the same process and time window as the entries.

FLOP-factorised FFN Linears (a layer shape's ``ranks``) add, per Linear, the measured time of the
factorised pair at that rank minus the time of the dense Linear (``references["linear:in"/"linear:out"]``):
``lowrank`` entries are on a rank grid per direction ("in": hidden -> ffn, "out": ffn -> hidden),
interpolated linearly, and measured at the dense FFN width.

A trimmed output vocabulary (a shape's ``vocab``: K output tokens, ``trim-vocab``) adds the measured time of
the trimmed LM head at K rows (its MatMul, the fill column and the Gather back to vocabulary positions)
minus the time of the dense LM head (``references["head"]``): ``head`` entries are on a row grid,
interpolated linearly.
"""

from __future__ import annotations

import math
import os
import types
import typing
from bisect import bisect_left
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from .arch import ArchSpec
from .checks import integer, mapping, number, typed
from .errors import UserError
from .fingerprint import DeviceFingerprint, fp32_down_layers
from .jsonio import atomic_write_json, check_header, read_json
from .shape import LINEAR_KINDS, LayerShape, ModelShape, linear_kind

TABLE_FORMAT = "ziplm-deploy/latency-table"
TABLE_VERSION = 1
STATISTICS = ("p25", "p50", "p90")


FP32_DENSE = "dense_fp32"  # reference of a quantized table: the fp32 dense model, timed in the same run


@dataclass(frozen=True)
class Stats:
    """Percentiles (ms) of the raw samples of one entry."""

    p25: float
    p50: float
    p90: float
    n: int

    def get(self, statistic: str) -> float:
        return float(getattr(self, statistic))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(d: Any, source: str, key: str) -> "Stats":
        """Non-negative finite milliseconds and a positive sample count, each named by its key path."""
        d = mapping(d, source, key)
        missing = [k for k in ("p25", "p50", "p90", "n") if k not in d]
        if missing:
            raise UserError(f"{source}: {key}: bad sample statistics, missing {', '.join(missing)}",
                            "expected p25, p50, p90 and n")
        ms = [number(d[k], source, f"{key}.{k}", lo=0.0) for k in STATISTICS]
        return Stats(*ms, integer(d["n"], source, f"{key}.n", lo=1))


@dataclass(frozen=True)
class AttentionEntry:
    heads: int
    kv_heads: int
    stats: Stats

    def to_json(self) -> dict[str, Any]:
        return {"heads": self.heads, "kv_heads": self.kv_heads, **self.stats.to_json()}


@dataclass(frozen=True)
class FfnEntry:
    ffn: int
    stats: Stats

    def to_json(self) -> dict[str, Any]:
        return {"ffn": self.ffn, **self.stats.to_json()}


@dataclass(frozen=True)
class RankEntry:
    linear: str  # "in" | "out"
    rank: int
    stats: Stats

    def to_json(self) -> dict[str, Any]:
        return {"linear": self.linear, "rank": self.rank, **self.stats.to_json()}


@dataclass(frozen=True)
class HeadEntry:
    rows: int  # output tokens a trimmed LM head keeps
    stats: Stats

    def to_json(self) -> dict[str, Any]:
        return {"rows": self.rows, **self.stats.to_json()}


@dataclass(frozen=True)
class Calibration:
    alpha: float
    beta: float
    drift: float  # relative change of the dense reference between start and end of the run

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def fit_two_point(sum_dense: float, t_dense: float, sum_removed: float, t_removed: float) -> tuple[float, float]:
    """``alpha, beta`` such that ``T = alpha * sum + beta`` passes through both reference models."""
    if sum_dense <= sum_removed:
        raise UserError(
            f"calibration impossible: dense sum {sum_dense:.3f} ms <= removed sum {sum_removed:.3f} ms",
            "the measurements are broken (interference?): profile again",
        )
    if not t_dense > t_removed:
        raise UserError(
            f"calibration impossible: the dense model timed {t_dense:.4f} ms, not more than the model with every "
            f"block removed ({t_removed:.4f} ms)",
            "the blocks are too small to time at these sizes or the machine was busy: profile again with more "
            "--rounds or a longer --seq")
    alpha = (t_dense - t_removed) / (sum_dense - sum_removed)
    return alpha, t_dense - alpha * sum_dense


@dataclass(frozen=True)
class LatencyTable:
    fingerprint: DeviceFingerprint
    arch: ArchSpec
    protocol: dict[str, Any]
    attention: tuple[AttentionEntry, ...]
    ffn: tuple[FfnEntry, ...]
    references: dict[str, Stats]  # "dense", "removed", optionally "dense_recheck", "linear:in", "linear:out"
    calibration: Calibration
    lowrank: tuple[RankEntry, ...] = ()
    # a precision with ``fp32-down=L,...``: FFN entries timed with the output projection fp32, used for layers L
    ffn_fp32_down: tuple[FfnEntry, ...] = ()
    head: tuple[HeadEntry, ...] = ()  # trimmed LM heads by rows kept (with references["head"]: the dense head)

    # --- construction -------------------------------------------------------------------------
    @staticmethod
    def build(fingerprint: DeviceFingerprint, arch: ArchSpec, protocol: dict[str, Any],
              attention: list[AttentionEntry], ffn: list[FfnEntry], references: dict[str, Stats],
              lowrank: list[RankEntry] | tuple[RankEntry, ...] = (),
              ffn_fp32_down: list[FfnEntry] | tuple[FfnEntry, ...] = (),
              head: list[HeadEntry] | tuple[HeadEntry, ...] = ()) -> "LatencyTable":
        """A table whose calibration is fitted from its own entries and reference models."""
        table = LatencyTable(
            fingerprint, arch, dict(protocol),
            tuple(sorted(attention, key=lambda e: (e.heads, e.kv_heads))),
            tuple(sorted(ffn, key=lambda e: e.ffn)),
            dict(references), Calibration(1.0, 0.0, 0.0), _sorted_ranks(lowrank),
            tuple(sorted(ffn_fp32_down, key=lambda e: e.ffn)), tuple(sorted(head, key=lambda e: e.rows)),
        )
        return table.recalibrated()

    @property
    def statistic(self) -> str:
        return str(self.protocol.get("statistic", "p25"))

    def speedup_baseline_ms(self) -> float:
        """What speedups are over: an fp32 table's own dense prediction; a quantized table's fp32 dense model,
        timed in the same profiling run (``references["dense_fp32"]``), so speedups are *total* and
        quantization alone already gives ``speedup_baseline_ms() / predict(dense_shape())``."""
        if self.fingerprint.precision == "fp32":
            return self.predict(self.dense_shape())
        if FP32_DENSE not in self.references:
            raise UserError(f"the {self.fingerprint.precision} latency table has no fp32 dense reference "
                            f"(references.{FP32_DENSE}), so speedups over the fp32 model cannot be computed",
                            "profile it again with this version of `ziplm-deploy profile`")
        return self.references[FP32_DENSE].get(self.statistic)

    def recalibrated(self) -> "LatencyTable":
        """Refit alpha, beta on the stored dense / all-removed reference measurements."""
        st = self.statistic
        dense = self.references["dense"].get(st)
        removed = self.references["removed"].get(st)
        alpha, beta = fit_two_point(self.raw_sum(self.dense_shape()), dense, self.raw_sum(self.removed_shape()), removed)
        recheck = self.references.get("dense_recheck")
        drift = (recheck.get(st) / dense - 1.0) if recheck else 0.0
        return replace(self, calibration=Calibration(alpha, beta, drift))

    # --- reference shapes ---------------------------------------------------------------------
    def dense_shape(self) -> ModelShape:
        return ModelShape.dense(self.arch)

    def removed_shape(self) -> ModelShape:
        return LatencyTable.removed_shape_of(self.arch)

    @staticmethod
    def removed_shape_of(arch: ArchSpec) -> ModelShape:
        """Every attention and FFN block removed, every layer kept: the calibration's second point."""
        kv = 0 if arch.kv_heads != arch.heads else None
        return ModelShape(tuple(LayerShape(0, 0, kv) for _ in range(arch.num_layers)))

    @property
    def _gqa(self) -> bool:
        return self.arch.kv_heads != self.arch.heads

    # --- lookup -------------------------------------------------------------------------------
    def attention_ms(self, heads: int, kv_heads: int | None = None) -> float:
        kv = heads if kv_heads is None or not self._gqa else kv_heads
        if heads == 0:
            kv = 0
        for e in self.attention:
            if e.heads == heads and e.kv_heads == kv:
                return e.stats.get(self.statistic)
        have = ", ".join(f"{e.heads}/{e.kv_heads}" for e in self.attention)
        raise UserError(f"latency table has no attention entry for {heads} heads / {kv} kv_heads",
                        f"entries (heads/kv_heads): {have}; profile the missing ones")

    @property
    def fp32_down_layers(self) -> tuple[int, ...]:
        """Layers whose FFN output projection the table's precision keeps fp32 (``fp32-down=L,...``)."""
        return fp32_down_layers(self.fingerprint.precision)

    def ffn_ms(self, width: int, layer: int | None = None) -> float:
        """An FFN block of ``width`` neurons; in layer ``layer`` (dense index) of a ``fp32-down=L,...`` table
        the entries timed with that layer's output projection fp32."""
        entries = self.ffn_fp32_down if layer is not None and layer in self.fp32_down_layers else self.ffn
        grid = [e.ffn for e in entries]
        vals = [e.stats.get(self.statistic) for e in entries]
        if width < 0 or width > grid[-1]:
            raise UserError(f"FFN width {width} outside the table's grid 0..{grid[-1]}")
        i = bisect_left(grid, width)
        if i < len(grid) and grid[i] == width:
            return vals[i]
        nonzero = [(g, v) for g, v in zip(grid, vals) if g > 0]
        if width < nonzero[0][0]:  # below the first non-zero point: extend the non-zero line, never use the 0 entry
            if len(nonzero) == 1:
                return nonzero[0][1]
            (g0, v0), (g1, v1) = nonzero[0], nonzero[1]
        else:
            (g0, v0), (g1, v1) = (grid[i - 1], vals[i - 1]), (grid[i], vals[i])
        return max(v0 + (v1 - v0) * (width - g0) / (g1 - g0), 0.0)

    def lowrank_ms(self, kind: str, rank: int) -> float:
        """Time of a dense-width FFN Linear of ``kind`` factorised to ``rank`` (interpolated on the grid)."""
        points = [(e.rank, e.stats.get(self.statistic)) for e in self.lowrank if e.linear == kind]
        if not points:
            raise UserError(f"latency table has no low-rank entries for {kind!r} Linears, needed for FLOP ranks",
                            "profile with `ziplm-deploy profile --rank-step 32`")
        return _interpolate(points, rank)

    def head_ms(self, rows: int) -> float:
        """Time of the LM head trimmed to ``rows`` output tokens (interpolated on the row grid; the dense
        head's own reference at the full vocabulary)."""
        if not self.head or "head" not in self.references:
            raise UserError("latency table has no LM head entries, needed for a model with a trimmed vocabulary",
                            "profile with `ziplm-deploy profile --vocab-step K`, K about vocab / 12 (4096 for SmolLM2)")
        if rows >= self.arch.vocab:
            return self.references["head"].get(self.statistic)
        return _interpolate([(e.rows, e.stats.get(self.statistic)) for e in self.head], rows)

    def head_delta_ms(self, vocab: int | None) -> float:
        """What trimming the LM head to ``vocab`` output tokens changes (uncalibrated ms; 0 for the whole
        vocabulary)."""
        if vocab is None or vocab >= self.arch.vocab:
            return 0.0
        return self.head_ms(vocab) - self.references["head"].get(self.statistic)

    def _require_lowrank(self) -> None:
        if not self.lowrank:
            raise UserError("latency table has no low-rank entries, needed for FLOP-factorised FFN Linears",
                            "profile with `ziplm-deploy profile --rank-step 32`")

    def _require_dense_width(self, i: int, layer: LayerShape) -> None:
        if layer.ffn != self.arch.ffn:
            raise UserError(f"the latency table predicts FLOP ranks at the dense FFN width only ({self.arch.ffn}); "
                            f"layer {i} has ffn {layer.ffn}", "factorise a model whose FFN is not pruned")

    def check_predicts_ranks(self, shape: ModelShape) -> None:
        """Refuse, before any training, a model whose FLOP ranks this table could not predict: the table
        has no low-rank entries, or a kept FFN is pruned (low-rank entries are at the dense width)."""
        self._require_lowrank()
        for i, layer in enumerate(shape.layers):
            if not layer.dropped and layer.ffn:
                self._require_dense_width(i, layer)

    def _rank_delta(self, i: int, layer: LayerShape) -> float:
        """What factorising the layer's FFN Linears changes: factorised pair minus dense Linear, summed."""
        self._require_dense_width(i, layer)
        delta = 0.0
        for role, rank in layer.ranks:
            kind = linear_kind(role)
            delta += self.lowrank_ms(kind, rank) - self.references[f"linear:{kind}"].get(self.statistic)
        return delta

    def raw_sum(self, shape: ModelShape) -> float:
        """Sum of the block entries of ``shape`` (ms, uncalibrated); dropped layers cost nothing."""
        total = 0.0
        for i, layer in enumerate(shape.layers):
            if layer.dropped:
                continue
            total += self.attention_ms(layer.heads, layer.kv) + self.ffn_ms(layer.ffn, i)
            if layer.ranks:
                total += self._rank_delta(i, layer)
        return total + self.head_delta_ms(shape.vocab)

    def check_arch(self, arch: ArchSpec, source: str = "model") -> None:
        """Refuse to predict for a model the table was not measured for."""
        mine = self.arch
        for key in ("family", "hidden", "heads", "kv_heads", "head_dim", "ffn", "num_layers", "vocab"):
            if getattr(mine, key) != getattr(arch, key):
                raise UserError(
                    f"latency table was measured for a {mine.family} model with {key}={getattr(mine, key)}, "
                    f"but {source} is a {arch.family} model with {key}={getattr(arch, key)}",
                    "profile this model with `ziplm-deploy profile --model DIR`",
                )

    def predict(self, shape: ModelShape, arch: ArchSpec | None = None) -> float:
        """Predicted latency (ms) of a model of this architecture pruned to ``shape``."""
        if arch is not None:
            self.check_arch(arch)
        shape = shape.validate(self.arch)
        ms = self.calibration.alpha * self.raw_sum(shape) + self.calibration.beta
        if not math.isfinite(ms) or ms <= 0:
            raise UserError(f"the latency table predicts {ms:g} ms for this shape: its calibration "
                            f"(alpha {self.calibration.alpha:g}, beta {self.calibration.beta:g}) cannot predict it",
                            "profile again with more rounds, on a quiet machine")
        return ms

    def speedup(self, shape: ModelShape) -> float:
        return self.predict(self.dense_shape()) / self.predict(shape)

    # --- merge --------------------------------------------------------------------------------
    def merge(self, other: "LatencyTable") -> "LatencyTable":
        """Union of the entries of two tables of the same model and deployment.

        Where both have an entry, the one with more samples wins; the references and calibration are
        this table's (refitted on the merged entries).
        """
        diffs = self.fingerprint.differences(other.fingerprint)
        if diffs:
            raise UserError("cannot merge latency tables of different deployments: " + "; ".join(diffs))
        other.check_arch(self.arch, "the other table")
        if other.statistic != self.statistic:
            raise UserError(f"cannot merge tables using {self.statistic} and {other.statistic}")
        att = {(e.heads, e.kv_heads): e for e in self.attention}
        for e in other.attention:
            key = (e.heads, e.kv_heads)
            if key not in att or e.stats.n > att[key].stats.n:
                att[key] = e
        ffn = {e.ffn: e for e in self.ffn}
        for e in other.ffn:
            if e.ffn not in ffn or e.stats.n > ffn[e.ffn].stats.n:
                ffn[e.ffn] = e
        # low-rank entries are differences against their own run's dense-Linear references: take them
        # as a whole, from this table if it has them, else from the other
        lowrank, refs = self.lowrank, dict(self.references)
        if not lowrank and other.lowrank:
            lowrank = other.lowrank
            refs.update({k: v for k, v in other.references.items() if k.startswith("linear:")})
        down = {e.ffn: e for e in self.ffn_fp32_down}
        for e in other.ffn_fp32_down:
            if e.ffn not in down or e.stats.n > down[e.ffn].stats.n:
                down[e.ffn] = e
        head = self.head  # head entries are differences against their run's dense head: whole, like low-rank
        if not head and other.head:
            head = other.head
            refs["head"] = other.references["head"]
        return LatencyTable.build(self.fingerprint, self.arch, self.protocol, list(att.values()),
                                  list(ffn.values()), refs, lowrank, list(down.values()), head)

    # --- JSON ---------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "format": TABLE_FORMAT,
            "version": TABLE_VERSION,
            "fingerprint": self.fingerprint.to_json(),
            "arch": asdict(self.arch),
            "protocol": self.protocol,
            "attention": [e.to_json() for e in self.attention],
            "ffn": [e.to_json() for e in self.ffn],
            "references": {k: v.to_json() for k, v in self.references.items()},
            "calibration": self.calibration.to_json(),
            # written only when present, so tables without FLOP entries stay readable by older versions
            **({"lowrank": [e.to_json() for e in self.lowrank]} if self.lowrank else {}),
            **({"ffn_fp32_down": [e.to_json() for e in self.ffn_fp32_down]} if self.ffn_fp32_down else {}),
            **({"head": [e.to_json() for e in self.head]} if self.head else {}),
        }

    @staticmethod
    def from_json(payload: Any, source: str = "latency table") -> "LatencyTable":
        """A table whose every field is checked: types, finite non-negative milliseconds, integer sizes,
        the entries the predictor needs, and a calibration that reproduces its own reference models."""
        check_header(payload, TABLE_FORMAT, (TABLE_VERSION,), source)
        keys = {"format", "version", "fingerprint", "arch", "protocol", "attention", "ffn", "references", "calibration"}
        missing, unknown = keys - set(payload), set(payload) - keys - {"lowrank", "ffn_fp32_down", "head"}
        if missing or unknown:
            raise UserError(f"{source}: missing {sorted(missing)} / unknown {sorted(unknown)} keys",
                            "regenerate the table with `ziplm-deploy profile`")
        arch = _arch_from_json(payload["arch"], source)
        protocol = mapping(payload["protocol"], source, "protocol")
        if protocol.get("statistic", "p25") not in STATISTICS:
            raise UserError(f"{source}: protocol.statistic must be one of {STATISTICS}, got {protocol['statistic']!r}")
        att, ffn, lowrank = _block_entries(payload, source)
        if not any(e.heads == 0 for e in att) or not any(e.ffn == 0 for e in ffn):
            raise UserError(f"{source}: the 0-heads and 0-FFN entries are required", "regenerate the table")
        if max(e.ffn for e in ffn) != arch.ffn or not any(e.heads == arch.heads for e in att):
            raise UserError(f"{source}: the dense head count and FFN width must be entries", "regenerate the table")
        refs_d = mapping(payload["references"], source, "references")
        if not {"dense", "removed"} <= set(refs_d):
            raise UserError(f"{source}: 'references' needs 'dense' and 'removed'", "regenerate the table")
        refs = {k: Stats.from_json(v, source, f"references.{k}") for k, v in refs_d.items()}
        for i, e in enumerate(lowrank):
            if e.linear not in LINEAR_KINDS or f"linear:{e.linear}" not in refs:
                raise UserError(f"{source}: lowrank[{i}]: bad low-rank entry {e.linear}/{e.rank}",
                                "entries need linear in/out, rank >= 1 and the matching 'linear:' reference")
        head = [HeadEntry(integer(d["rows"], source, f"head[{i}].rows", lo=1, hi=arch.vocab - 1),
                          Stats.from_json(d, source, f"head[{i}]"))
                for i, d in enumerate(_entries(payload, "head", ("rows",), source, optional=True))]
        if len({e.rows for e in head}) != len(head):
            raise UserError(f"{source}: 'head' has two entries with the same rows", "regenerate the table")
        if head and "head" not in refs:
            raise UserError(f"{source}: 'head' entries need references.head (the dense LM head timed with them)",
                            "regenerate the table with `ziplm-deploy profile --vocab-step N`")
        fingerprint = DeviceFingerprint.from_json(payload["fingerprint"], source)
        down = [FfnEntry(integer(d["ffn"], source, f"ffn_fp32_down[{i}].ffn", lo=0),
                         Stats.from_json(d, source, f"ffn_fp32_down[{i}]"))
                for i, d in enumerate(_entries(payload, "ffn_fp32_down", ("ffn",), source, optional=True))]
        layers = fp32_down_layers(fingerprint.precision)
        if bool(layers) != bool(down) or (down and sorted(e.ffn for e in down) != sorted(e.ffn for e in ffn)):
            raise UserError(f"{source}: a table of precision {fingerprint.precision} needs "
                            + ("'ffn_fp32_down' entries on the 'ffn' grid" if layers else "no 'ffn_fp32_down' entries"),
                            "regenerate the table with `ziplm-deploy profile`")
        if layers and max(layers) >= arch.num_layers:
            raise UserError(f"{source}: precision {fingerprint.precision} names layer {max(layers)} of a "
                            f"{arch.num_layers}-layer model", "regenerate the table with the model's layer indices")
        table = LatencyTable(
            fingerprint, arch, protocol,
            tuple(sorted(att, key=lambda e: (e.heads, e.kv_heads))), tuple(sorted(ffn, key=lambda e: e.ffn)),
            refs, _calibration_from_json(payload["calibration"], source), _sorted_ranks(lowrank),
            tuple(sorted(down, key=lambda e: e.ffn)), tuple(sorted(head, key=lambda e: e.rows)),
        )
        table._check_calibration(source)
        return table

    def _check_calibration(self, source: str) -> None:
        """The stored alpha, beta must be the fit of the stored references and entries (an edited or
        corrupted calibration would predict anything)."""
        fitted = self.recalibrated().calibration
        for key in ("alpha", "beta"):
            mine, fit = getattr(self.calibration, key), getattr(fitted, key)
            if not math.isclose(mine, fit, rel_tol=1e-6, abs_tol=1e-9):
                raise UserError(f"{source}: calibration.{key} is {mine!r} but the table's references give {fit!r}",
                                "regenerate the table with `ziplm-deploy profile` (do not edit it)")

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_json(path, self.to_json())

    @staticmethod
    def load(path: str | os.PathLike) -> "LatencyTable":
        return LatencyTable.from_json(read_json(path, "latency table"), source=str(path))


def _interpolate(points: list[tuple[int, float]], x: int) -> float:
    """The value at ``x`` of the piecewise-linear curve through ``points`` (ascending x), extended by the
    nearest segment outside them, never below 0."""
    for px, v in points:
        if px == x:
            return v
    if len(points) == 1:
        return points[0][1]
    i = min(max(bisect_left([px for px, _ in points], x), 1), len(points) - 1)
    (x0, v0), (x1, v1) = points[i - 1], points[i]
    return max(v0 + (v1 - v0) * (x - x0) / (x1 - x0), 0.0)


def _sorted_ranks(entries) -> tuple[RankEntry, ...]:
    return tuple(sorted(entries, key=lambda e: (e.linear, e.rank)))


def _entries(payload: dict[str, Any], key: str, required: tuple[str, ...], source: str,
             optional: bool = False) -> list[dict[str, Any]]:
    items = payload.get(key, []) if optional else payload[key]
    if optional and items == []:
        return []
    if not isinstance(items, list) or not items:
        raise UserError(f"{source}: '{key}' must be a non-empty list", "regenerate the table")
    allowed = set(required) | {"p25", "p50", "p90", "n"}
    for i, d in enumerate(items):
        if not isinstance(d, dict) or not set(required) <= set(d) or set(d) - allowed:
            raise UserError(f"{source}: {key}[{i}] must have keys {sorted(allowed)}", "regenerate the table")
    return items


def _block_entries(payload: dict[str, Any],
                   source: str) -> tuple[list[AttentionEntry], list[FfnEntry], list[RankEntry]]:
    att = [AttentionEntry(integer(d["heads"], source, f"attention[{i}].heads", lo=0),
                          integer(d["kv_heads"], source, f"attention[{i}].kv_heads", lo=0),
                          Stats.from_json(d, source, f"attention[{i}]"))
           for i, d in enumerate(_entries(payload, "attention", ("heads", "kv_heads"), source))]
    ffn = [FfnEntry(integer(d["ffn"], source, f"ffn[{i}].ffn", lo=0), Stats.from_json(d, source, f"ffn[{i}]"))
           for i, d in enumerate(_entries(payload, "ffn", ("ffn",), source))]
    lowrank = [RankEntry(typed(d["linear"], str, source, f"lowrank[{i}].linear", "\"in\" or \"out\""),
                         integer(d["rank"], source, f"lowrank[{i}].rank", lo=1),
                         Stats.from_json(d, source, f"lowrank[{i}]"))
               for i, d in enumerate(_entries(payload, "lowrank", ("linear", "rank"), source, optional=True))]
    return att, ffn, lowrank


def _calibration_from_json(cal: Any, source: str) -> Calibration:
    cal = mapping(cal, source, "calibration")
    missing = [k for k in ("alpha", "beta", "drift") if k not in cal]
    if missing:
        raise UserError(f"{source}: calibration lacks {', '.join(missing)}", "regenerate the table")
    return Calibration(number(cal["alpha"], source, "calibration.alpha", lo=0.0, lo_open=True),
                       number(cal["beta"], source, "calibration.beta"),
                       number(cal["drift"], source, "calibration.drift"))


_ARCH_FIELDS_ADDED_LATER = ("query_scale",)  # optional ArchSpec fields (None) an older table does not list


def _arch_from_json(d: Any, source: str) -> ArchSpec:
    """The dense architecture the table was measured for: every ArchSpec field, each of its type."""
    d = mapping(d, source, "arch")
    names = {f.name for f in fields(ArchSpec)}
    d = {**{k: None for k in _ARCH_FIELDS_ADDED_LATER if k not in d}, **d}  # tables written before they existed
    if set(d) != names:
        raise UserError(f"{source}: 'arch' does not describe an architecture (missing {sorted(names - set(d))}, "
                        f"unknown {sorted(set(d) - names)})", "regenerate the table")
    hints = typing.get_type_hints(ArchSpec)
    values = {name: _arch_field(hints[name], d[name], source, f"arch.{name}") for name in sorted(names)}
    return ArchSpec(**values)


def _arch_field(tp: Any, value: Any, source: str, key: str) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):  # optional field
        if value is None:
            return None
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if tp is int:
        return integer(value, source, key, lo=1)
    if tp is float:
        return number(value, source, key, lo=0.0)
    if tp is bool:
        return typed(value, bool, source, key, "true or false")
    return typed(value, str, source, key, "a string")
