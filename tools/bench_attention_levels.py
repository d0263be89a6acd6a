"""Benchmark: what removing query heads *within* KV groups buys on SmolLM2-135M (issue #12, item 3).

SmolLM2 has 9 query heads in 3 KV groups per layer. Whole-group pruning offers 4 attention levels per
layer (0, 3, 6, 9 heads); heads-in-groups offers every (KV groups, heads per group) pair: 10 levels.
Same table (profiles/, fp32 ORT CPU), same calibration (gensim's Wikipedia, 64 x 128 tokens), same
search (the product's default: measured sensitivity costs, and the OBS-loss cost for reference); the
only change is the attention levels the database offers. Quality: held-out perplexity on gensim's
lee_background news text (never used for calibration), in PyTorch fp32.

    python tools/bench_attention_levels.py [--targets 1.5 2] [--work DIR]

Writes tools/results/attention_levels_smollm2.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
TABLE = ROOT / "profiles" / "smollm2-135m_ort-cpu_b1_s128_t1.json"


@dataclass
class Setup:
    """SmolLM2-135M with what a one-shot comparison needs: tokenizer, the reference fp32 table, held-out windows
    and their dense perplexity."""

    model_dir: Path
    tokenizer: Any
    table: Any
    dense: Any
    evalw: Any
    dense_perplexity: float
    work: Path


def smollm2_setup(work: str | Path, eval_windows: int, eval_seq: int) -> Setup:
    import torch

    from tools.bench_prune import heldout_windows
    from ziplm_deploy.core.table import LatencyTable
    from ziplm_deploy.models import load_model
    from ziplm_deploy.models.assets import smollm2_dir
    from ziplm_deploy.models.tokenizer import load_tokenizer
    from ziplm_deploy.prune.evaluate import perplexity

    torch.manual_seed(0)
    model_dir = smollm2_dir()
    tokenizer = load_tokenizer(model_dir)
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    evalw = heldout_windows(tokenizer, eval_seq, eval_windows)
    dense = load_model(model_dir).eval()
    return Setup(model_dir, tokenizer, LatencyTable.load(TABLE), dense, evalw,
                 perplexity(dense, evalw, progress=False), work)


def ziplm_database(setup: Setup, config) -> tuple[Any, Any, Any, Any]:
    """(calibration windows, database, Hessians, sensitivity costs) of ``config``, cached in the work folder."""
    from ziplm_deploy.prune.data import calibration_windows
    from ziplm_deploy.prune.family import _database, _sensitivity_costs

    windows = calibration_windows(setup.tokenizer, "wikipedia", config.seq_len, config.windows, config.seed)
    db, hessians = _database(setup.dense, windows, config, setup.model_dir, setup.work, print, True)
    costs = _sensitivity_costs(setup.dense, db, hessians, windows, config, setup.work, print, True)
    return windows, db, hessians, costs


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--targets", type=float, nargs="+", default=[1.5, 2.0])
    p.add_argument("--windows", type=int, default=64)
    p.add_argument("--eval-windows", type=int, default=16)
    p.add_argument("--eval-seq", type=int, default=256)
    p.add_argument("--work", default=str(ROOT / "runs" / "bench_attention_levels"))
    args = p.parse_args()

    from ziplm_deploy.prune.evaluate import perplexity
    from ziplm_deploy.prune.family import PruneConfig
    from ziplm_deploy.prune.search import search
    from ziplm_deploy.prune.stitch import stitch

    setup = smollm2_setup(args.work, args.eval_windows, args.eval_seq)
    dense, table, evalw = setup.dense, setup.table, setup.evalw
    results = {"model": "SmolLM2-135M", "table": TABLE.name, "calibration_windows": args.windows,
               "eval": f"{args.eval_windows} x {args.eval_seq} tokens of lee_background.cor",
               "dense_perplexity": setup.dense_perplexity, "rows": [], "seconds": {}}
    print(f"dense perplexity {results['dense_perplexity']:.2f}")
    for attention in ("whole-groups", "heads-in-groups"):
        config = PruneConfig(method="ziplm", targets=tuple(args.targets), windows=args.windows,
                             attention_levels=attention)
        t0 = time.perf_counter()
        _, db, hessians, costs = ziplm_database(setup, config)
        results["seconds"][attention] = round(time.perf_counter() - t0, 1)
        for cost_name, kwargs in (("sensitivity", {"costs": costs}), ("obs-loss", {})):
            for r in search(db, table, args.targets, **kwargs):
                model = stitch(copy.deepcopy(dense), db, hessians, r.levels)
                ppl = perplexity(model, evalw, progress=False)
                layers = r.shape.layers
                row = {"attention": attention, "search": cost_name, "target": r.target,
                       "predicted_speedup": round(r.predicted_speedup, 3), "perplexity": round(ppl, 2),
                       "ratio_to_dense": round(ppl / results["dense_perplexity"], 2),
                       "heads": [s.heads for s in layers], "kv_heads": [s.kv for s in layers],
                       "ffn": [s.ffn for s in layers],
                       "within_group_layers": sum(1 for s in layers if s.kv and s.heads != 3 * s.kv),
                       "attention_heads_kept": sum(s.heads for s in layers), "ffn_kept": sum(s.ffn for s in layers)}
                results["rows"].append(row)
                print(f"{attention:16s} {cost_name:11s} {r.target:g}x ppl {ppl:.2f} ({row['ratio_to_dense']}x dense) "
                      f"heads {row['heads']} kv {row['kv_heads']}")
    out = ROOT / "tools" / "results"
    (out / "attention_levels_smollm2.json").write_text(json.dumps(results, indent=1) + "\n")
    lines = [f"SmolLM2-135M one-shot ZipLM, {args.windows} x 128 Wikipedia calibration tokens, table {TABLE.name}; "
             f"held-out {results['eval']}; dense perplexity {results['dense_perplexity']:.2f}", "",
             "| attention levels | search cost | target | predicted | perplexity | x dense | heads kept | "
             "layers with heads removed within groups | FFN neurons kept |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['attention']} | {r['search']} | {r['target']:g}x | {r['predicted_speedup']:.2f}x | "
              f"{r['perplexity']:.2f} | {r['ratio_to_dense']:.2f} | {r['attention_heads_kept']} / 270 | "
              f"{r['within_group_layers']} | {r['ffn_kept']} / 46080 |" for r in results["rows"]]
    (out / "attention_levels_smollm2.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
