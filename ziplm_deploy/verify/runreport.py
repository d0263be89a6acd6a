"""The report of a run directory: every model of every method, predicted and measured, with plots.

Reads ``RUNDIR/family-<method>.json`` (what ``prune`` wrote) and every ``*verify*.json`` below RUNDIR
(what ``verify`` wrote), matches verify reports to family members by the candidate's path, and renders
HTML (self-contained: plots are embedded SVG images) or Markdown (tables, for CI comments).
Plots: quality vs measured speedup per method (and per deployment precision: a family pruned on an int8
table is its own series, ``ziplm + int8-dynamic``) with the Pareto front and, for quantized families, the
quantization-only speedup as a dashed line (the point pruning must beat), predicted vs measured latency,
the kept fraction of heads / FFN width per layer of each model, and the held-out perplexity of every
recovery run below RUNDIR (``distill``'s ``train.json``) against the tokens it trained on. Members verified on a
generation workload (``verify --workload``) get a generation table: TTFT, ms per token, tokens/s and the TTFT /
decode / end-to-end speedups timed in ONNX Runtime GenAI, each beside the workload tables' prediction.
"""

from __future__ import annotations

import base64
import html
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import UserError
from .report import VERIFY_FORMAT, Speedup, VerifyReport
from .svg import PALETTE, Series, chart

FAMILY_FORMAT = "ziplm-deploy/family"
TRAIN_FORMAT = "ziplm-deploy/train"


@dataclass
class ModelRow:
    name: str
    method: str
    path: str | None = None
    target: float | None = None
    predicted_speedup: float | None = None
    predicted_ms: float | None = None
    measured_speedup: float | None = None
    measured_ms: float | None = None
    baseline_ms: float | None = None
    quality: float | None = None
    quality_metric: str | None = None
    quality_source: str | None = None
    parity_ok: bool | None = None
    shape: dict[str, Any] | None = None
    verify: str | None = None
    precision: str = "fp32"  # what the model is deployed as (int8-dynamic: pruned on an int8 table)
    generation: Generation | None = None  # verified on a generation workload (verify --workload)

    @property
    def series(self) -> str:
        return self.method if self.precision == "fp32" else f"{self.method} + {self.precision}"

    @property
    def prediction_error(self) -> float | None:
        if self.measured_speedup and self.predicted_speedup:
            return self.measured_speedup / self.predicted_speedup - 1
        return None


@dataclass
class Generation:
    """A member's generation workload as verify timed it in GenAI (``statistic`` of the samples) and as the
    workload tables predicted it (None where there were no tables)."""

    workload: str
    measured: dict[str, float | None]  # ttft_ms, ms_per_token, tokens_per_s, e2e_ms
    predicted: dict[str, float | None]
    speedup: dict[str, float | None]  # ttft, decode, e2e: measured over the baseline timed beside it
    speedup_predicted: dict[str, float | None]
    baseline: dict[str, float | None]  # the dense (baseline) model's measured figures
    token_agreement: float | None  # share of greedy tokens equal to the baseline's (reported, not judged)


GENERATION_TIMES = ("ttft_ms", "ms_per_token", "tokens_per_s", "e2e_ms")
GENERATION_SPEEDUPS = ("ttft", "decode", "e2e")


@dataclass
class Curve:
    """A recovery run (``distill``'s train.json): held-out perplexity against millions of tokens trained."""

    name: str  # the run's folder, relative to RUNDIR
    objective: str  # "KD" (a teacher's logits / hidden states) or "LM" (plain next-token loss)
    points: list[tuple[float, float]]  # (million tokens, held-out perplexity)
    steps: int
    tokens: int
    seconds: float
    device: str

    @property
    def tokens_per_s(self) -> float | None:
        return self.tokens / self.seconds if self.seconds > 0 else None


