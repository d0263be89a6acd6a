"""Benchmark: one-shot ZipLM quality on SmolLM2-135M, OBS-loss search vs measured-sensitivity search.

Same table (profiles/), same calibration (gensim's Wikipedia, 128-token windows), same OBS database;
the only change is the cost the DP minimises: the per-module OBS loss (today's default) or the
measured end-to-end KL of each module at a few probe levels (prune/sensitivity.py). Quality: held-out
perplexity on gensim's lee_background news text (never used for calibration).

    python tools/bench_oneshot.py [--targets 1.5 2] [--windows 64] [--probe-windows 8] [--work DIR]

Writes tools/results/oneshot_smollm2.{json,md}.
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
    p.add_argument("--targets", type=float, nargs="+", default=[1.5, 2.0])
    p.add_argument("--windows", type=int, default=64)
    p.add_argument("--probe-windows", type=int, default=8)
    p.add_argument("--eval-windows", type=int, default=16)
    p.add_argument("--eval-seq", type=int, default=256)
    p.add_argument("--work", default=str(ROOT / "runs" / "bench_oneshot"))
    p.add_argument("--tag", default="", help="suffix of the result files (oneshot_smollm2<tag>.json/.md)")
    args = p.parse_args()

    import torch

    from tools.bench_prune import heldout_windows
    from ziplm_deploy.core.table import LatencyTable
    from ziplm_deploy.models import load_model
    from ziplm_deploy.models.assets import smollm2_dir
    from ziplm_deploy.models.tokenizer import load_tokenizer
    from ziplm_deploy.prune.data import calibration_windows
    from ziplm_deploy.prune.evaluate import perplexity
    from ziplm_deploy.prune.family import PruneConfig, _database
    from ziplm_deploy.prune.search import search
    from ziplm_deploy.prune.sensitivity import measure_probes, sensitivity_costs
    from ziplm_deploy.prune.stitch import stitch

    torch.manual_seed(0)
    model_dir = smollm2_dir()
    tokenizer = load_tokenizer(model_dir)
    table = LatencyTable.load(TABLE)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    config = PruneConfig(method="ziplm", targets=tuple(args.targets), windows=args.windows)
    windows = calibration_windows(tokenizer, "wikipedia", config.seq_len, config.windows, config.seed)
    evalw = heldout_windows(tokenizer, args.eval_seq, args.eval_windows)
    dense = load_model(model_dir).eval()
    t0 = time.perf_counter()
    db, hessians = _database(dense, windows, config, model_dir, work, print, True)
    db_s = time.perf_counter() - t0
    results = {"model": "SmolLM2-135M", "calibration_windows": args.windows, "probe_windows": args.probe_windows,
               "eval": f"{args.eval_windows} x {args.eval_seq} tokens of lee_background.cor",
               "dense_perplexity": perplexity(dense, evalw, progress=False), "database_seconds": round(db_s, 1),
               "rows": []}
    print(f"dense perplexity {results['dense_perplexity']:.2f}")
    t0 = time.perf_counter()
    probes = measure_probes(dense, db, hessians, windows[: args.probe_windows])
    results["probe_seconds"] = round(time.perf_counter() - t0, 1)
    results["probes"] = {f"{layer}.{kind}": [(p.units, round(p.rel_loss, 5), p.damage) for p in ps]
                         for (layer, kind), ps in probes.items()}
    costs = sensitivity_costs(db, probes)
    for name, kwargs in (("obs-loss", {}), ("sensitivity", {"costs": costs})):
        for r in search(db, table, args.targets, **kwargs):
            model = stitch(copy.deepcopy(dense), db, hessians, r.levels)
            ppl = perplexity(model, evalw, progress=False)
            ffn = [lay.ffn for lay in r.shape.layers]
            row = {"search": name, "target": r.target, "predicted_speedup": round(r.predicted_speedup, 3),
                   "perplexity": round(ppl, 2), "ratio_to_dense": round(ppl / results["dense_perplexity"], 2),
                   "heads": [lay.heads for lay in r.shape.layers], "ffn": ffn}
            results["rows"].append(row)
            print(f"{name:12s} {r.target:g}x ppl {ppl:.2f} ({row['ratio_to_dense']}x dense) ffn {ffn}")
    out = ROOT / "tools" / "results"
    (out / f"oneshot_smollm2{args.tag}.json").write_text(json.dumps(results, indent=1) + "\n")
    lines = [f"SmolLM2-135M one-shot ZipLM, {args.windows} calibration windows x 128, sensitivity probes on "
             f"{args.probe_windows} windows ({results['probe_seconds']} s); held-out {results['eval']}; "
             f"dense perplexity {results['dense_perplexity']:.2f}", "",
             "| search cost | target | predicted | perplexity | x dense |", "|---|---|---|---|---|"]
    lines += [f"| {r['search']} | {r['target']:g}x | {r['predicted_speedup']:.2f}x | {r['perplexity']:.2f} | "
              f"{r['ratio_to_dense']:.2f} |" for r in results["rows"]]
    (out / f"oneshot_smollm2{args.tag}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
