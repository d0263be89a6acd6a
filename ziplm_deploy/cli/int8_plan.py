"""``ziplm-deploy int8-plan --model DIR --calib DATA [--layers K] [--base int8-dynamic/fp32-embed]``

Measures, on calibration text, how badly ONNX Runtime's per-tensor dynamic int8 represents each layer's FFN
output projection input (massive activations), and prints the precision label that keeps the K worst layers'
projections fp32 (``...fp32-down=L,...``): pass it to ``profile --precision``, ``prune`` (through the table),
``export --precision`` and pipeline files. Needs torch; writes nothing unless ``--out PLAN.json``.
"""

from __future__ import annotations

import argparse

from . import argtypes


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory (the dense model)")
    p.add_argument("--calib", default="wikipedia", help="calibration text (default wikipedia)")
    p.add_argument("--windows", type=argtypes.positive_int, default=8, help="windows of --seq-len tokens (default 8)")
    p.add_argument("--seq-len", type=argtypes.positive_int, default=128, help="window length (default 128)")
    p.add_argument("--layers", type=argtypes.nonneg_int, default=None,
                   help="how many layers keep their output projection fp32 (default: a fifth of the layers)")
    p.add_argument("--base", default="int8-dynamic/fp32-embed",
                   help="the int8 recipe to add the layer list to (default int8-dynamic/fp32-embed)")
    p.add_argument("--out", help="also write the plan (label and per-layer errors) as JSON here")


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ..core.arch import arch_from_dir
    from ..core.checks import check_output_path
    from ..core.errors import UserError
    from ..runtime.quantize import Precision

    base = Precision.parse(args.base, "--base")
    if not base.quantized or base.fp32_down or base.fp32_down_layers:
        raise UserError(f"--base {args.base} must be an int8 recipe without fp32-down", "e.g. int8-dynamic/fp32-embed")
    arch = arch_from_dir(args.model)
    if not arch.is_decoder:
        raise UserError("int8-plan ranks a causal LM's layers on text", "pass a decoder model directory")
    count = max(1, round(arch.num_layers / 5)) if args.layers is None else args.layers
    if count > arch.num_layers:
        raise UserError(f"--layers {count} is more than the model's {arch.num_layers} layers", "pass fewer")
    out = check_output_path(args.out, "--out") if args.out else None

    from ..core.jsonio import atomic_write_json
    from ..models import load_model
    from ..models.tokenizer import load_tokenizer
    from ..prune.data import calibration_windows
    from ..prune.outliers import down_input_errors, pick_layers

    windows = calibration_windows(load_tokenizer(args.model), args.calib, args.seq_len, args.windows)
    errors = down_input_errors(load_model(args.model).eval(), windows)
    layers = pick_layers(errors, count)
    label = replace(base, fp32_down_layers=layers).label if layers else base.label
    median = sorted(e.error for e in errors)[len(errors) // 2] if errors else 0.0
    for e in sorted(errors, key=lambda e: -e.error)[: max(count, 8)]:
        mark = " <- fp32" if e.layer in layers else ""
        print(f"  layer {e.layer:3d}: output projection input error {e.error:.4f}{mark}")
    print(f"median over {len(errors)} layers {median:.4f}; {len(layers)} kept fp32")
    print(label)
    if out is not None:
        atomic_write_json(out, {"format": "ziplm-deploy/int8-plan", "version": 1, "precision": label,
                                "calibration": {"data": str(args.calib), "windows": len(windows), "seq_len": args.seq_len},
                                "errors": {str(e.layer): round(e.error, 6) for e in errors}})
    return 0
