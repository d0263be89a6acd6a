"""Quality recovered by training at equal speedup: one-shot vs after a short training run.

SmolLM2-135M pruned to the target by ZipLM (then distilled from the dense model: logit KD + hidden
states), by LayerChop (then continued LM pretraining), and by FLOP (FFN Linears factorised with L0 rank
gates, trained with the LM loss; its one-shot counterpart is the truncated SVD at the same kept ranks),
all predicted with the stored ORT-CPU table; every trained model is exported and its speedup measured in
ONNX Runtime beside the dense model. Perplexity on held-out text (gensim's ``lee_background.cor``, never
trained on) before and after; training on gensim's Wikipedia articles. CPU-sized budget by default.

    python3 tools/bench_distill.py --steps 40 --out /tmp/bench-distill
    python3 tools/bench_distill.py --reuse /tmp/bench-distill/run   # pruned models from an earlier prune run

Writes ``tools/results/distill_<tag>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "profiles" / "smollm2-135m_ort-cpu_b1_s128_t1.json"


def _cpu_name() -> str:
    from ziplm_deploy.runtime.fingerprint import cpu_name

    return cpu_name()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="/tmp/bench-distill", help="work folder (pruned models, training runs)")
    p.add_argument("--reuse", help="prune run folder that already holds ziplm-2x / layerchop-2x")
    p.add_argument("--target", type=float, default=2.0)
    p.add_argument("--methods", nargs="+", default=["ziplm", "layerchop", "flop"], choices=("ziplm", "layerchop", "flop"))
    p.add_argument("--flop-sparsity", type=float, default=None,
                   help="FLOP target sparsity (default: the one whose uniform-rank shape the table predicts at --target)")
    p.add_argument("--flop-steps", type=int, default=None, help="FLOP training steps (default: --steps)")
    p.add_argument("--flop-gate-lr", type=float, default=2.0, help="short budgets need fast gates (CLI default 0.1)")
    p.add_argument("--flop-lambda-lr", type=float, default=1.0, help="(CLI default 0.01)")
    p.add_argument("--flop-init-drop", type=float, default=0.05, help="(CLI default 0.5, as in FLOP)")
    p.add_argument("--rounds", type=int, default=20, help="ORT timing rounds for the measured speedups")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--eval-windows", type=int, default=24)
    p.add_argument("--eval-every", type=int, default=0)
    p.add_argument("--calib-windows", type=int, default=32)
    p.add_argument("--tag", default="cpu")
    p.add_argument("--mixed-precision", default="no")
    args = p.parse_args(argv)

    import torch

    from ziplm_deploy.cli import main as cli
    from ziplm_deploy.distill.losses import LossWeights
    from ziplm_deploy.distill.trainer import TrainConfig, train
    from ziplm_deploy.models import load_model
    from ziplm_deploy.models.assets import smollm2_dir, wikipedia_text
    from ziplm_deploy.models.tokenizer import load_tokenizer
    from ziplm_deploy.prune.data import read_texts, token_windows
    from ziplm_deploy.prune.evaluate import perplexity

    from gensim.test.utils import datapath

    out = Path(args.out)
    dense_dir = smollm2_dir()
    tokenizer = load_tokenizer(dense_dir)
    run = Path(args.reuse) if args.reuse else out / "run"
    prune_seconds = {}
    for method in args.methods:
        member = run / f"{method}-{args.target:g}x"
        if method == "flop" or (member / "manifest.json").is_file():
            continue
        t0 = time.perf_counter()
        code = cli(["prune", "--model", str(dense_dir), "--table", str(TABLE), "--calib", "wikipedia",
                    "--targets", f"{args.target:g}", "--windows", str(args.calib_windows), "--method", method,
                    "--out", str(run), "--no-progress", "--no-eval"])
        if code != 0:
            print(f"prune {method} failed ({code})", file=sys.stderr)
            return code
        prune_seconds[method] = round(time.perf_counter() - t0, 1)

    held = token_windows(tokenizer, read_texts(datapath("lee_background.cor")), args.seq_len,
                         count=args.eval_windows, seed=0)
    train_windows = token_windows(tokenizer, wikipedia_text(), args.seq_len)
    print(f"{len(train_windows)} training windows (Wikipedia), {len(held)} held-out windows (lee_background)")
    dense = load_model(dense_dir)
    t0 = time.perf_counter()
    dense_ppl = perplexity(dense, held, progress=False)
    eval_seconds = time.perf_counter() - t0
    print(f"dense held-out perplexity {dense_ppl:.3f} ({eval_seconds:.1f}s)")

    from ziplm_deploy.core.table import LatencyTable

    table = LatencyTable.load(TABLE)
    rows = []
    for method in args.methods:
        if method == "flop":
            rows.append(flop_row(args, table, dense, train_windows, held, out))
            continue
        member = run / f"{method}-{args.target:g}x"
        manifest = json.loads((member / "manifest.json").read_text())
        student = load_model(member)
        if method == "ziplm":
            weights, teacher, kind = LossWeights(kd=1.0, hidden=1.0, task=0.0, temperature=2.0), dense, "distill (KD + hidden)"
        else:
            weights, teacher, kind = LossWeights(kd=0.0, hidden=0.0, task=1.0), None, "continued pretraining (LM)"
        config = TrainConfig(steps=args.steps, lr=args.lr, warmup=max(1, args.steps // 10), batch_size=args.batch_size,
                             eval_every=args.eval_every, seed=0, mixed_precision=args.mixed_precision)
        res = train(student, train_windows, out / "train" / f"{args.tag}-{method}", config, weights, teacher=teacher,
                    eval_windows=held, resume=False, progress=sys.stderr.isatty())
        row = {
            "method": method, "training": kind, "path": str(member),
            "predicted_speedup": manifest["metrics"]["predicted_speedup"],
            "params_m": round(sum(p.numel() for p in student.parameters()) / 1e6, 2),
            "oneshot_ppl": res.evals[0]["ppl"], "trained_ppl": res.evals[-1]["ppl"], "evals": res.evals,
            "steps": res.steps, "tokens": res.tokens, "train_seconds": res.seconds,
            "tokens_per_s": _median_rate(res.history),  # training steps only (the evaluations excluded)
            "loss_first": res.history[0]["loss"], "loss_last": res.history[-1]["loss"],
            "loss_curve": [{k: h[k] for k in h if k != "lr"} for h in res.history],
        }
        print(f"{method} {row['predicted_speedup']:.2f}x: held-out ppl one-shot {row['oneshot_ppl']:.2f} -> "
              f"{row['trained_ppl']:.2f} after {res.steps} steps ({res.seconds:.0f}s, {row['tokens_per_s']} tok/s)")
        row["onnx"] = str(export_student(student, out / "onnx" / f"{args.tag}-{method}.onnx"))
        rows.append(row)
        del student
    measure_speedups(rows, dense, out / "onnx" / "dense.onnx", table, args.rounds)

    result = {
        "format": "ziplm-deploy/bench-distill", "version": 1, "model": "SmolLM2-135M-Instruct",
        "table": TABLE.name, "target": args.target, "dense_ppl": round(dense_ppl, 4),
        "held_out": "gensim lee_background.cor", "train_data": "gensim Wikipedia test dump",
        "seq_len": args.seq_len, "batch_size": args.batch_size, "lr": args.lr, "steps": args.steps,
        "machine": {"cpu": _cpu_name(), "cores": __import__("os").cpu_count(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__, "device": "cuda" if torch.cuda.is_available() else "cpu",
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "prune_seconds": prune_seconds, "rows": rows, "timing_rounds": args.rounds,
        "load_average": " ".join(f"{x:.1f}" for x in __import__("os").getloadavg()),
    }
    results = ROOT / "tools" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / f"distill_{args.tag}.json").write_text(json.dumps(result, indent=2) + "\n")
    (results / f"distill_{args.tag}.md").write_text(markdown(result))
    print(f"wrote {results}/distill_{args.tag}.json and .md")
    return 0


def uniform_rank_sparsity(table, target: float) -> float:
    """The FLOP sparsity whose uniform-rank shape (every FFN Linear at (1-s) of its parameter-neutral rank)
    the table predicts at ``target`` speedup (bisection); the largest tried if the target is out of reach."""
    from ziplm_deploy.core.shape import LayerShape, ModelShape, ffn_linear_dims, ffn_roles

    arch = table.arch

    def shape(sparsity: float) -> ModelShape:
        ranks = []
        for role in ffn_roles(arch):
            n_in, n_out = ffn_linear_dims(arch, role, arch.ffn)
            ranks.append((role, max(1, round((1 - sparsity) * n_in * n_out / (n_in + n_out)))))
        return ModelShape(tuple(LayerShape(s.heads, s.ffn, s.kv_heads, ranks=tuple(sorted(ranks)))
                                for s in table.dense_shape().layers))

    lo, hi = 0.0, 0.95
    if table.speedup(shape(hi)) < target:
        return hi
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if table.speedup(shape(mid)) < target else (lo, mid)
    return round(hi, 3)


def flop_row(args, table, dense, train_windows, held, out: Path) -> dict:
    """FLOP from the dense model: train towards the sparsity, finalise, and compare with the truncated
    SVD at the same kept ranks (the one-shot counterpart)."""
    import copy
    from dataclasses import asdict

    import torch

    from ziplm_deploy.core.shape import ModelShape
    from ziplm_deploy.distill.flop import FlopConfig, flop_prune
    from ziplm_deploy.models import apply_ranks
    from ziplm_deploy.prune.evaluate import perplexity

    sparsity = args.flop_sparsity if args.flop_sparsity is not None else uniform_rank_sparsity(table, args.target)
    student = copy.deepcopy(dense)
    steps = args.flop_steps or args.steps
    config = FlopConfig(target=sparsity, steps=steps, warmup=max(1, steps // 3), init_drop=args.flop_init_drop,
                        lr=args.lr, gate_lr=args.flop_gate_lr, lambda_lr=args.flop_lambda_lr,
                        batch_size=args.batch_size, seed=0)
    history: list[dict] = []
    t0 = time.perf_counter()
    result = flop_prune(student, train_windows, config, log=history.append)
    seconds = time.perf_counter() - t0
    shape = ModelShape.from_model(student)
    with torch.no_grad():
        trained = perplexity(student, held, progress=False)
        svd = apply_ranks(copy.deepcopy(dense), shape, init="svd")
        oneshot = perplexity(svd, held, progress=False)
    del svd
    ranks = sorted(result.ranks.values())
    row = {
        "method": "flop", "training": f"FLOP L0 rank gates, LM loss (target sparsity {sparsity:.3f})",
        "path": None, "predicted_speedup": round(table.speedup(shape), 4),
        "params_m": round(sum(p.numel() for p in student.parameters()) / 1e6, 2),
        "oneshot_ppl": oneshot, "trained_ppl": trained, "oneshot_kind": "truncated SVD at the kept ranks",
        "steps": steps, "tokens": steps * args.batch_size * args.seq_len, "train_seconds": seconds,
        "tokens_per_s": round(steps * args.batch_size * args.seq_len / seconds, 1), "flop_config": asdict(config),
        "loss_first": history[0]["task"], "loss_last": history[-1]["task"],
        "target_sparsity": sparsity, "param_sparsity": round(result.sparsity(student), 4),
        "expected_sparsity_last": history[-1]["expected_sparsity"], "rank_min": ranks[0], "rank_max": ranks[-1],
        "shape": shape.to_json(), "loss_curve": history,
    }
    print(f"flop {row['predicted_speedup']:.2f}x (sparsity {row['param_sparsity']:.1%}): held-out ppl truncated SVD "
          f"{oneshot:.2f} -> FLOP {trained:.2f} after {steps} steps ({seconds:.0f}s)")
    row["onnx"] = str(export_student(student, out / "onnx" / f"{args.tag}-flop.onnx"))
    return row


def export_student(model, path: Path) -> Path:
    from ziplm_deploy.export.onnx import export_onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    export_onnx(model, path, rtol=1e-3)
    return path


def measure_speedups(rows: list[dict], dense, dense_onnx: Path, table, rounds: int) -> None:
    """Every trained model's ORT-CPU latency beside the dense model (same protocol as verify)."""
    from ziplm_deploy.runtime import get_backend
    from ziplm_deploy.runtime.measure import time_models
    from ziplm_deploy.runtime.timing import Protocol

    if not dense_onnx.exists():
        export_student(dense, dense_onnx)
    files = {"dense": str(dense_onnx), **{row["method"]: row["onnx"] for row in rows}}
    stats = time_models(get_backend("ort-cpu", threads=1), files, {"batch": 1, "seq": 128}, vocab=table.arch.vocab,
                        protocol=Protocol(warmup=3, rounds=rounds))
    for row in rows:
        row["measured_ms"] = stats[row["method"]].p25
        row["dense_ms_same_run"] = stats["dense"].p25
        row["measured_speedup"] = round(stats["dense"].p25 / stats[row["method"]].p25, 4)


