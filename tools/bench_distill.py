"""Quality recovered by training at equal predicted speedup: one-shot vs after a short training run.

SmolLM2-135M pruned to 2x by ZipLM (then distilled from the dense model: logit KD + hidden states) and
by LayerChop (then continued LM pretraining), both on the stored ORT-CPU table; perplexity on held-out
text (gensim's ``lee_background.cor``, never trained on) before and after; training on gensim's
Wikipedia articles. CPU-sized budget by default.

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
    p.add_argument("--methods", nargs="+", default=["ziplm", "layerchop"], choices=("ziplm", "layerchop"))
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
        if not (member / "manifest.json").is_file():
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

    rows = []
    for method in args.methods:
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
        rows.append(row)
        del student

    result = {
        "format": "ziplm-deploy/bench-distill", "version": 1, "model": "SmolLM2-135M-Instruct",
        "table": TABLE.name, "target": args.target, "dense_ppl": round(dense_ppl, 4),
        "held_out": "gensim lee_background.cor", "train_data": "gensim Wikipedia test dump",
        "seq_len": args.seq_len, "batch_size": args.batch_size, "lr": args.lr, "steps": args.steps,
        "machine": {"cpu": _cpu_name(), "cores": __import__("os").cpu_count(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__, "device": "cuda" if torch.cuda.is_available() else "cpu",
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "prune_seconds": prune_seconds, "rows": rows,
        "load_average": " ".join(f"{x:.1f}" for x in __import__("os").getloadavg()),
    }
    results = ROOT / "tools" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / f"distill_{args.tag}.json").write_text(json.dumps(result, indent=2) + "\n")
    (results / f"distill_{args.tag}.md").write_text(markdown(result))
    print(f"wrote {results}/distill_{args.tag}.json and .md")
    return 0


def _median_rate(history: list[dict]) -> float:
    rates = sorted(h["tokens_per_s"] for h in history)
    return rates[len(rates) // 2] if rates else 0.0


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [
        f"# Training after pruning: {r['model']} at {r['target']:g}x predicted ({r['table']})", "",
        f"Machine: {m['cpu']} ({m['cores']} cores, torch {m['torch']}, {m['torch_threads']} threads, {m['device']}"
        + (f", {m['gpu']}" if m['gpu'] else "") + "). "
        f"Training: {r['steps']} steps x {r['batch_size']} windows x {r['seq_len']} tokens of {r['train_data']}, "
        f"AdamW lr {r['lr']}, linear warmup/decay. Held-out perplexity on {r['held_out']} (never trained on); "
        f"dense model: **{r['dense_ppl']:.2f}**.", "",
        "| method | training | predicted speedup | params (M) | one-shot ppl | trained ppl | loss first -> last | "
        "train time | tokens/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        lines.append(f"| {row['method']} | {row['training']} | {row['predicted_speedup']:.2f}x | {row['params_m']} | "
                     f"{row['oneshot_ppl']:.2f} | {row['trained_ppl']:.2f} | {row['loss_first']:.3f} -> "
                     f"{row['loss_last']:.3f} | {row['train_seconds']:.0f}s | {row['tokens_per_s']} |")
    lines += ["", "Train time includes the two held-out evaluations (before and after); tokens/s is the median "
              "over training steps. Loss curves (every step): see the JSON (`rows[].loss_curve`).",
              f"Load average during the run: {r.get('load_average', 'not recorded')}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
