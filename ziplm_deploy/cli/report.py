"""``ziplm-deploy report RUNDIR --out report.html [--markdown report.md]``

Every model of the run (family-*.json from `prune`, *verify*.json from `verify`) in one table, with
embedded plots: quality vs measured speedup (Pareto front), predicted vs measured latency, per-layer shape.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run directory (the --out of `ziplm-deploy prune`, with verify reports in it)")
    p.add_argument("--out", help="HTML report (default RUNDIR/report.html)")
    p.add_argument("--markdown", help="also write a Markdown summary (CI comment)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..core.checks import check_output_path
    from ..core.jsonio import atomic_write_bytes
    from ..verify.runreport import collect, render_html, render_markdown

    out = check_output_path(args.out or Path(args.run) / "report.html", "--out")
    if args.markdown:
        check_output_path(args.markdown, "--markdown")
    data = collect(args.run)
    atomic_write_bytes(out, render_html(data).encode())
    if args.markdown:
        atomic_write_bytes(args.markdown, render_markdown(data).encode())
    measured = sum(r.measured_speedup is not None for r in data.rows)
    print(f"report: {out} ({len(data.rows)} models, {measured} measured)"
          + (f"; markdown: {args.markdown}" if args.markdown else ""))
    for w in data.warnings:
        print(f"warning: {w}")
    return 0
