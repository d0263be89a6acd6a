"""Benchmark: a recovered member against its one-shot self and the dense model, in the precision it ships in.

Exports (fp32, and quantized with ``--precision``) the dense model, the one-shot member and the recovered one
(``distill --out``'s ``model/``), measures held-out perplexity of every graph in ONNX Runtime (news text, gensim
``lee_background.cor``, ``--eval-windows`` x 512 tokens, as ``bench_quant.py``) and times them all in one
interleaved ORT CPU run (1 thread, B1 S128, p25). Adds the recovery curve from the run's ``train.json``.

    python tools/bench_recovered.py --oneshot runs/x/ziplm-3x --recovered runs/x/ziplm-3x-lm/model \\
        --precision int8-dynamic/fp32-embed/fp32-down=1,2,9,10,11,28 --name joint-3x-plan-lm [--work DIR]

Writes tools/results/recovery_cpu_<name>.eval.json (and copies the train.json beside it). Exports and
perplexities are cached in ``--work``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench_quant import export_point, load_average, measured_rows, quantized_point  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--oneshot", required=True, help="the member before recovery (a prune output directory)")
    p.add_argument("--recovered", required=True, help="the member after recovery (distill's OUT/model)")
    p.add_argument("--precision", default="fp32", help="the precision the member ships in (its table's)")
    p.add_argument("--name", required=True)
    p.add_argument("--work", default=str(ROOT / "runs" / "bench-recovered"))
    p.add_argument("--eval-windows", type=int, default=8)
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args()

    from bench_prune import heldout_windows
    from ziplm_deploy.models.assets import smollm2_dir
    from ziplm_deploy.models.tokenizer import load_tokenizer

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    models = {"dense": str(smollm2_dir()), "oneshot": args.oneshot, "recovered": args.recovered}
    files = {}
    for role, model_dir in models.items():
        stem = "dense" if role == "dense" else f"{args.name}-{role}"
        fp32 = export_point(model_dir, stem, work)
        files[f"{role}/fp32"] = fp32
        if args.precision != "fp32":
            files[f"{role}/{args.precision}"] = quantized_point(fp32, work, args.precision)
    evalw = heldout_windows(load_tokenizer(str(smollm2_dir())), 512, args.eval_windows).numpy()
    rows, load, _ = measured_rows(work, files, evalw, args.rounds, "dense/fp32")
    train = Path(args.recovered).parent / "train.json"
    result = {"benchmark": "recovered", "date": time.strftime("%Y-%m-%d"), "name": args.name,
              "precision": args.precision, "oneshot": args.oneshot, "recovered": args.recovered,
              "quality": f"perplexity in ONNX Runtime on {evalw.size} held-out tokens (lee_background.cor), windows of 512",
              "timing": f"onnxruntime CPU, 1 thread, B1 S128, p25 of {args.rounds} interleaved rounds",
              "load_before": load, "load_after": load_average(), "rows": rows,
              "curve": json.loads(train.read_text())["evals"] if train.is_file() else None}
    out = ROOT / "tools" / "results" / f"recovery_cpu_{args.name}.eval.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    if train.is_file():
        shutil.copyfile(train, out.with_name(f"recovery_cpu_{args.name}.train.json"))
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
