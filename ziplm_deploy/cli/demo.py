"""``ziplm-deploy demo [--out DIR] [--workload chat]``: the whole flow on the embedded SmolLM2-135M and Wikipedia
text; with ``--workload chat``, pruned for generation and timed in ONNX Runtime GenAI."""

from __future__ import annotations

import argparse

from . import argtypes
from ..pipeline.demo import DEMO_PRECISION


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--workload", choices=("chat",), default=None,
                   help="chat: prune for generation (prompt 512, 128 generated tokens; the family searched on end-to-end "
                        "time), ship each member as an ONNX Runtime GenAI folder and time TTFT and tokens/s in GenAI "
                        "(fp32; default: one 128-token prefill pass in ONNX Runtime, int8 + pruning)")
    p.add_argument("--targets", type=argtypes.speedup, nargs="+", default=None,
                   help="speedup targets (default 1.5 2 3; with --workload chat, end-to-end: 1.5 2)")
    p.add_argument("--threads", type=argtypes.nonneg_int, default=1, help="ONNX Runtime intra-op threads (default 1)")
    p.add_argument("--seq", type=argtypes.positive_int, default=None,
                   help="sequence length for timing (default 128; not with --workload)")
    p.add_argument("--rounds", type=argtypes.positive_int, default=None,
                   help="interleaved timing rounds (default 20; with --workload chat: 5 whole generations per model)")
    p.add_argument("--windows", type=argtypes.positive_int, default=64,
                   help="calibration windows of 128 tokens (default 64)")
    p.add_argument("--precision", default=None, type=_precision_label,
                   help=f"deployment precision (default {DEMO_PRECISION}: ZipLM stacked on ONNX Runtime int8 with the "
                        "embedding table and the FFN output projections of the 6 layers `int8-plan` picks kept fp32, "
                        "which alone gives ~1.96x at ~1.16x dense perplexity; targets are total speedups over the fp32 "
                        "dense model; int8-dynamic: ~1.9x alone at ~1.85x; fp32: pruning only; --workload chat: fp32)")
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

    from ..core.errors import UserError
    from ..pipeline.demo import format_chat_report, format_report, run_chat_demo, run_demo

    if args.workload == "chat":
        if args.seq is not None:
            raise UserError("--seq does not go with --workload chat (the workload's prompt is 512 tokens)", "drop --seq")
        if args.precision not in (None, "fp32"):
            raise UserError(f"--workload chat generates with fp32 GenAI folders, not {args.precision}",
                            "drop --precision (or run the prefill demo without --workload)")
        report = run_chat_demo(Path(args.out), targets=tuple(args.targets or (1.5, 2.0)), threads=args.threads,
                               rounds=args.rounds or 5, windows=args.windows, probe_windows=args.probe_windows)
        print(format_chat_report(report))
        return 1 if report.gate_failed else 0
    report = run_demo(Path(args.out), targets=tuple(args.targets or (1.5, 2.0, 3.0)), threads=args.threads,
                      seq=args.seq or 128, rounds=args.rounds or 20, windows=args.windows,
                      probe_windows=args.probe_windows, precision=args.precision or DEMO_PRECISION)
    print(format_report(report))
    return 1 if report.gate_failed else 0
