"""``ziplm-deploy export --model DIR --out FILE.onnx [--with-past]``"""

from __future__ import annotations

import argparse

from .argtypes import nonneg_float


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory (dense or pruned)")
    p.add_argument("--out", required=True, help="output .onnx file (and FILE.onnx.reference.npz, the reference outputs "
                   "verify compares with); --with-past also writes <stem>_with_past.onnx")
    p.add_argument("--with-past", action="store_true",
                   help="decoders: prefill graph with present.* outputs plus a decode graph with past_key_values.* inputs")
    p.add_argument("--atol", type=nonneg_float, default=1e-4, help="validation: absolute tolerance (default 1e-4)")
    p.add_argument("--rtol", type=nonneg_float, default=1e-3,
                   help="validation: tolerance relative to each output's max |value| (default 1e-3)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..core.arch import arch_from_dir
    from ..core.checks import check_output_path
    from ..core.errors import UserError

    out = Path(args.out)
    if out.suffix != ".onnx":
        raise UserError(f"--out {out} must end in .onnx")
    check_output_path(out, "--out")
    arch = arch_from_dir(args.model)
    if args.with_past and not arch.is_decoder:
        raise UserError(f"--with-past needs a decoder model; {args.model} is a {arch.family} encoder", "drop --with-past")
    targets = [out] + ([out.with_name(out.stem + "_with_past.onnx")] if args.with_past else [])
    existing = [str(t) for t in targets if t.exists()]
    if existing and not args.overwrite:
        raise UserError(f"output exists: {', '.join(existing)}", "choose another --out or pass --overwrite")

    from ..export import export_onnx
    from ..models import load_model

    model = load_model(args.model)
    result = export_onnx(model, out, with_past=args.with_past, atol=args.atol, rtol=args.rtol, source=args.model)
    for d in result.diffs:
        if d.name in ("logits", "last_hidden_state"):
            print(f"  {d.graph:8s} {d.name}: max|diff| {d.max_abs:.2e}  mean {d.mean_abs:.2e}  (tolerance {d.tolerance:.2e})")
    worst = max(result.diffs, key=lambda d: d.max_abs / max(d.tolerance, 1e-30))
    print(f"exported {', '.join(map(str, result.paths))} in {result.seconds:.1f}s; "
          f"ONNX Runtime matches PyTorch on all {len(result.diffs)} outputs "
          f"(worst {worst.graph}:{worst.name} {worst.max_abs:.2e} <= {worst.tolerance:.2e})")
    print(f"reference outputs for verify: {', '.join(map(str, result.references))}")
    return 0
