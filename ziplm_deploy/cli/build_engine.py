"""``ziplm-deploy build-engine --onnx FILE --out FILE.plan [--fp16|--bf16] [--min/--opt/--max SHAPES]``

Writes the serialized TensorRT engine and its metadata sidecar ``FILE.plan.json`` (TensorRT version,
GPU model and compute capability, precision, optimisation profile, source ONNX sha256). Loading the
engine on another GPU model or TensorRT version is refused. Needs TensorRT and an NVIDIA GPU.

Shapes: trtexec style ``input_ids:1x128,attention_mask:1x128``, or ``BxS`` for every input of that rank.
Without --min/--max the profile is fixed at --opt (default ``1x128``).
"""

from __future__ import annotations

import argparse

from . import argtypes


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--onnx", required=True, help="source ONNX file")
    p.add_argument("--out", required=True, help="engine file (.plan); the sidecar goes to OUT.json")
    prec = p.add_mutually_exclusive_group()
    prec.add_argument("--fp16", action="store_true", help="allow fp16 kernels")
    prec.add_argument("--bf16", action="store_true", help="allow bf16 kernels")
    p.add_argument("--min", help="smallest input shapes of the optimisation profile")
    p.add_argument("--opt", default="1x128", help="shapes TensorRT tunes for (default 1x128)")
    p.add_argument("--max", help="largest input shapes of the optimisation profile")
    p.add_argument("--timing-cache", help="TensorRT timing cache file (read if present, then updated)")
    p.add_argument("--workspace-mb", type=argtypes.positive_int, default=4096,
                   help="builder workspace (default 4096 MB)")
    p.add_argument("--opt-level", default="3", choices=tuple("012345"),
                   help="builder optimisation level 0..5 (default 3)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing engine")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..core.checks import check_output_path
    from ..core.errors import UserError
    from ..export.tensorrt import build_engine, onnx_input_ranks, profiles_from_args
    from ..runtime.tensorrt import _import_trt, sidecar_path
    from ..verify.inputs import onnx_metadata

    src, out = Path(args.onnx), Path(args.out)
    if not src.is_file():
        raise UserError(f"ONNX file not found: {src}")
    check_output_path(out, "--out")
    check_output_path(sidecar_path(out), "engine metadata")
    if args.timing_cache:
        check_output_path(args.timing_cache, "--timing-cache")
    if out.exists() and not args.overwrite:
        raise UserError(f"engine exists: {out}", "choose another --out or pass --overwrite")
    _import_trt()  # a clear error before any work where TensorRT is missing
    onnx_metadata(src)  # a clear error for a file that is not ONNX
    profiles = profiles_from_args(onnx_input_ranks(src), args.min, args.opt, args.max)
    precision = "fp16" if args.fp16 else "bf16" if args.bf16 else "fp32"
    meta = build_engine(src, out, profiles, precision=precision, timing_cache=args.timing_cache,
                        workspace_mb=args.workspace_mb, opt_level=args.opt_level)
    print(f"engine: {out} ({out.stat().st_size / 2**20:.1f} MB, {precision}, TensorRT {meta['tensorrt_version']}, "
          f"{meta['gpu']} sm {meta['compute_capability']}); metadata: {sidecar_path(out)}")
    return 0
