"""Benchmark: does an end-to-end scored search on top of the measured-sensitivity DP help one-shot ZipLM?

SmolLM2-135M, the shipped fp32 table, 64 x 128 calibration windows of gensim's Wikipedia (the product's
defaults: OBS database + sensitivity probes on 2 windows, cached under --work). For each target, the plain
DP on sensitivity costs, then per-layer cost coefficients searched with a sampler, each candidate scored by
the calibration next-token loss on --score-windows calibration windows; the best one's held-out perplexity
(gensim's lee_background news, never calibrated on) is what counts.

Samplers: ``uniform`` (SPDY as in prune/spdy.py: half fresh U(0,1) coefficients, half re-sampling 10% of
the best's), ``local`` ((1+1) evolution around the best: every coefficient times exp(sigma * N(0, 1))).

    python tools/bench_spdy.py [--samples 24] [--samplers uniform local] [--targets 1.5 2]

Writes tools/results/spdy_smollm2.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
TABLE = ROOT / "profiles" / "smollm2-135m_ort-cpu_b1_s128_t1.json"


def sample_coefficients(sampler: str, i: int, samples: int, best: dict[int, float], rng: random.Random,
                        sigma: float) -> dict[int, float]:
    layers = sorted(best)
    if sampler == "uniform":
        if i < samples // 2:
            return {layer: rng.random() for layer in layers}
        coeffs = dict(best)
        for layer in rng.sample(layers, k=max(1, len(layers) // 10)):
            coeffs[layer] = rng.random()
        return coeffs
    if sampler == "local":
        return {layer: c * math.exp(sigma * rng.gauss(0.0, 1.0)) for layer, c in best.items()}
    raise SystemExit(f"unknown sampler {sampler!r}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--targets", type=float, nargs="+", default=[1.5, 2.0])
    p.add_argument("--samples", type=int, default=24)
    p.add_argument("--samplers", nargs="+", default=["uniform", "local"])
    p.add_argument("--sigma", type=float, default=0.5)
    p.add_argument("--score-windows", type=int, default=16)
    p.add_argument("--eval-windows", type=int, default=16)
    p.add_argument("--eval-seq", type=int, default=256)
    p.add_argument("--work", default=str(ROOT / "runs" / "bench_oneshot"))
    p.add_argument("--tag", default="")
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
    from ziplm_deploy.prune.search import search
    from ziplm_deploy.prune.spdy import calibration_score
    from ziplm_deploy.prune.stitch import stitch

    torch.manual_seed(0)
    model_dir = smollm2_dir()
    tokenizer = load_tokenizer(model_dir)
    table = LatencyTable.load(TABLE)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    config = PruneConfig(method="ziplm", targets=tuple(args.targets))
    windows = calibration_windows(tokenizer, "wikipedia", config.seq_len, config.windows, config.seed)
    evalw = heldout_windows(tokenizer, args.eval_seq, args.eval_windows)
    dense = load_model(model_dir).eval()
    db, hessians = _database(dense, windows, config, model_dir, work, print, False)
    costs = _sensitivity_costs(dense, db, hessians, windows, config, work, print, False)
    score_windows = windows[: args.score_windows]
    layers = sorted({m.layer for m in db.modules})
    dense_ppl = perplexity(dense, evalw, progress=False)
    results = {"model": "SmolLM2-135M", "calibration_windows": config.windows, "probe_windows": config.probe_windows,
               "score_windows": args.score_windows, "samples": args.samples, "sigma": args.sigma,
               "eval": f"{args.eval_windows} x {args.eval_seq} tokens of lee_background.cor",
               "dense_perplexity": round(dense_ppl, 3), "rows": []}
    print(f"dense held-out perplexity {dense_ppl:.2f}", flush=True)

    def measure(result):
        model = stitch(copy.deepcopy(dense), db, hessians, result.levels)
        return calibration_score(model, score_windows), perplexity(model, evalw, progress=False)

    for target in args.targets:
        (plain,) = search(db, table, [target], costs=costs)
        plain_score, plain_ppl = measure(plain)
        results["rows"].append({"target": target, "sampler": "plain DP", "samples": 0,
                                "predicted_speedup": round(plain.predicted_speedup, 3),
                                "calibration_score": round(plain_score, 4), "perplexity": round(plain_ppl, 2),
                                "ratio_to_dense": round(plain_ppl / dense_ppl, 2), "seconds": 0.0, "curve": []})
        print(f"{target:g}x plain: score {plain_score:.4f} held-out {plain_ppl:.2f}", flush=True)
        for sampler in args.samplers:
            rng = random.Random(0)
            t0 = time.perf_counter()
            best, best_score, best_ppl = plain, plain_score, plain_ppl
            best_coeffs = {layer: 1.0 for layer in layers}
            curve = []
            for i in range(args.samples):
                coeffs = sample_coefficients(sampler, i, args.samples, best_coeffs, rng, args.sigma)
                (cand,) = search(db, table, [target], coefficients=coeffs, costs=costs)
                if not cand.reachable:
                    continue
                score, ppl = measure(cand)
                curve.append((i, round(score, 4), round(ppl, 2)))
                if score < best_score:
                    best, best_score, best_ppl, best_coeffs = cand, score, ppl, coeffs
                print(f"  {sampler} {i}: score {score:.4f} held-out {ppl:.2f} (best {best_score:.4f} / {best_ppl:.2f})",
                      flush=True)
            results["rows"].append({"target": target, "sampler": sampler, "samples": args.samples,
                                    "predicted_speedup": round(best.predicted_speedup, 3),
                                    "calibration_score": round(best_score, 4), "perplexity": round(best_ppl, 2),
                                    "ratio_to_dense": round(best_ppl / dense_ppl, 2),
                                    "seconds": round(time.perf_counter() - t0, 1), "curve": curve})
            out = ROOT / "tools" / "results"
            (out / f"spdy_smollm2{args.tag}.json").write_text(json.dumps(results, indent=1) + "\n")
    lines = [f"SmolLM2-135M one-shot ZipLM on sensitivity costs, then a scored search over per-layer cost "
             f"coefficients ({args.samples} samples, scored by calibration loss on {args.score_windows} x 128 "
             f"calibration windows); held-out {results['eval']}, dense perplexity {dense_ppl:.2f}", "",
             "| target | search | predicted | calibration loss | held-out ppl | x dense | seconds |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['target']:g}x | {r['sampler']} | {r['predicted_speedup']:.2f}x | {r['calibration_score']:.4f} | "
              f"{r['perplexity']:.2f} | {r['ratio_to_dense']:.2f} | {r['seconds']} |" for r in results["rows"]]
    (ROOT / "tools" / "results" / f"spdy_smollm2{args.tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
