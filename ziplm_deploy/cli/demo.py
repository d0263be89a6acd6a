"""``ziplm-deploy demo [--out DIR]``: the whole flow on the embedded SmolLM2-135M and Wikipedia text."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--shape", help="per-layer shape JSON (default: 6 of 9 heads, FFN 1024 in every layer)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default 1)")
    p.add_argument("--seq", type=int, default=128, help="sequence length for timing (default 128)")
    p.add_argument("--rounds", type=int, default=30, help="interleaved timing rounds (default 30)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..core.shape import ModelShape
    from ..pipeline.demo import format_report, run_demo

    shape = ModelShape.load(args.shape) if args.shape else None
    report = run_demo(Path(args.out), shape=shape, threads=args.threads, seq=args.seq, rounds=args.rounds)
    print(format_report(report))
    print(f"artifacts and demo.json in {args.out}")
    return 0