@dataclass
class RunData:
    run: Path
    rows: list[ModelRow] = field(default_factory=list)
    dense: dict[str, int] = field(default_factory=dict)  # heads, ffn of the dense model
    warnings: list[str] = field(default_factory=list)
    quant_only: dict[str, float] = field(default_factory=dict)  # precision -> predicted speedup of quantization alone
    curves: list[Curve] = field(default_factory=list)  # recovery runs below the run directory


def _key(path: str | None) -> str | None:
    return os.path.realpath(path) if path else None


def _read_json(f: Path, data: RunData) -> Any:
    """The JSON in ``f``, or None with a warning when it cannot be read."""
    try:
        return json.loads(f.read_text())
    except (OSError, json.JSONDecodeError) as e:
        data.warnings.append(f"skipped {f.relative_to(data.run)}: {e}")
        return None


def collect(run: str | os.PathLike) -> RunData:
    run = Path(run)
    if not run.is_dir():
        raise UserError(f"run directory not found: {run}", "pass the --out folder of `ziplm-deploy prune`")
    data = RunData(run)
    by_path: dict[str, ModelRow] = {}
    for f in sorted(run.glob("family-*.json")):
        fam = _read_json(f, data)
        if not isinstance(fam, dict) or fam.get("format") != FAMILY_FORMAT:
            continue
        _dense_from_model(data, _text(fam.get("model")))
        precision = _precision(data, f.name, fam.get("precision", "fp32"))
        if precision != "fp32":
            base = _num(data, f.name, fam, ("baseline_ms",), lo=0, lo_open=True)
            dense_ms = _num(data, f.name, fam, ("dense_predicted_ms",), lo=0, lo_open=True)
            if base and dense_ms:
                data.quant_only[precision] = base / dense_ms
        members = fam.get("members")
        if not isinstance(members, list):
            data.warnings.append(f"skipped {f.name}: members must be a list, got {members!r:.60}")
            continue
        for i, m in enumerate(members):
            where = f"{f.name}: members[{i}]"
            if not isinstance(m, dict) or m.get("reachable") is not True or not _text(m.get("path")):
                continue
            row = ModelRow(Path(m["path"]).name, _text(fam.get("method")) or "?", m["path"],
                           _num(data, where, m, ("target",), lo=0, lo_open=True),
                           _num(data, where, m, ("predicted_speedup",), lo=0, lo_open=True),
                           _num(data, where, m, ("predicted_ms",), lo=0, lo_open=True), shape=_shape(m.get("shape")),
                           precision=precision)
            ppl = _num(data, where, m, ("calibration_ppl",), lo=0)
            if ppl is not None:
                row.quality, row.quality_metric, row.quality_source = ppl, "perplexity", "calibration"
            data.rows.append(row)
            by_path[_key(m["path"])] = row
    for f in sorted(run.rglob("*verify*.json")):
        payload = _read_json(f, data)
        if not isinstance(payload, dict) or payload.get("format") != VERIFY_FORMAT:
            continue
        try:
            rep = VerifyReport.from_json(payload, str(f))
        except UserError as e:
            data.warnings.append(f"skipped {f.relative_to(run)}: {e}")
            continue
        _merge_verify(data, by_path, rep, f)
    for f in sorted(run.rglob("train.json")):
        payload = _read_json(f, data)
        if isinstance(payload, dict) and payload.get("format") == TRAIN_FORMAT:
            curve = _curve(data, f, payload)
            if curve is not None:
                data.curves.append(curve)
    if not data.rows and not data.curves:
        raise UserError(f"{run} has no family-*.json, verify reports or recovery runs",
                        "run `ziplm-deploy prune --out RUNDIR` and `ziplm-deploy verify --report "
                        "RUNDIR/...verify.json` (or `ziplm-deploy distill --out RUNDIR/...`) first")
    return data


