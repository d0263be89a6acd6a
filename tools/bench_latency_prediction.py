"""Benchmark: how well does a latency table predict whole pruned models on this machine?

For a BERT-base-sized model (prefill) and a GPT-2-sized model (prefill and decode), profile a table
(all heads, FFN step 32), then time >= 5 random non-uniform shapes end to end beside the dense model and
compare with the table's prediction. Batch 1, seq 128 (decode: one token, KV cache 128), 1 thread,
ONNX Runtime CPU. The models are built from the profiler's block graphs (torch-free).

    python tools/bench_latency_prediction.py [--shapes 6] [--out tools/results/latency_prediction.json]
    python tools/bench_latency_prediction.py --cases smollm2-prefill --rank-step 32 --real \
        --out tools/results/latency_prediction_flop.json     # FLOP low-rank shapes, real exports

Goal on the 2-core CI machine: median |speedup error| <= 3%, max <= 6%.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ziplm_deploy.core.arch import arch_from_config  # noqa: E402
from ziplm_deploy.core.jsonio import atomic_write_json  # noqa: E402
from ziplm_deploy.profiling.profiler import ProfileOptions, check, profile, random_shapes  # noqa: E402
from ziplm_deploy.runtime.timing import Protocol  # noqa: E402

BERT_BASE = dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12,
                 intermediate_size=3072, vocab_size=30522, hidden_act="gelu")
GPT2_SMALL = dict(n_layer=12, n_embd=768, n_head=12, vocab_size=50257,
                  activation_function="gelu_new")
SMOLLM2 = dict(num_hidden_layers=30, hidden_size=576, num_attention_heads=9, num_key_value_heads=3,
               intermediate_size=1536, vocab_size=49152, hidden_act="silu", rms_norm_eps=1e-5,
               rope_theta=100000.0, tie_word_embeddings=True, max_position_embeddings=2048)
CASES = {
    "bert-base-prefill": ({"model_type": "bert", **BERT_BASE}, 0),
    "smollm2-prefill": ({"model_type": "llama", **SMOLLM2}, 0),
    "gpt2-prefill": ({"model_type": "gpt2", **GPT2_SMALL}, 0),
    "gpt2-decode": ({"model_type": "gpt2", **GPT2_SMALL}, 128),
}


def real_check(case: str, table, shapes, opts, check_rounds: int, seed: int) -> dict:
    """Time real ``torch.onnx.export`` exports shrunk to ``shapes`` (needs torch/transformers/onnxscript):
    BERT ``BertModel``; GPT-2 ``GPT2LMHeadModel`` (decode: the exporter's with-past graph)."""
    import copy
    import tempfile

    import numpy as np
    import torch
    import transformers

    from ziplm_deploy.export.onnx import export_onnx
    from ziplm_deploy.models.base import apply_shape
    from ziplm_deploy.runtime.measure import time_models

    config, kv_len = CASES[case]
    torch.manual_seed(seed)
    kwargs = {k: v for k, v in config.items() if k != "model_type"}
    if config["model_type"] == "bert":
        dense = transformers.BertModel(transformers.BertConfig(**kwargs), add_pooling_layer=False).eval()
    elif config["model_type"] == "llama":
        dense = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kwargs)).eval()
    else:
        dense = transformers.GPT2LMHeadModel(transformers.GPT2Config(**kwargs)).eval()
    decode = kv_len > 0

    def export(model, path: str) -> str:
        result = export_onnx(model, path, with_past=decode, validate=False)
        return str([p for p in result.paths if "with_past" in p.name][0] if decode else result.paths[0])

    with tempfile.TemporaryDirectory() as tmp:
        paths = {"dense": export(dense, f"{tmp}/dense.onnx")}
        for i, shape in enumerate(shapes):
            # FLOP ranks in the shape: apply_shape factorises those FFN Linears (truncated SVD)
            paths[f"shape:{i}"] = export(apply_shape(copy.deepcopy(dense), shape), f"{tmp}/shape{i}.onnx")
        stats = time_models(opts.backend(), paths, opts.sizes.dims, table.arch.vocab,
                            Protocol(warmup=3, rounds=check_rounds, recheck=10, seed=seed))
    st = table.statistic
    rows = []
    for i, shape in enumerate(shapes):
        measured = stats[f"shape:{i}"].get(st)
        m_speedup = stats["dense"].get(st) / measured
        rows.append({"predicted_ms": round(table.predict(shape), 4), "measured_ms": round(measured, 4),
                     "latency_error": round(table.predict(shape) / measured - 1, 5),
                     "predicted_speedup": round(table.speedup(shape), 4), "measured_speedup": round(m_speedup, 4),
                     "speedup_error": round(table.speedup(shape) / m_speedup - 1, 5)})
    spd = np.abs([r["speedup_error"] for r in rows])
    lat = np.abs([r["latency_error"] for r in rows])
    return {"models": f"transformers {transformers.__version__} {type(dense).__name__}, apply_shape (+ apply_ranks) + "
                      "torch.onnx.export(dynamo=True)" + (" with past" if decode else ""),
            "dense": stats["dense"].to_json(), "dense_recheck": stats["dense:recheck"].to_json(),
            "summary": {"median_abs_speedup_error": float(np.median(spd)), "max_abs_speedup_error": float(spd.max()),
                        "median_abs_latency_error": float(np.median(lat)), "max_abs_latency_error": float(lat.max())},
            "shapes": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=[c for c in CASES if c != "smollm2-prefill"], choices=list(CASES))
    ap.add_argument("--rank-step", type=int, default=0,
                    help="> 0: FLOP low-rank entries in the tables, and half the layers of each shape factorised")
    ap.add_argument("--shapes", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--check-rounds", type=int, default=30)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--real", action="store_true",
                    help="also time real dynamo exports of each case (needs torch, transformers, onnxscript)")
    ap.add_argument("--out", default=str(ROOT / "tools" / "results" / "latency_prediction.json"))
    args = ap.parse_args()

    results = {}
    all_speedup_errors = []
    for name in args.cases:
        config, kv_len = CASES[name]
        arch = arch_from_config(config)
        opts = ProfileOptions(batch=1, seq=128, decode_kv_len=kv_len, threads=args.threads, ffn_step=32,
                              rank_step=args.rank_step, protocol=Protocol(warmup=5, rounds=args.rounds, seed=args.seed))
        t0 = time.perf_counter()
        table = profile(arch, opts, progress=True)
        t_profile = time.perf_counter() - t0
        shapes = random_shapes(arch, args.shapes, seed=args.seed, p_rank=0.5 if args.rank_step else 0.0)
        t0 = time.perf_counter()
        report = check(table, shapes, opts, progress=True,
                       protocol=Protocol(warmup=3, rounds=args.check_rounds, recheck=10, seed=args.seed))
        t_check = time.perf_counter() - t0
        summary = report.summary()
        all_speedup_errors += [abs(r.speedup_error) for r in report.results]
        results[name] = {
            "profile_seconds": round(t_profile, 1), "check_seconds": round(t_check, 1),
            "table_entries": len(table.attention) + len(table.ffn) + len(table.lowrank),
            "calibration": table.calibration.to_json(),
            "dense_ms": table.references["dense"].to_json(), "removed_ms": table.references["removed"].to_json(),
            "fingerprint": table.fingerprint.to_json(),
            **report.to_json(),
        }
        if args.real:
            real = real_check(name, table, shapes, opts, args.check_rounds, args.seed)
            results[name]["real_exports"] = real
            rs = real["summary"]
            print(f"{name} real exports: speedup error median {rs['median_abs_speedup_error']:.1%} max "
                  f"{rs['max_abs_speedup_error']:.1%}; latency error median {rs['median_abs_latency_error']:.1%}",
                  flush=True)
        print(f"{name}: profile {t_profile:.0f} s, check {t_check:.0f} s; speedup error median "
              f"{summary['median_abs_speedup_error']:.1%} max {summary['max_abs_speedup_error']:.1%}; latency error "
              f"median {summary['median_abs_latency_error']:.1%} max {summary['max_abs_latency_error']:.1%}; "
              f"drift {report.drift:+.1%}", flush=True)
    import numpy as np

    overall = {"median_abs_speedup_error": float(np.median(all_speedup_errors)),
               "max_abs_speedup_error": float(np.max(all_speedup_errors)),
               "goal": {"median": 0.03, "max": 0.06}}
    overall["met"] = overall["median_abs_speedup_error"] <= 0.03 and overall["max_abs_speedup_error"] <= 0.06
    atomic_write_json(args.out, {"format": "ziplm-deploy/bench-latency-prediction", "version": 1,
                                 "setup": {"batch": 1, "seq": 128, "decode_kv_len": 128, "threads": args.threads,
                                           "rank_step": args.rank_step, "p_rank": 0.5 if args.rank_step else 0.0,
                                           "shapes_per_case": args.shapes, "models": "onnx.helper block models"},
                                 "overall": overall, "cases": results})
    print(f"overall: median {overall['median_abs_speedup_error']:.1%}, max {overall['max_abs_speedup_error']:.1%} "
          f"-> {'met' if overall['met'] else 'NOT met'}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
