"""Benchmark: int8-static (QDQ, calibrated) against int8-dynamic on dense SmolLM2-135M, recipe by recipe.

Each recipe's graph is made from one fp32 export by the product's ``runtime.quantize.quantize_file_to`` (static:
calibrated on ``--calib-windows`` x 128 Wikipedia tokens), its perplexity measured in ONNX Runtime on the held-out
news windows ``bench_quant.py`` uses (8 x 512), and every graph timed in one interleaved ORT CPU run (1 thread, B1
S128, p25).

    python tools/bench_int8_static.py [--work runs/bench-int8-static] [--rounds 15]

Writes tools/results/int8_static_smollm2.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench_quant import export_point, load_average, log, measured_rows  # noqa: E402

RECIPES = ("", "/fp32-embed", "/fp32-embed/fp32-down=1,2,9,10,11,28", "/fp32-embed/fp32-down")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", default=str(ROOT / "runs" / "bench-int8-static"))
    p.add_argument("--calib-windows", type=int, default=16)
    p.add_argument("--eval-windows", type=int, default=8)
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args()

    from bench_prune import heldout_windows
    from ziplm_deploy.models.assets import smollm2_dir
    from ziplm_deploy.models.tokenizer import load_tokenizer
    from ziplm_deploy.prune.data import calibration_windows
    from ziplm_deploy.runtime.quantize import Precision, quantize_file_to

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    tok = load_tokenizer(str(smollm2_dir()))
    fp32 = export_point(str(smollm2_dir()), "dense", work)
    calib = calibration_windows(tok, "wikipedia", 128, args.calib_windows).numpy()
    files = {"fp32": fp32}
    for scheme in ("int8-dynamic", "int8-static"):
        for recipe in RECIPES:
            label = scheme + recipe
            out = work / "q" / (label.replace("/", "_") + ".onnx")
            out.parent.mkdir(exist_ok=True)
            if not out.is_file():
                log(f"quantizing {label}")
                quantize_file_to(fp32, out, Precision.parse(label), calibration=calib if scheme == "int8-static" else None)
            files[label] = out
    evalw = heldout_windows(tok, 512, args.eval_windows).numpy()
    rows, load, stats = measured_rows(work, files, evalw, args.rounds, "fp32")
    result = {"benchmark": "int8_static_smollm2", "date": time.strftime("%Y-%m-%d"),
              "calibration": f"{args.calib_windows} x 128 Wikipedia tokens (int8-static)",
              "quality": f"perplexity in ONNX Runtime on {evalw.size} held-out tokens (lee_background.cor), windows of 512",
              "timing": f"onnxruntime CPU, 1 thread, B1 S128, p25 of {args.rounds} interleaved rounds",
              "load_before": load, "load_after": load_average(),
              "drift": round(stats["fp32:recheck"].p25 / stats["fp32"].p25 - 1, 4), "rows": rows}
    out = ROOT / "tools" / "results" / "int8_static_smollm2.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