def _curve(data: RunData, f: Path, payload: dict[str, Any]) -> Curve | None:
    """A train.json's curve; a malformed one is skipped with a warning (never plotted half-read)."""
    where = str(f.relative_to(data.run))
    steps = payload.get("steps")
    tokens = payload.get("tokens")
    evals = payload.get("evals")
    bad = None
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        bad = f"steps must be a positive integer, got {steps!r:.40}"
    elif isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
        bad = f"tokens must be a positive integer, got {tokens!r:.40}"
    elif not isinstance(evals, list) or not evals:
        bad = f"evals must be a non-empty list, got {evals!r:.40}"
    if bad:
        data.warnings.append(f"skipped {where}: {bad}")
        return None
    points = []
    for i, e in enumerate(evals):
        step = _num(data, f"{where}: evals[{i}]", e, ("step",), lo=0)
        ppl = _num(data, f"{where}: evals[{i}]", e, ("ppl",), lo=0, lo_open=True)
        if step is None or ppl is None:
            data.warnings.append(f"skipped {where}: evals[{i}] is not a step and a finite perplexity")
            return None
        points.append((step * tokens / steps / 1e6, ppl))
    weights = _obj(payload.get("weights"))
    kd = any(isinstance(weights.get(k), (int, float)) and weights.get(k) > 0 for k in ("kd", "hidden"))
    seconds = _num(data, where, payload, ("seconds",), lo=0) or 0.0
    return Curve(str(f.parent.relative_to(data.run)) or ".", "KD" if kd else "LM", points, steps, tokens, seconds,
                 _text(payload.get("device")) or "?")


def _precision(data: RunData, where: str, value: Any) -> str:
    """A precision label from a report; anything else is a warning and counts as fp32."""
    from ..core.fingerprint import is_precision_label

    if is_precision_label(value):
        return value
    data.warnings.append(f"{where}: precision {value!r:.40} is not a precision label: shown as fp32")
    return "fp32"


def _dense_from_model(data: RunData, model_dir: str | None) -> None:
    if data.dense or not model_dir:
        return
    try:
        from ..core.arch import arch_from_dir

        arch = arch_from_dir(model_dir)
        data.dense = {"heads": arch.heads, "ffn": arch.ffn}
    except UserError:
        pass


def _num(data: RunData, where: str, root: Any, path: tuple[str, ...], **bounds: Any) -> float | None:
    """A finite number from a report, or None; a present but invalid value (a string, NaN, a list...)
    becomes a warning, never a plotted point."""
    from .policy import read_number

    return _checked(data, where, ".".join(path), read_number(root, path, **bounds))


def _speedup_num(data: RunData, where: str, sp: Speedup, key: str, **bounds: Any) -> float | None:
    """``_num`` of the report's speedup ``key``."""
    from .policy import read_value

    return _checked(data, where, key, read_value(getattr(sp, key), key, **bounds))


def _checked(data: RunData, where: str, name: str, reading: Any) -> float | None:
    from .policy import NOT_MEASURED

    if reading.value is None and reading.problem != NOT_MEASURED:
        data.warnings.append(f"{where}: {name}: {reading.problem}; not shown")
    return reading.value


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _parity_ok(parity: Any) -> bool | None:
    """True only when the block and every row say a real JSON true; None when there is no parity."""
    if not isinstance(parity, dict):
        return None
    rows = parity.get("outputs")
    rows_ok = isinstance(rows, list) and bool(rows) and all(isinstance(r, dict) and r.get("ok") is True for r in rows)
    return parity.get("ok") is True and rows_ok


