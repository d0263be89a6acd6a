"""Small dependency-free SVG charts (scatter / lines) for the run report."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from xml.sax.saxutils import escape

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")
W, H = 600, 360
LEFT, RIGHT, TOP, BOTTOM = 64, 190, 36, 48


@dataclass
class Series:
    label: str
    points: list[tuple[float, float]]
    color: str = PALETTE[0]
    hollow: bool = False  # e.g. predicted instead of measured
    connect: bool = False  # draw a line through the points (in order)
    dashed: bool = False
    markers: bool = True
    notes: list[str] = field(default_factory=list)  # per-point tooltip text


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0, 1.0]
    if hi - lo < 1e-12:
        lo, hi = lo - (abs(lo) * 0.1 or 1), hi + (abs(hi) * 0.1 or 1)
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=10 * mag)
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [round(k * step, 12) for k in range(first, last + 1)]


def _label(v: float) -> str:
    return f"{v:.4g}"


def chart(series: list[Series], title: str, xlabel: str, ylabel: str, diagonal: bool = False,
          y_from_zero: bool = False) -> str:
    """An SVG document (string). ``diagonal`` draws y = x (predicted vs measured)."""
    pts = [p for s in series for p in s.points]
    if not pts:
        return _empty(title)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    if diagonal:
        lo, hi = min(xs + ys), max(xs + ys)
        xs = ys = [lo, hi]
    xt, yt = nice_ticks(min(xs), max(xs)), nice_ticks(min(ys + [0.0]) if y_from_zero else min(ys), max(ys))
    x0, x1, y0, y1 = xt[0], xt[-1], yt[0], yt[-1]
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def sx(x: float) -> float:
        return LEFT + (x - x0) / ((x1 - x0) or 1) * pw

    def sy(y: float) -> float:
        return TOP + ph - (y - y0) / ((y1 - y0) or 1) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2:.1f}" y="20" text-anchor="middle" font-size="13" font-weight="bold">{escape(title)}</text>']
    for t in xt:
        out.append(f'<line x1="{sx(t):.1f}" y1="{TOP}" x2="{sx(t):.1f}" y2="{TOP + ph}" stroke="#eee"/>')
        out.append(f'<text x="{sx(t):.1f}" y="{TOP + ph + 14}" text-anchor="middle">{_label(t)}</text>')
    for t in yt:
        out.append(f'<line x1="{LEFT}" y1="{sy(t):.1f}" x2="{LEFT + pw}" y2="{sy(t):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{LEFT - 6}" y="{sy(t) + 4:.1f}" text-anchor="end">{_label(t)}</text>')
    out.append(f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>')
    out.append(f'<text x="{LEFT + pw / 2:.1f}" y="{H - 10}" text-anchor="middle">{escape(xlabel)}</text>')
    out.append(f'<text transform="translate(14,{TOP + ph / 2:.1f}) rotate(-90)" text-anchor="middle">'
               f'{escape(ylabel)}</text>')
    if diagonal:
        out.append(f'<line x1="{sx(x0):.1f}" y1="{sy(x0):.1f}" x2="{sx(x1):.1f}" y2="{sy(x1):.1f}" '
                   f'stroke="#999" stroke-dasharray="4 3"/>')
    for i, s in enumerate(series):
        if s.connect and len(s.points) > 1:
            path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s.points)
            dash = ' stroke-dasharray="5 3"' if s.dashed else ""
            out.append(f'<polyline points="{path}" fill="none" stroke="{s.color}" stroke-width="1.5"{dash}/>')
        if s.markers:
            fill = "white" if s.hollow else s.color
            for j, (x, y) in enumerate(s.points):
                note = escape(s.notes[j]) if j < len(s.notes) else f"{escape(s.label)}: ({_label(x)}, {_label(y)})"
                out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="4" fill="{fill}" stroke="{s.color}" '
                           f'stroke-width="1.5"><title>{note}</title></circle>')
        ly = TOP + 8 + 16 * i
        fill = "white" if s.hollow else s.color
        out.append(f'<circle cx="{LEFT + pw + 14}" cy="{ly}" r="4" fill="{fill}" stroke="{s.color}"/>')
        out.append(f'<text x="{LEFT + pw + 24}" y="{ly + 4}">{escape(s.label[:26])}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _empty(title: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="80" viewBox="0 0 {W} 80" '
            f'font-family="sans-serif" font-size="12"><rect width="{W}" height="80" fill="white"/>'
            f'<text x="10" y="24" font-weight="bold">{escape(title)}</text>'
            f'<text x="10" y="50">no data in this run</text></svg>')
