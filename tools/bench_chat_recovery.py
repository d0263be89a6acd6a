"""Benchmark: a chat-demo member before and after CPU recovery, as a release engineer would judge it.

The chat demo's one-shot members are fast and predicted (tools/results/chat_smollm2.md) but its 2x member fails
the demo's quality budget (held-out news perplexity <= 3x dense). This takes that member and the model `distill`
trained from it (plain LM continued pretraining on the offline recovery corpus, `tools/recovery_text.py`; news
never seen), and for each runs what a user runs:

    ziplm-deploy verify --baseline DENSE --candidate M --workload chat --workload-tables TABLES --eval-data NEWS
    ziplm-deploy gate --policy policies/demo-chat.yaml --report M.verify.json

(GenAI export checked token-exact, generation timed beside the dense model, predicted from the stored chat tables,
perplexity on 8 x 128 held-out news tokens) and writes the two verdicts with the training curve (train.json).

    python tools/bench_chat_recovery.py --oneshot runs/bench-chat/prune/ziplm-2x \
        --recovered runs/chat-recovery/ziplm-2x-lm [--rounds 5]

Writes tools/results/chat_recovery_smollm2.{json,md}. Run it alone on the machine (timing).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ziplm_deploy.core.jsonio import atomic_write_bytes, atomic_write_json  # noqa: E402

OUT = ROOT / "tools" / "results" / "chat_recovery_smollm2"
TABLES = ROOT / "profiles" / "smollm2-135m_ort-cpu_chat_t1.json"
POLICY = ROOT / "policies" / "demo-chat.yaml"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ziplm_deploy", *args], capture_output=True, text=True, cwd=ROOT)


def judge(name: str, dense: Path, model: Path, work: Path, rounds: int, news: str) -> dict:
    """verify --workload chat, then the demo's gate, of one model; the figures a user reads."""
    report = work / f"{name}.verify.json"
    t0 = time.perf_counter()
    v = _cli("verify", "--baseline", str(dense), "--candidate", str(model), "--workload", "chat",
             "--workload-tables", str(TABLES), "--eval-data", news, "--rounds", str(rounds), "--target", "2",
             "--cache", str(work / "cache"), "--report", str(report))
    seconds = round(time.perf_counter() - t0, 1)
    if not report.is_file():
        raise SystemExit(f"verify of {model} wrote no report (exit {v.returncode}): {v.stderr[-2000:]}")
    g = _cli("gate", "--policy", str(POLICY), "--report", str(report))
    rep = json.loads(report.read_text())
    w, q = rep.get("workload") or {}, rep.get("quality") or {}
    return {"model": str(model), "verify_exit": v.returncode, "verify_s": seconds, "gate_exit": g.returncode,
            "gate": "PASSED" if g.returncode == 0 else "FAILED", "gate_output": g.stdout.strip().splitlines()[-6:],
            "speedup": w.get("speedup"), "predicted": (w.get("prediction") or {}).get("speedup"),
            "token_exact": (rep.get("parity") or {}).get("ok"), "perplexity": q.get("candidate"),
            "dense_perplexity": q.get("baseline")}


def render(result: dict) -> str:
    def x(v) -> str:
        return "-" if v is None else f"{v:.3f}x"

    lines = ["# Chat member before and after CPU recovery (SmolLM2-135M, ONNX Runtime GenAI)", "",
             f"Machine: {result['machine']}. Workload chat (prompt 512, 128 generated tokens), GenAI CPU 1 thread fp32, "
             f"{result['rounds']} interleaved rounds, p25, predicted from `profiles/smollm2-135m_ort-cpu_chat_t1.json`; "
             "held-out news perplexity on 8 x 128 tokens (gensim `lee_background.cor`, never trained on); gate "
             "`policies/demo-chat.yaml` (faster end to end, GenAI tokens equal transformers', perplexity <= 3x dense). "
             f"Produced by `python tools/bench_chat_recovery.py` on {result['date']}.", "",
             "| model | e2e speedup meas. / pred. | TTFT | decode | perplexity (x dense) | GenAI token-exact | gate |",
             "|---|---|---|---|---|---|---|"]
    for name, r in result["models"].items():
        sp, pr = r["speedup"] or {}, r["predicted"] or {}
        ratio = (r["perplexity"] / r["dense_perplexity"]) if r["perplexity"] and r["dense_perplexity"] else None
        ppl = "-" if ratio is None else f"{r['perplexity']:.2f} ({ratio:.2f}x)"
        lines.append(f"| {name} | {x(sp.get('e2e'))} / {x(pr.get('e2e'))} | {x(sp.get('ttft'))} / {x(pr.get('ttft'))} "
                     f"| {x(sp.get('decode'))} / {x(pr.get('decode'))} | {ppl} | {r['token_exact']} | {r['gate']} |")
    train = result.get("train") or {}
    if train:
        curve = " -> ".join(f"{e['ppl']:.1f}" for e in train["evals"])
        lines += ["", f"Recovery: `distill` without a teacher (LM loss), {train['steps']} steps x "
                      f"{train['batch_size']} x {train['seq_len']} tokens ({train['tokens'] / 1e6:.2f}M tokens) on "
                      f"`runs/recovery-text.jsonl`, lr {train['lr']:g}, {train['seconds'] / 60:.0f} min wall on a machine "
                      f"shared with CI runs; its own held-out news perplexity (16 x 256 tokens) at steps "
                      f"{', '.join(str(e['step']) for e in train['evals'])}: {curve}."]
    return "\n".join(lines) + "\n"


def _train_summary(run: Path) -> dict | None:
    f = run / "train.json"
    if not f.is_file():
        return None
    t = json.loads(f.read_text())
    cfg = t["config"]
    seq = json.loads((run / "model" / "manifest.json").read_text())["options"]["seq_len"]
    evals = [{"step": e["step"], "ppl": e["ppl"]} for e in t.get("evals", [])]
    return {"steps": t["steps"], "batch_size": cfg["batch_size"], "seq_len": seq, "lr": cfg["lr"],
            "tokens": t["tokens"], "seconds": t["seconds"], "evals": evals}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dense", default=None, help="dense SmolLM2 directory (default: the offline package's)")
    ap.add_argument("--oneshot", required=True, help="the chat demo's member directory")
    ap.add_argument("--recovered", required=True, help="the distill output folder trained from it")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench-chat-recovery"))
    ap.add_argument("--render", action="store_true", help="re-write the Markdown from the stored JSON")
    args = ap.parse_args()
    if args.render:
        atomic_write_bytes(OUT.with_suffix(".md"), render(json.loads(OUT.with_suffix(".json").read_text())).encode())
        return
    import datetime
    import platform

    from gensim.test.utils import datapath

    from ziplm_deploy.models.assets import smollm2_dir

    dense = Path(args.dense) if args.dense else smollm2_dir()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    recovered = Path(args.recovered)
    news = datapath("lee_background.cor")
    models = {"one-shot": judge("oneshot", dense, Path(args.oneshot), work, args.rounds, news),
              "after recovery": judge("recovered", dense, recovered / "model", work, args.rounds, news)}
    result = {"machine": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} logical CPUs",
              "date": datetime.date.today().isoformat(), "rounds": args.rounds, "models": models,
              "train": _train_summary(recovered)}
    atomic_write_json(OUT.with_suffix(".json"), result)
    atomic_write_bytes(OUT.with_suffix(".md"), render(result).encode())
    print(render(result))


if __name__ == "__main__":
    main()