def _merge_verify(data: RunData, by_path: dict[str, ModelRow], rep: VerifyReport, f: Path) -> None:
    where = str(f.relative_to(data.run))
    cand = _obj(rep.candidate)
    source = _text(cand.get("source"))
    row = by_path.get(_key(source))
    if row is None:
        manifest = _obj(cand.get("manifest"))
        row = ModelRow(Path(source or f.stem).name, _text(manifest.get("method")) or "verified", source,
                       _num(data, where, manifest, ("metrics", "target_speedup"), lo=0, lo_open=True),
                       shape=_shape(cand.get("shape")))
        data.rows.append(row)
        by_path[_key(source)] = row
    sp = rep.speedup
    row.verify = where
    if "precision" in cand:
        row.precision = _precision(data, where, cand["precision"])
    if rep.ok:
        row.measured_speedup = _speedup_num(data, where, sp, "measured", lo=0, lo_open=True)
        row.measured_ms = _speedup_num(data, where, sp, "candidate_ms", lo=0, lo_open=True)
        row.baseline_ms = _speedup_num(data, where, sp, "baseline_ms", lo=0, lo_open=True)
    else:
        data.warnings.append(f"{where}: measurement errored: {rep.error}")
    predicted = _speedup_num(data, where, sp, "predicted", lo=0, lo_open=True)
    if predicted is not None:
        row.predicted_speedup = predicted
        row.predicted_ms = _speedup_num(data, where, sp, "predicted_ms", lo=0, lo_open=True) or row.predicted_ms
    if row.target is None:
        row.target = _speedup_num(data, where, sp, "target", lo=0, lo_open=True)
    parity_ok = _parity_ok(rep.parity)
    if parity_ok is not None:
        row.parity_ok = parity_ok
    quality = _obj(rep.quality)
    metric = _text(quality.get("metric"))
    candidate_quality = _num(data, where, quality, ("candidate",), lo=0)
    if metric and candidate_quality is not None:
        row.quality, row.quality_metric, row.quality_source = candidate_quality, metric, "eval"
    if row.shape is None:
        row.shape = _shape(cand.get("shape"))
    if rep.workload is not None and rep.ok:
        row.generation = _generation(data, where, _obj(rep.workload))
    baseline = _obj(rep.baseline)
    if rep.ok and not any(r.method == "baseline" for r in data.rows):  # the reference point of the plots
        base_quality = _num(data, where, quality, ("baseline",), lo=0) if metric else None
        base = ModelRow("baseline", "baseline", _text(baseline.get("source")), 1.0, 1.0,
                        _speedup_num(data, where, sp, "predicted_baseline_ms", lo=0, lo_open=True), 1.0,
                        row.baseline_ms, row.baseline_ms, base_quality, metric if base_quality is not None else None,
                        "eval" if base_quality is not None else None, shape=_shape(baseline.get("shape")),
                        verify=row.verify)
        data.rows.insert(0, base)
    _dense_from_shape(data, _shape(baseline.get("shape")))


def _generation(data: RunData, where: str, block: dict[str, Any]) -> Generation:
    """A verify report's workload block; a missing or invalid figure is None (invalid ones also a warning)."""
    st = _text(block.get("statistic")) or "p25"
    pred = _obj(block.get("prediction"))
    ttft = _obj(_obj(block.get("candidate")).get("ttft_ms"))
    if ttft and st not in ttft:
        data.warnings.append(f"{where}: workload.statistic {st!r:.20} has no timed figures (they have "
                             f"{', '.join(sorted(map(str, ttft)))}); not shown")

    def timed(role: str) -> dict[str, float | None]:
        r = _obj(block.get(role))
        out = {k: _num(data, where, r, (k, st), lo=0, lo_open=True)
               for k in ("ttft_ms", "ms_per_token", "e2e_ms")}
        out["tokens_per_s"] = _num(data, where, r, ("tokens_per_s",), lo=0, lo_open=True)
        return out

    def paths(root: dict[str, Any], keys: tuple[str, ...]) -> dict[str, float | None]:
        return {k: _num(data, where, root, (k,), lo=0, lo_open=True) for k in keys}

    name = _obj(block.get("workload"))
    return Generation(_text(name.get("name")) or "?", timed("candidate"),
                      paths(_obj(pred.get("candidate")), GENERATION_TIMES),
                      paths(_obj(block.get("speedup")), GENERATION_SPEEDUPS),
                      paths(_obj(pred.get("speedup")), GENERATION_SPEEDUPS), timed("baseline"),
                      _num(data, where, block, ("token_agreement",), lo=0, hi=1))


