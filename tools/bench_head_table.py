"""Benchmark: does a table with trimmed-head entries (``profile --vocab-step``) predict trim-vocab models?

SmolLM2-135M or Gemma-3-270m: a decode table at a 128-token past (1 thread, batch 1) profiled with
``--vocab-step`` (default about a twelfth of the vocabulary: 4096 for SmolLM2, 16384 for Gemma);
the untrimmed model and models trimmed (``trim-vocab``'s selection, Wikipedia token counts) to several
coverages, each exported as an ONNX Runtime GenAI folder (``export --genai``: token-exact against PyTorch);
one decode step of each ``model.onnx`` (random 128-token KV) timed in ONNX Runtime CPU, all interleaved (p25).
Compared: the table's predicted decode step (the shape's ``vocab``) with the measured one.

    python tools/bench_head_table.py [--model smollm2|gemma3] [--coverages 0.99 0.9999] [--rounds 300] [--work DIR]

Writes tools/results/head_table_{model}.{json,md}. ``--work`` may be ``bench_vocab.py``'s: its GenAI folders are reused.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=("smollm2", "gemma3"), default="smollm2")
    p.add_argument("--coverages", type=float, nargs="+", default=[0.99, 0.9999])
    p.add_argument("--rounds", type=int, default=300, help="decode-step timing rounds")
    p.add_argument("--vocab-step", type=int, help="default: 4096 (SmolLM2), 16384 (Gemma)")
    p.add_argument("--work", help="keep the table, model directories and GenAI folders here")
    args = p.parse_args()

    import numpy as np
    import torch

    from tools.bench_vocab import MODELS, heldout_windows, ort_calls
    from ziplm_deploy.core.arch import arch_from_dir, read_model_config
    from ziplm_deploy.core.shape import ModelShape
    from ziplm_deploy.core.table import LatencyTable
    from ziplm_deploy.export.genai import export_genai
    from ziplm_deploy.models import load_model, save_model
    from ziplm_deploy.models import assets
    from ziplm_deploy.models.assets import wikipedia_text
    from ziplm_deploy.models.tokenizer import load_tokenizer
    from ziplm_deploy.models.vocab import count_tokens, select_tokens, special_ids, trim_model
    from ziplm_deploy.profiling.profiler import ProfileOptions, profile
    from ziplm_deploy.runtime.timing import Protocol, round_robin, stats_of

    torch.set_num_threads(2)
    label, dir_fn = MODELS[args.model]
    args.vocab_step = args.vocab_step or {"smollm2": 4096, "gemma3": 16384}[args.model]
    dense_dir = getattr(assets, dir_fn)()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_head_table."))
    work.mkdir(parents=True, exist_ok=True)
    arch = arch_from_dir(dense_dir)
    table_path = work / f"decode-kv128-vocab{args.vocab_step}.json"
    if table_path.is_file():
        table = LatencyTable.load(table_path)
    else:
        t0 = time.perf_counter()
        table = profile(arch, ProfileOptions(decode_kv_len=128, threads=1, vocab_step=args.vocab_step))
        table.save(table_path)
        print(f"profiled in {time.perf_counter() - t0:.0f}s", flush=True)
    tokenizer = load_tokenizer(dense_dir)
    reference = load_model(dense_dir)
    counts = count_tokens(tokenizer, wikipedia_text(), arch.vocab)
    generation = json.loads((dense_dir / "generation_config.json").read_text())
    specials = special_ids(tokenizer, arch.vocab, read_model_config(dense_dir), generation)
    folders, kept = {"untrimmed": work / "untrimmed-genai"}, {"untrimmed": None}
    if not (folders["untrimmed"] / "ziplm_genai.json").is_file():
        export_genai(reference, folders["untrimmed"], tokenizer_dir=dense_dir, source=dense_dir, overwrite=True)
    for c in args.coverages:
        name = f"coverage-{c:g}"
        sel = select_tokens(counts, specials, coverage=c)
        kept[name], folders[name] = len(sel.kept), work / f"{name}-genai"
        manifest = folders[name] / "ziplm_genai.json"
        if manifest.is_file():  # reused (e.g. bench_vocab's, counted on other text): its own head
            kept[name] = json.loads(manifest.read_text())["shape"]["vocab"]
        else:
            model = trim_model(copy.deepcopy(reference), sel.kept)
            save_model(model, work / name, tokenizer=tokenizer, overwrite=True)
            export_genai(model, folders[name], tokenizer_dir=dense_dir, source=work / name, overwrite=True)
            del model
    rng = np.random.default_rng(0)
    prompt = heldout_windows(tokenizer, 128, 1)[0].tolist()
    calls = {name: ort_calls(folder, prompt, rng)[1] for name, folder in folders.items()}
    samples = round_robin(calls, Protocol(warmup=5, rounds=args.rounds))
    measured = {name: stats_of(s).p25 for name, s in samples.items()}
    dense_shape = table.dense_shape()
    rows = []
    for name in folders:
        predicted = table.predict(ModelShape(dense_shape.layers, vocab=kept[name]))
        rows.append({"model": name, "kept": kept[name] or arch.vocab, "predicted_ms": round(predicted, 3),
                     "measured_ms": round(measured[name], 3),
                     "error": round(predicted / measured[name] - 1, 4),
                     "head_ms": round(table.calibration.alpha * table.head_ms(kept[name] or arch.vocab), 3)})
    base = rows[0]
    for row in rows:
        row["predicted_speedup"] = round(base["predicted_ms"] / row["predicted_ms"], 3)
        row["measured_speedup"] = round(base["measured_ms"] / row["measured_ms"], 3)
    result = {"model": label, "table": {"mode": "decode", "kv_len": 128, "threads": 1,
                                                  "vocab_step": args.vocab_step,
                                                  "head_rows": [e.rows for e in table.head]},
              "rounds": args.rounds, "rows": rows}
    out = ROOT / "tools" / "results"
    (out / f"head_table_{args.model}.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"{label} decode step at a 128-token past, ORT CPU 1 thread; table profiled with "
             f"--vocab-step {args.vocab_step}; GenAI folders' model.onnx timed interleaved ({args.rounds} rounds, p25)",
             "", "| model | output tokens | predicted | measured | error | LM head (predicted) | speedup predicted / measured |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['kept']:,} | {r['predicted_ms']:.2f} ms | {r['measured_ms']:.2f} ms | "
              f"{r['error']:+.1%} | {r['head_ms']:.2f} ms | {r['predicted_speedup']:.2f}x / {r['measured_speedup']:.2f}x |"
              for r in rows]
    (out / f"head_table_{args.model}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
