"""``ziplm-deploy run PIPELINE.yaml [--out RUNDIR]``: every stage, resumable; exit 1 if the gate fails."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pipeline", help="pipeline YAML file (model, profile, prune, export, verify, gate, report)")
    p.add_argument("--out", help="run directory (default: runs/<pipeline file name>)")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..pipeline.run import run_pipeline
    from ..pipeline.spec import PipelineSpec

    spec = PipelineSpec.load(args.pipeline)
    out = Path(args.out or Path("runs") / Path(args.pipeline).stem)
    result = run_pipeline(spec, out, progress=not args.no_progress)
    reached = [m for m in result.members if m["reachable"]]
    print(f"run {out}: {len(reached)} of {len(result.members)} targets reached; stages run: "
          f"{', '.join(result.stages_run) or 'none'}; skipped: {', '.join(result.stages_skipped) or 'none'}")
    if result.gate_failures:
        print(f"gate FAILED for {', '.join(result.gate_failures)}")
        return 1
    if spec.gate is not None:
        print("gate PASSED")
    return 0 if len(reached) == len(result.members) else 1