def _shape(value: Any) -> dict[str, Any] | None:
    """A shape dict whose layers are objects with integer heads / ffn, else None (not plotted)."""
    if not isinstance(value, dict) or not isinstance(value.get("layers"), list):
        return None
    for lay in value["layers"]:
        if not isinstance(lay, dict):
            return None
        for key in ("heads", "ffn"):
            v = lay.get(key, 0)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                return None
    return value


def _dense_from_shape(data: RunData, shape: dict[str, Any] | None) -> None:
    if data.dense or not shape:
        return
    layers = [lay for lay in shape["layers"] if not lay.get("dropped")]
    if layers:
        data.dense = {"heads": max(lay.get("heads", 0) for lay in layers), "ffn": max(lay.get("ffn", 0) for lay in layers)}


# --- plots --------------------------------------------------------------------------------------------
def _methods(rows: list[ModelRow]) -> dict[str, str]:
    """A colour per series (method, and deployment precision when not fp32)."""
    return {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(dict.fromkeys(r.series for r in rows))}


def pareto(points: list[tuple[float, float]], lower_is_better: bool) -> list[tuple[float, float]]:
    """Points not dominated (higher speedup and better quality), sorted by speedup."""
    sign = 1 if lower_is_better else -1
    front = [p for p in points if not any(q != p and q[0] >= p[0] and sign * q[1] <= sign * p[1] for q in points)]
    return sorted(set(front))


def quality_plot(data: RunData) -> str:
    colors = _methods(data.rows)
    rows = [r for r in data.rows if r.quality is not None and (r.measured_speedup or r.predicted_speedup)]
    metric = next((r.quality_metric for r in rows), "perplexity")
    series, all_pts = [], []
    for method, color in colors.items():
        for measured in (True, False):
            pts, notes = [], []
            for r in rows:
                if r.series != method or (r.measured_speedup is not None) != measured:
                    continue
                x = r.measured_speedup if measured else r.predicted_speedup
                pts.append((x, r.quality))
                notes.append(f"{r.name}: {'measured' if measured else 'predicted'} {x:.3f}x, {metric} {r.quality:.4g}")
            if pts:
                series.append(Series(f"{method}{'' if measured else ' (pred.)'}", pts, color, hollow=not measured,
                                     notes=notes))
                all_pts += pts
    front = pareto(all_pts, lower_is_better=metric != "accuracy")
    if len(front) > 1:
        series.append(Series("Pareto front", front, "#444", connect=True, dashed=True, markers=False))
    if all_pts:
        lo, hi = min(q for _, q in all_pts), max(q for _, q in all_pts)
        for precision, x in data.quant_only.items():  # what quantization alone gives: pruning must beat it
            series.append(Series(f"{precision} only ({x:.2f}x)", [(x, lo), (x, hi)], "#999",
                                 connect=True, dashed=True, markers=False))
    return chart(series, f"{metric} vs speedup (filled: measured, hollow: predicted)", "speedup over the dense model (x)",
                 metric + (" (lower is better)" if metric != "accuracy" else " (higher is better)"))


def latency_plot(data: RunData) -> str:
    colors = _methods(data.rows)
    series = []
    for method, color in colors.items():
        rows = [r for r in data.rows if r.series == method and r.predicted_ms and r.measured_ms]
        if rows:
            series.append(Series(method, [(r.predicted_ms, r.measured_ms) for r in rows], color,
                                 notes=[f"{r.name}: predicted {r.predicted_ms:.3f} ms, measured {r.measured_ms:.3f} ms"
                                        for r in rows]))
    return chart(series, "predicted vs measured latency (dashed: exact)", "predicted latency (ms)",
                 "measured latency (ms)", diagonal=True)


