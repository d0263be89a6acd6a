"""Benchmark: sequential re-fit of the pruned output projections (prune/refit.py) on SmolLM2-135M one-shot members.

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
TABLE = ROOT / "profiles" / "smollm2-135m_ort-cpu_b1_s128_t1.json"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--targets", type=float, nargs="+", default=[1.5, 2.0, 3.0])
    p.add_argument("--windows", type=int, default=64)
    p.add_argument("--eval-windows", type=int, default=16)
    p.add_argument("--eval-seq", type=int, default=256)
    p.add_argument("--attention-levels", default="heads-in-groups")
    p.add_argument("--work", default=str(ROOT / "runs" / "bench_attention_levels"))
    args = p.parse_args()

    import torch

    from tools.bench_prune import heldout_windows
    from ziplm_deploy.core.table import LatencyTable
    from ziplm_deploy.models import load_model
    from ziplm_deploy.models.assets import smollm2_dir
    from ziplm_deploy.models.tokenizer import load_tokenizer
    from ziplm_deploy.prune.data import calibration_windows
    from ziplm_deploy.prune.evaluate import perplexity
    from ziplm_deploy.prune.family import PruneConfig, _database, _sensitivity_costs
    from ziplm_deploy.prune.refit import refit_sequential
    from ziplm_deploy.prune.search import search
    from ziplm_deploy.prune.stitch import stitch

    torch.manual_seed(0)
    model_dir = smollm2_dir()
    tokenizer = load_tokenizer(model_dir)
    table = LatencyTable.load(TABLE)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    evalw = heldout_windows(tokenizer, args.eval_seq, args.eval_windows)
    dense = load_model(model_dir).eval()
    config = PruneConfig(method="ziplm", targets=tuple(args.targets), windows=args.windows,
                         attention_levels=args.attention_levels)
    windows = calibration_windows(tokenizer, "wikipedia", config.seq_len, config.windows, config.seed)
    db, hessians = _database(dense, windows, config, model_dir, work, print, True)
    costs = _sensitivity_costs(dense, db, hessians, windows, config, work, print, True)
    results = {"model": "SmolLM2-135M", "table": TABLE.name, "calibration_windows": args.windows,
               "attention_levels": args.attention_levels,
               "eval": f"{args.eval_windows} x {args.eval_seq} tokens of lee_background.cor",
               "dense_perplexity": perplexity(dense, evalw, progress=False), "rows": []}
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
