"""The report of a run directory: every model of every method, predicted and measured, with plots.

Reads ``RUNDIR/family-<method>.json`` (what ``prune`` wrote) and every ``*verify*.json`` below RUNDIR
(what ``verify`` wrote), matches verify reports to family members by the candidate's path, and renders
HTML (self-contained: plots are embedded SVG images) or Markdown (tables, for CI comments).
Plots: quality vs measured speedup per method with the Pareto front, predicted vs measured latency,
and the kept fraction of heads / FFN width per layer of each model.
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
from .report import VERIFY_FORMAT, VerifyReport
from .svg import PALETTE, Series, chart

FAMILY_FORMAT = "ziplm-deploy/family"


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

    @property
    def prediction_error(self) -> float | None:
        if self.measured_speedup and self.predicted_speedup:
            return self.measured_speedup / self.predicted_speedup - 1
        return None


@dataclass
class RunData:
    run: Path
    rows: list[ModelRow] = field(default_factory=list)
    dense: dict[str, int] = field(default_factory=dict)  # heads, ffn of the dense model
    warnings: list[str] = field(default_factory=list)


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
        _dense_from_model(data, fam.get("model"))
        for m in fam.get("members", []):
            if not m.get("reachable") or not m.get("path"):
                continue
            row = ModelRow(Path(m["path"]).name, fam.get("method", "?"), m["path"], m.get("target"),
                           m.get("predicted_speedup"), m.get("predicted_ms"), shape=m.get("shape"))
            if m.get("calibration_ppl") is not None:
                row.quality, row.quality_metric, row.quality_source = m["calibration_ppl"], "perplexity", "calibration"
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
    if not data.rows:
        raise UserError(f"{run} has no family-*.json and no verify reports", "run `ziplm-deploy prune --out RUNDIR` "
                        "and `ziplm-deploy verify --report RUNDIR/...verify.json` first")
    return data


def _dense_from_model(data: RunData, model_dir: str | None) -> None:
    if data.dense or not model_dir:
        return
    try:
        from ..core.arch import arch_from_dir

        arch = arch_from_dir(model_dir)
        data.dense = {"heads": arch.heads, "ffn": arch.ffn}
    except UserError:
        pass


def _merge_verify(data: RunData, by_path: dict[str, ModelRow], rep: VerifyReport, f: Path) -> None:
    cand = rep.candidate or {}
    row = by_path.get(_key(cand.get("source")))
    if row is None:
        manifest = cand.get("manifest") or {}
        metrics = manifest.get("metrics") or {}
        row = ModelRow(Path(str(cand.get("source", f.stem))).name, manifest.get("method") or "verified",
                       cand.get("source"), metrics.get("target_speedup"), shape=cand.get("shape"))
        data.rows.append(row)
        by_path[_key(cand.get("source"))] = row
    sp = rep.speedup or {}
    row.verify = str(f.relative_to(data.run))
    if rep.ok:
        row.measured_speedup, row.measured_ms = sp.get("measured"), sp.get("candidate_ms")
        row.baseline_ms = sp.get("baseline_ms")
    else:
        data.warnings.append(f"{row.verify}: measurement errored: {rep.error}")
    if sp.get("predicted") is not None:
        row.predicted_speedup, row.predicted_ms = sp["predicted"], sp.get("predicted_ms") or row.predicted_ms
    if row.target is None:
        row.target = sp.get("target")
    if rep.parity:
        row.parity_ok = bool(rep.parity.get("ok"))
    if rep.quality and rep.quality.get("candidate") is not None:
        row.quality, row.quality_metric, row.quality_source = rep.quality["candidate"], rep.quality["metric"], "eval"
    if row.shape is None:
        row.shape = cand.get("shape")
    if rep.ok and not any(r.method == "baseline" for r in data.rows):  # the reference point of the plots
        q = rep.quality or {}
        base = ModelRow("baseline", "baseline", (rep.baseline or {}).get("source"), 1.0, 1.0,
                        sp.get("predicted_baseline_ms"), 1.0, sp.get("baseline_ms"), sp.get("baseline_ms"),
                        q.get("baseline"), q.get("metric"), "eval" if q else None, shape=(rep.baseline or {}).get("shape"),
                        verify=row.verify)
        data.rows.insert(0, base)
    base_shape = (rep.baseline or {}).get("shape")
    if not data.dense and base_shape:
        layers = [lay for lay in base_shape.get("layers", []) if not lay.get("dropped")]
        if layers:
            data.dense = {"heads": max(lay["heads"] for lay in layers), "ffn": max(lay["ffn"] for lay in layers)}


# --- plots --------------------------------------------------------------------------------------------
def _methods(rows: list[ModelRow]) -> dict[str, str]:
    return {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(dict.fromkeys(r.method for r in rows))}


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
                if r.method != method or (r.measured_speedup is not None) != measured:
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
    return chart(series, f"{metric} vs speedup (filled: measured, hollow: predicted)", "speedup over the dense model (x)",
                 metric + (" (lower is better)" if metric != "accuracy" else " (higher is better)"))


def latency_plot(data: RunData) -> str:
    colors = _methods(data.rows)
    series = []
    for method, color in colors.items():
        rows = [r for r in data.rows if r.method == method and r.predicted_ms and r.measured_ms]
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


# --- rendering ----------------------------------------------------------------------------------------
def _f(x: Any, fmt: str = ".3f", suffix: str = "") -> str:
    return "–" if x is None else f"{x:{fmt}}{suffix}"


def table_rows(data: RunData) -> list[list[str]]:
    head = ["model", "method", "target", "predicted", "measured", "pred. error", "predicted ms", "measured ms",
            "quality", "parity"]
    rows = [head]
    for r in sorted(data.rows, key=lambda r: (r.method, r.target or 0)):
        q = "–" if r.quality is None else f"{r.quality:.4g} {r.quality_metric} ({r.quality_source})"
        rows.append([r.name, r.method, _f(r.target, "g", "x"), _f(r.predicted_speedup, ".3f", "x"),
                     _f(r.measured_speedup, ".3f", "x"), _f(r.prediction_error, "+.1%"), _f(r.predicted_ms),
                     _f(r.measured_ms), q, "–" if r.parity_ok is None else ("ok" if r.parity_ok else "FAIL")])
    return rows


def _img(svg: str, alt: str) -> str:
    b64 = base64.b64encode(svg.encode()).decode()
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/svg+xml;base64,{b64}"/></figure>'


def render_html(data: RunData) -> str:
    rows = table_rows(data)
    heads, ffn = layer_plots(data)
    table = ["<table>", "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in rows[0]) + "</tr>"]
    table += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows[1:]]
    table.append("</table>")
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
        *table,
        f"<ul>{warn}</ul>" if warn else "",
        "<h2>Quality vs speedup</h2>", _img(quality_plot(data), "quality vs measured speedup per method"),
        "<h2>Predicted vs measured latency</h2>", _img(latency_plot(data), "predicted vs measured latency"),
        "<h2>Per-layer shape</h2>", _img(heads, "kept heads per layer"), _img(ffn, "kept FFN width per layer"),
        "</body>", "</html>", ""])


def render_markdown(data: RunData) -> str:
    rows = table_rows(data)
    lines = [f"### ziplm-deploy run `{data.run.name}`", "",
             "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows[1:]]
    lines += [""] + [f"- warning: {w}" for w in data.warnings]
    return "\n".join(lines).rstrip() + "\n"