def layer_plots(data: RunData) -> tuple[str, str]:
    out = []
    for key, title in (("heads", "kept attention heads per layer"), ("ffn", "kept FFN width per layer")):
        dense = data.dense.get(key)
        series = []
        for i, r in enumerate(r for r in data.rows if r.shape):
            pts = []
            for j, lay in enumerate(r.shape.get("layers", [])):
                v = 0 if lay.get("dropped") else lay.get(key, 0)
                pts.append((j, v / dense if dense else v))
            series.append(Series(r.name, pts, PALETTE[i % len(PALETTE)], connect=True))
        out.append(chart(series, title, "layer", "fraction of dense" if dense else key, y_from_zero=True))
    return out[0], out[1]


def recovery_plot(data: RunData) -> str:
    series = [Series(f"{c.name} ({c.objective})", c.points, PALETTE[i % len(PALETTE)], connect=True,
                     notes=[f"{c.name}: {x:.3f}M tokens, perplexity {y:.4g}" for x, y in c.points])
              for i, c in enumerate(data.curves)]
    return chart(series, "held-out perplexity during recovery", "tokens trained (millions)",
                 "held-out perplexity (lower is better)")


def curve_rows(data: RunData) -> list[list[str]]:
    rows = [["recovery run", "objective", "steps", "tokens", "time", "tokens/s", "device", "perplexity first -> last"]]
    for c in data.curves:
        rows.append([c.name, c.objective, str(c.steps), f"{c.tokens / 1e6:.2f}M", f"{c.seconds / 60:.1f} min",
                     _f(c.tokens_per_s, ".0f"), c.device, f"{c.points[0][1]:.4g} -> {c.points[-1][1]:.4g}"])
    return rows


# --- rendering ----------------------------------------------------------------------------------------
def _f(x: Any, fmt: str = ".3f", suffix: str = "") -> str:
    return "–" if x is None else f"{x:{fmt}}{suffix}"


def table_rows(data: RunData) -> list[list[str]]:
    head = ["model", "method", "precision", "target", "predicted", "measured", "pred. error", "predicted ms",
            "measured ms", "quality", "parity"]
    rows = [head]
    for r in sorted(data.rows, key=lambda r: (r.method, r.target or 0)):
        q = "–" if r.quality is None else f"{r.quality:.4g} {r.quality_metric} ({r.quality_source})"
        rows.append([r.name, r.method, r.precision, _f(r.target, "g", "x"), _f(r.predicted_speedup, ".3f", "x"),
                     _f(r.measured_speedup, ".3f", "x"), _f(r.prediction_error, "+.1%"), _f(r.predicted_ms),
                     _f(r.measured_ms), q, "–" if r.parity_ok is None else ("ok" if r.parity_ok else "FAIL")])
    return rows


def generation_rows(data: RunData) -> list[list[str]]:
    """Members verified on a generation workload: measured / predicted per figure (empty without any)."""
    members = [r for r in sorted(data.rows, key=lambda r: (r.method, r.target or 0)) if r.generation]
    if not members:
        return []

    def pair(measured: float | None, predicted: float | None, fmt: str, suffix: str = "") -> str:
        return f"{_f(measured, fmt, suffix)} / {_f(predicted, fmt, suffix)}"

    rows = [["model", "workload", "TTFT ms", "ms/token", "tokens/s", "e2e ms", "TTFT speedup", "decode speedup",
             "e2e speedup", "tokens = baseline's"]]
    first = members[0].generation
    rows.append(["baseline (timed beside the first)", first.workload, _f(first.baseline["ttft_ms"], ".1f"),
                 _f(first.baseline["ms_per_token"], ".2f"), _f(first.baseline["tokens_per_s"], ".1f"),
                 _f(first.baseline["e2e_ms"], ".0f"), "1.00x", "1.00x", "1.00x", "–"])
    for r in members:
        g = r.generation
        m, p, s, sp = g.measured, g.predicted, g.speedup, g.speedup_predicted
        rows.append([r.name, g.workload, pair(m["ttft_ms"], p["ttft_ms"], ".1f"),
                     pair(m["ms_per_token"], p["ms_per_token"], ".2f"), pair(m["tokens_per_s"], p["tokens_per_s"], ".1f"),
                     pair(m["e2e_ms"], p["e2e_ms"], ".0f"),
                     *(pair(s[k], sp[k], ".2f", "x") for k in GENERATION_SPEEDUPS), _f(g.token_agreement, ".0%")])
    return rows


