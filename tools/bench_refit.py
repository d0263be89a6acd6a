"""Benchmark: sequential re-fit of the pruned output projections (tools/refit.py) on SmolLM2-135M one-shot members.

Same table (profiles/, fp32 ORT CPU), calibration (gensim's Wikipedia, 64 x 128 tokens), database and search
(measured sensitivity costs, heads within KV groups) as the product's defaults; each member is stitched with
the OBS reconstruction (today), then re-fitted block by block to the dense model's projection outputs on the
same calibration windows: scope ``pruned`` (projections of pruned blocks) or ``all`` (every projection).
Quality: held-out perplexity on gensim's lee_background news (never calibrated on), PyTorch fp32.

    python tools/bench_refit.py [--targets 1.5 2 3] [--work DIR]

Writes tools/results/refit_smollm2.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--targets", type=float, nargs="+", default=[1.5, 2.0, 3.0])
    p.add_argument("--windows", type=int, default=64)
    p.add_argument("--eval-windows", type=int, default=16)
    p.add_argument("--eval-seq", type=int, default=256)
    p.add_argument("--attention-levels", default="heads-in-groups")
    p.add_argument("--work", default=str(ROOT / "runs" / "bench_attention_levels"))
    args = p.parse_args()

    from tools.bench_attention_levels import TABLE, smollm2_setup, ziplm_database
    from ziplm_deploy.prune.evaluate import perplexity
    from ziplm_deploy.prune.family import PruneConfig
    from tools.refit import refit_sequential
    from ziplm_deploy.prune.search import search
    from ziplm_deploy.prune.stitch import stitch

    setup = smollm2_setup(args.work, args.eval_windows, args.eval_seq)
    dense, table, evalw = setup.dense, setup.table, setup.evalw
    config = PruneConfig(method="ziplm", targets=tuple(args.targets), windows=args.windows,
                         attention_levels=args.attention_levels)
    windows, db, hessians, costs = ziplm_database(setup, config)
    results = {"model": "SmolLM2-135M", "table": TABLE.name, "calibration_windows": args.windows,
               "attention_levels": args.attention_levels,
               "eval": f"{args.eval_windows} x {args.eval_seq} tokens of lee_background.cor",
               "dense_perplexity": setup.dense_perplexity, "rows": []}
    print(f"dense perplexity {results['dense_perplexity']:.2f}")
    for r in search(db, table, args.targets, costs=costs):
        if not r.reachable:
            continue
        row = {"target": r.target, "predicted_speedup": round(r.predicted_speedup, 3)}
        stitched = stitch(copy.deepcopy(dense), db, hessians, r.levels)
        row["obs"] = round(perplexity(stitched, evalw, progress=False), 2)
        for scope in ("pruned", "all"):
            t0 = time.perf_counter()
            model = refit_sequential(dense, copy.deepcopy(stitched), windows, damp=config.damp, scope=scope)
            row[f"refit_{scope}_seconds"] = round(time.perf_counter() - t0, 1)
            row[f"refit_{scope}"] = round(perplexity(model, evalw, progress=False), 2)
        results["rows"].append(row)
        print(row)
    out = ROOT / "tools" / "results"
    (out / "refit_smollm2.json").write_text(json.dumps(results, indent=1) + "\n")
    d = results["dense_perplexity"]
    lines = [f"SmolLM2-135M one-shot ZipLM ({args.attention_levels}, sensitivity costs), {args.windows} x 128 "
             f"Wikipedia calibration tokens, table {TABLE.name}; held-out {results['eval']}; dense perplexity {d:.2f}",
             "", "| target | predicted | OBS stitch | refit pruned projections | refit every projection |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['target']:g}x | {r['predicted_speedup']:.2f}x | {r['obs']:.1f} ({r['obs'] / d:.1f}x) | "
              f"{r['refit_pruned']:.1f} ({r['refit_pruned'] / d:.1f}x), {r['refit_pruned_seconds']:.0f} s | "
              f"{r['refit_all']:.1f} ({r['refit_all'] / d:.1f}x), {r['refit_all_seconds']:.0f} s |"
              for r in results["rows"]]
    (out / "refit_smollm2.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