def _median_rate(history: list[dict]) -> float:
    rates = sorted(h["tokens_per_s"] for h in history)
    return rates[len(rates) // 2] if rates else 0.0


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [
        f"# Training after pruning: {r['model']} at {r['target']:g}x predicted ({r['table']})", "",
        f"Machine: {m['cpu']} ({m['cores']} cores, torch {m['torch']}, {m['torch_threads']} threads, {m['device']}"
        + (f", {m['gpu']}" if m['gpu'] else "") + "). "
        f"Training: {r['batch_size']} windows x {r['seq_len']} tokens per step of {r['train_data']}, AdamW lr "
        f"{r['lr']}. Held-out perplexity on {r['held_out']} (never trained on); dense model: **{r['dense_ppl']:.2f}**. "
        f"Measured speedup: the exported trained model vs the dense one in ONNX Runtime CPU (1 thread, batch 1, "
        f"seq 128, p25 of {r.get('timing_rounds', '?')} interleaved rounds).", "",
        "| method | training | steps | predicted speedup | measured speedup | params (M) | one-shot ppl | "
        "trained ppl | loss first -> last | train time | tokens/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        measured = f"{row['measured_speedup']:.2f}x" if "measured_speedup" in row else "-"
        lines.append(f"| {row['method']} | {row['training']} | {row['steps']} | {row['predicted_speedup']:.2f}x | "
                     f"{measured} | {row['params_m']} | {row['oneshot_ppl']:.2f} | {row['trained_ppl']:.2f} | "
                     f"{row['loss_first']:.3f} -> {row['loss_last']:.3f} | {row['train_seconds']:.0f}s | "
                     f"{row['tokens_per_s']} |")
    lines += ["", "Train time includes the held-out evaluations before and after for ZipLM and LayerChop; tokens/s is "
              "the median over training steps (FLOP: the mean, SVD set-up included). FLOP's one-shot column is the "
              "truncated SVD at FLOP's final kept ranks (no training). Loss curves: see the JSON (`rows[].loss_curve`).",
              f"Load average during the run: {r.get('load_average', 'not recorded')}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