def _html_table(rows: list[list[str]]) -> list[str]:
    return ["<table>", "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in rows[0]) + "</tr>",
            *("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows[1:]), "</table>"]


def _img(svg: str, alt: str) -> str:
    b64 = base64.b64encode(svg.encode()).decode()
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/svg+xml;base64,{b64}"/></figure>'


def render_html(data: RunData) -> str:
    heads, ffn = layer_plots(data)
    table = _html_table(table_rows(data))
    recovery = []
    if data.curves:
        recovery = ["<h2>Recovery</h2>", *_html_table(curve_rows(data)),
                    _img(recovery_plot(data), "held-out perplexity during recovery")]
    grows = generation_rows(data)
    generation = [] if not grows else [
        "<h2>Generation in ONNX Runtime GenAI (measured / predicted)</h2>", *_html_table(grows),
        "<p>Measured: the statistic of verify's interleaved generations; predicted: the workload tables "
        "(– without them). Speedups over the baseline timed beside each model. Tokens = baseline's: the share of "
        "the model's greedy tokens equal to the baseline's on verify's random-token prompt (reported, not judged: "
        "the sequences part at the first difference; each model's parity is its tokens against transformers').</p>"]
    models = [] if not data.rows else [
        "<h2>Quality vs speedup</h2>", _img(quality_plot(data), "quality vs measured speedup per method"),
        "<h2>Predicted vs measured latency</h2>", _img(latency_plot(data), "predicted vs measured latency"),
        "<h2>Per-layer shape</h2>", _img(heads, "kept heads per layer"), _img(ffn, "kept FFN width per layer")]
    warn = "".join(f"<li>{html.escape(w)}</li>" for w in data.warnings)
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8"/>',
        f"<title>ziplm-deploy run report: {html.escape(data.run.name)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f4f4f4}"
        "figure{display:inline-block;margin:8px}</style>", "</head>", "<body>",
        f"<h1>Run report: {html.escape(str(data.run))}</h1>",
        f"<p>{len(data.rows)} model(s); {sum(r.measured_speedup is not None for r in data.rows)} measured "
        "in the deployment runtime.</p>",
        *(table if data.rows else []),
        f"<ul>{warn}</ul>" if warn else "",
        *generation, *models, *recovery,
        "</body>", "</html>", ""])


def _markdown_table(rows: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
            + ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows[1:]])


def render_markdown(data: RunData) -> str:
    """The run as markdown: a title, then each block there is to show (members, int8-only points, recovery
    curves, warnings), one blank line apart."""
    blocks: list[list[str]] = []
    if data.rows:
        blocks.append(_markdown_table(table_rows(data)))
    grows = generation_rows(data)
    if grows:
        blocks.append(["Generation in ONNX Runtime GenAI (measured / predicted):", "", *_markdown_table(grows)])
    if data.quant_only:
        blocks.append([f"- {p} alone: predicted {x:.2f}x over the fp32 dense model (the point pruning on top "
                       "must beat)" for p, x in data.quant_only.items()])
    if data.curves:
        blocks.append(_markdown_table(curve_rows(data)))
    if data.warnings:
        blocks.append([f"- warning: {w}" for w in data.warnings])
    lines = [f"### ziplm-deploy run `{data.run.name}`"]
    for block in blocks:
        lines += ["", *block]
    return "\n".join(lines).rstrip() + "\n"
