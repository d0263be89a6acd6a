"""``ziplm-deploy demo [--out DIR]``: the whole flow on the embedded SmolLM2-135M and Wikipedia text."""

from __future__ import annotations

import argparse

from . import argtypes
from ..pipeline.demo import DEMO_PRECISION


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--targets", type=argtypes.speedup, nargs="+", default=[1.5, 2.0, 3.0],
                   help="speedup targets (1.5 2 3)")
    p.add_argument("--threads", type=argtypes.nonneg_int, default=1, help="ONNX Runtime intra-op threads (default 1)")
    p.add_argument("--seq", type=argtypes.positive_int, default=128, help="sequence length for timing (default 128)")
    p.add_argument("--rounds", type=argtypes.positive_int, default=20, help="interleaved timing rounds (default 20)")
    p.add_argument("--windows", type=argtypes.positive_int, default=64,
                   help="calibration windows of 128 tokens (default 64)")
    p.add_argument("--precision", default=DEMO_PRECISION, type=_precision_label,
                   help=f"deployment precision (default {DEMO_PRECISION}: ZipLM stacked on ONNX Runtime int8 with the "
                        "embedding table and the FFN output projections of the 6 layers `int8-plan` picks kept fp32, "
                        "which alone gives ~1.96x at ~1.16x dense perplexity; targets are total speedups over the fp32 "
                        "dense model; int8-dynamic: ~1.9x alone at ~1.85x; fp32: pruning only)")
    p.add_argument("--probe-windows", type=argtypes.positive_int, default=2,
                   help="windows each sensitivity probe of the search is scored on (default 2)")


def _precision_label(text: str) -> str:
    """A precision label, normalised (argparse turns the UserError into a usage error, exit 2)."""
    from ..core.errors import UserError
    from ..runtime.quantize import Precision

    try:
        return Precision.parse(text, "--precision").label
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..pipeline.demo import format_report, run_demo

    report = run_demo(Path(args.out), targets=tuple(args.targets), threads=args.threads, seq=args.seq,
                      rounds=args.rounds, windows=args.windows,
                      probe_windows=args.probe_windows, precision=args.precision)
    print(format_report(report))
    return 1 if report.gate_failed else 0
