"""Benchmark: vocabulary and blocks together on Gemma-3-270m (or SmolLM2): ``trim-vocab`` first, then ``prune``
on the trimmed model with a decode table that has head entries, so the search spends the head's saving first.

Inputs come from ``bench_vocab.py --heldout wikipedia --work W`` (its trimmed model ``W/coverage-C`` and its
GenAI folders, token counts on all but the last 16 Wikipedia articles) and a decode table at a 128-token past
profiled with ``--vocab-step`` (``bench_head_table.py --work W`` writes ``W/decode-kv128-vocab16384.json``).
Calibration: 64 x 128 windows of the same 90 counted articles. Quality against the *untrimmed dense* model on
the 16 held-out articles (in-domain): top-1 agreement, KL, perplexity over kept tokens, greedy agreement.
Speed: every model's GenAI folder (token-exact against PyTorch before it is written), one decode step at a
128-token past in ONNX Runtime CPU (1 thread), all interleaved (p25), beside the table's prediction.

    python tools/bench_joint_vocab.py --work W [--model gemma3] [--coverage 0.999] [--targets 2 2.5]

Writes tools/results/joint_vocab_{model}.{json,md}.
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
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", required=True, help="bench_vocab.py --heldout wikipedia's work folder")
    p.add_argument("--model", choices=("smollm2", "gemma3"), default="gemma3")
    p.add_argument("--coverage", type=float, default=0.999)
    p.add_argument("--table", help="decode table with head entries (default: WORK/decode-kv128-vocab16384.json)")
    p.add_argument("--targets", type=float, nargs="+", default=[2.0, 2.5])
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--greedy-tokens", type=int, default=32)
    args = p.parse_args()

    import numpy as np
    import torch

    from tools.bench_vocab import MODELS, SEQ, WIKI_HELDOUT, ort_calls, one_thread
    from ziplm_deploy.core.shape import ModelShape
    from ziplm_deploy.core.table import LatencyTable
    from ziplm_deploy.export.genai import export_genai
    from ziplm_deploy.models import assets, load_model
    from ziplm_deploy.models.tokenizer import load_tokenizer
    from ziplm_deploy.models.vocab import prompts_from, vocab_quality
    from ziplm_deploy.prune.data import token_windows
    from ziplm_deploy.prune.family import PruneConfig, prune_family
    from ziplm_deploy.runtime.timing import Protocol, round_robin, stats_of

    torch.set_num_threads(2)
    work = Path(args.work)
    label, dir_fn = MODELS[args.model]
    dense_dir = getattr(assets, dir_fn)()
    trimmed_dir = work / f"coverage-{args.coverage:g}"
    table_path = Path(args.table or work / "decode-kv128-vocab16384.json")
    table = LatencyTable.load(table_path)
    tokenizer = load_tokenizer(dense_dir)
    articles = assets.wikipedia_text()
    calib = work / "calib-articles.jsonl"
    calib.write_text("".join(json.dumps({"text": t}) + "\n" for t in articles[:-WIKI_HELDOUT]))
    held = token_windows(tokenizer, articles[-WIKI_HELDOUT:], SEQ)[:16]
    prompts = prompts_from(held, 8, 16)

    out = work / "joint"
    t0 = time.perf_counter()
    report = prune_family(trimmed_dir, table, table_path, calib, PruneConfig(targets=tuple(args.targets)), out,
                          progress=False)
    prune_s = time.perf_counter() - t0
    reference = load_model(dense_dir)
    rows = []
    models = {"trimmed only": trimmed_dir, **{f"trimmed + ziplm {m.target:g}x": Path(m.path)
                                               for m in report.members if m.path}}
    folders = {"untrimmed dense": work / "untrimmed-genai", "trimmed only": work / f"coverage-{args.coverage:g}-genai"}
    for name, model_dir in models.items():
        model = load_model(model_dir)
        shape = ModelShape.from_model(model)
        q = vocab_quality(model, reference, held, prompts, args.greedy_tokens, eval_data="held-out Wikipedia")
        folder = folders.get(name) or work / f"{model_dir.name}-genai"
        if not (folder / "ziplm_genai.json").is_file():
            export_genai(model, folder, tokenizer_dir=dense_dir, source=model_dir, overwrite=True)
        folders[name] = folder
        rows.append({"model": name, "shape": shape.to_json(), "predicted_decode_ms": round(table.predict(shape), 3),
                     **{k: v for k, v in q.to_json().items() if k in (
                         "kept", "coverage", "top1_agreement", "kl", "perplexity_in_set",
                         "reference_perplexity_in_set", "greedy_prefix_agreement", "greedy_step_agreement",
                         "impossible_tokens", "tokens")}})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "shape"}), flush=True)
        del model
    for folder in folders.values():
        one_thread(folder)
    rng = np.random.default_rng(0)
    calls = {name: ort_calls(folder, held[0].tolist(), rng)[1] for name, folder in folders.items()}
    samples = round_robin(calls, Protocol(warmup=5, rounds=args.rounds))
    measured = {name: stats_of(s).p25 for name, s in samples.items()}
    base = measured["untrimmed dense"]
    dense_pred = table.predict(table.dense_shape())
    rows.insert(0, {"model": "untrimmed dense", "kept": table.arch.vocab, "predicted_decode_ms": round(dense_pred, 3)})
    for row in rows:
        row["measured_decode_ms"] = round(measured[row["model"]], 3)
        row["measured_speedup"] = round(base / measured[row["model"]], 3)
        row["predicted_speedup"] = round(dense_pred / row["predicted_decode_ms"], 3)
    result = {"model": label, "coverage": args.coverage, "targets": args.targets, "table": str(table_path),
              "prune_s": round(prune_s, 1), "rounds": args.rounds, "rows": rows,
              "settings": {"calibration": f"64 x {SEQ} windows of the first {len(articles) - WIKI_HELDOUT} Wikipedia "
                                          "articles (the counted ones)",
                           "heldout": f"16 x {SEQ} windows of the last {WIKI_HELDOUT} articles; greedy 8 prompts x "
                                      f"{args.greedy_tokens} tokens",
                           "timing": "GenAI model.onnx, one decode step at a 128-token past, ORT CPU 1 thread, p25"}}
    dest = ROOT / "tools" / "results" / f"joint_vocab_{args.model}"
    dest.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"{label}: trim-vocab (coverage {args.coverage:g} of the counted Wikipedia tokens), then prune on the trimmed "
             f"model with a decode table (kv 128, head entries); {result['settings']['calibration']}; quality vs the "
             f"untrimmed dense model on {result['settings']['heldout']}; {result['settings']['timing']} "
             f"({args.rounds} interleaved rounds).", "",
             "| model | output tokens | decode predicted | decode measured | top-1 | KL | ppl over kept tokens (dense) "
             "| greedy prefix / step |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        quality = ("| – | – | – | – |" if "top1_agreement" not in r else
                   f"| {r['top1_agreement']:.2%} | {r['kl']:.3f} | {r['perplexity_in_set']:.2f} "
                   f"({r['reference_perplexity_in_set']:.2f}) | {r['greedy_prefix_agreement']:.1%} / "
                   f"{r['greedy_step_agreement']:.1%} |")
        lines.append(f"| {r['model']} | {r['kept']:,} | {r['predicted_decode_ms']:.2f} ms ({r['predicted_speedup']:.2f}x) "
                     f"| {r['measured_decode_ms']:.2f} ms ({r['measured_speedup']:.2f}x) " + quality)
    dest.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
