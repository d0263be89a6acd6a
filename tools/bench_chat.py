"""Benchmark: the chat demo's family on SmolLM2-135M, timed in ONNX Runtime GenAI, predicted vs measured.

Runs `ziplm-deploy demo --workload chat` (the stored chat workload tables of `profiles/` when they were measured
on this CPU, else measured in the run; one-shot ZipLM searched on the workload's end-to-end time; each member
exported to a GenAI folder checked token-exact; its generation of 128 tokens after a 512-token prompt timed
beside the dense model's in interleaved rounds, p25; held-out news perplexity), then collects every member's
verify report into one table: TTFT, ms per token, tokens/s and end-to-end time, measured and predicted, and the
prediction error of each speedup. Then the dense model's generation three ways: transformers `generate`, GenAI with a
full-logits graph and GenAI with the product's last-position-logits graph.

    python tools/bench_chat.py [--work runs/bench-chat] [--rounds 10] [--targets 1.5 2] [--runtime-rounds 5]
    python tools/bench_chat.py --only-runtimes  # only the dense PyTorch / GenAI comparison, on the stored run
    python tools/bench_chat.py --render     # re-write the Markdown from the stored JSON

Writes tools/results/chat_smollm2.{json,md}. Run it alone on the machine: timing ratios hold on a busy box,
milliseconds do not.
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

OUT = ROOT / "tools" / "results" / "chat_smollm2"
METRICS = (("ttft_ms", "TTFT ms", ".1f"), ("ms_per_token", "ms/token", ".2f"), ("tokens_per_s", "tokens/s", ".1f"),
           ("e2e_ms", "end-to-end ms", ".0f"))


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:+.1%}"


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def member_rows(run: Path) -> list[dict]:
    """One row per verified member: its figures from prune/verify/<member>.verify.json."""
    rows = []
    for f in sorted((run / "prune" / "verify").glob("*.verify.json")):
        rep = json.loads(f.read_text())
        w = rep["workload"]
        st = w["statistic"]

        def timed(role: str) -> dict:
            r = w[role]
            out = {k: (r[k] or {}).get(st) for k in ("ttft_ms", "ms_per_token", "e2e_ms")}
            out["tokens_per_s"] = r["tokens_per_s"]
            return out

        pred = w["prediction"] or {}
        quality = rep.get("quality") or {}
        rows.append({
            "member": f.name.removesuffix(".verify.json"), "target": (rep.get("speedup") or {}).get("target"),
            "baseline": timed("baseline"), "candidate": timed("candidate"),
            "predicted_baseline": pred.get("baseline"), "predicted_candidate": pred.get("candidate"),
            "speedup": w["speedup"], "predicted_speedup": pred.get("speedup"),
            "speedup_error": (pred.get("error") or {}).get("speedup"),
            "fingerprint_differences": (pred.get("tables") or {}).get("fingerprint_differences"),
            "drift": w["timing"]["drift"], "samples": w["candidate"]["e2e_ms"]["n"],
            "token_exact": (rep.get("parity") or {}).get("ok"), "token_agreement_with_dense": w["token_agreement"],
            "perplexity": quality.get("candidate"), "dense_perplexity": quality.get("baseline"),
        })
    return rows


def runtimes(work: Path, rounds: int) -> dict:
    """Dense SmolLM2, greedy 128 tokens after the same 512-token prompt, three ways, interleaved rounds (p25):
    transformers `generate` (PyTorch, 1 thread, KV cache), ONNX Runtime GenAI with a full-logits graph
    (`export --genai --genai-full-logits`) and GenAI with the product's graph (last-position logits)."""
    import random

    import numpy as np
    import onnxruntime_genai as og
    import torch

    from ziplm_deploy.core.workload import Workload
    from ziplm_deploy.models import load_model
    from ziplm_deploy.models.assets import smollm2_dir
    from ziplm_deploy.verify.generation import generate_once, prompt_ids

    torch.set_num_threads(1)
    w = Workload.parse("chat")
    ours = next((work / "onnx").glob("smollm2-135m-instruct-*-genai"))
    full = work / "dense-full-logits-genai"
    if not full.is_dir():
        cmd = [sys.executable, "-m", "ziplm_deploy", "export", "--model", str(smollm2_dir()), "--genai", str(full),
               "--genai-full-logits"]
        print("$ " + " ".join(cmd[2:]), flush=True)
        if subprocess.run(cmd, cwd=ROOT).returncode != 0:
            raise SystemExit("export --genai-full-logits failed")
    config = json.loads((ours / "genai_config.json").read_text())
    prompt = prompt_ids(config, config["model"]["vocab_size"], w, seed=0)
    model = load_model(smollm2_dir()).eval()
    ids = torch.from_numpy(prompt.astype(np.int64))

    @torch.no_grad()
    def pytorch() -> tuple[float, tuple[int, ...]]:
        t0 = time.perf_counter()
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=w.generate,
                             min_new_tokens=w.generate, do_sample=False, num_beams=1, pad_token_id=0)
        return (time.perf_counter() - t0) * 1000, tuple(int(t) for t in out[0, w.prompt:])

    genai = {"genai-full-logits": og.Model(str(full)), "genai-ours": og.Model(str(ours))}

    def timed(name: str) -> tuple[float, tuple[int, ...], float | None]:
        if name == "pytorch":
            ms, tokens = pytorch()
            return ms, tokens, None
        sample = generate_once(genai[name], prompt, w)
        return sample.ttft_ms + sample.decode_ms, sample.tokens, sample.ttft_ms

    names = ["pytorch", "genai-full-logits", "genai-ours"]
    for name in names:  # warm-up
        timed(name)
    e2e: dict[str, list[float]] = {n: [] for n in names}
    ttft: dict[str, list[float]] = {n: [] for n in names}
    tokens: dict[str, tuple[int, ...]] = {}
    rng = random.Random(0)
    for _ in range(rounds):
        order = list(names)
        rng.shuffle(order)
        for name in order:
            ms, toks, first = timed(name)
            e2e[name].append(ms)
            tokens[name] = toks
            if first is not None:
                ttft[name].append(first)
    p25 = {n: float(np.percentile(e2e[n], 25)) for n in names}
    return {"rounds": rounds, "e2e_ms_p25": p25,
            "ttft_ms_p25": {n: float(np.percentile(v, 25)) for n, v in ttft.items() if v},
            "tokens_per_s_e2e": {n: w.generate * 1000.0 / p25[n] for n in names},
            "tokens_equal_pytorch": {n: tokens[n] == tokens["pytorch"] for n in names}}


def markdown(result: dict) -> str:
    s = result["setup"]
    lines = ["# Chat workload on SmolLM2-135M: the demo's family in ONNX Runtime GenAI, predicted vs measured", "",
             f"Machine: {s['cpu']}, {s['cores']} logical CPUs, ONNX Runtime GenAI {s['genai']} (CPU, 1 thread, fp32, "
             f"greedy). Workload chat: prompt 512, exactly 128 generated tokens, batch 1; {s['rounds']} interleaved "
             f"rounds per member (one whole generation per visit), p25. Tables: {s['tables']}. Family: "
             f"`ziplm-deploy demo --workload chat` (one-shot ZipLM, 64 x 128 Wikipedia calibration tokens, searched on "
             f"the workload's end-to-end time). Produced by `python tools/bench_chat.py` on {s['date']}; "
             f"{s['seconds']:.0f} s.", ""]
    rt = result.get("runtimes")
    if rt:
        lines += ["## Dense SmolLM2, one generation three ways", "",
                  f"Greedy 128 tokens after the same 512-token prompt; {rt['rounds']} interleaved rounds, p25 of the "
                  "whole generation (GenAI: `append_tokens` + 128 `generate_next_token`; PyTorch: `generate`, 1 "
                  "thread, KV cache).", "",
                  "| runtime | end-to-end ms | TTFT ms | tokens/s (end to end) | tokens = PyTorch's |", "|---|---|---|---|---|"]
        labels = {"pytorch": "transformers `generate` (PyTorch)", "genai-full-logits": "GenAI, full-logits graph",
                  "genai-ours": "GenAI, last-position logits (`export --genai`)"}
        for name, label in labels.items():
            lines.append(f"| {label} | {rt['e2e_ms_p25'][name]:.0f} | {_num(rt['ttft_ms_p25'].get(name), '.0f')} | "
                         f"{rt['tokens_per_s_e2e'][name]:.1f} | {'yes' if rt['tokens_equal_pytorch'][name] else 'no'} |")
        lines.append("")
    for row in result["rows"]:
        lines += [f"## {row['member']} (end-to-end target {row['target']}x)", "",
                  "| metric | dense measured | dense predicted | member measured | member predicted |",
                  "|---|---|---|---|---|"]
        pb, pc = row["predicted_baseline"] or {}, row["predicted_candidate"] or {}
        for key, label, fmt in METRICS:
            lines.append(f"| {label} | {_num(row['baseline'][key], fmt)} | {_num(pb.get(key), fmt)} | "
                         f"{_num(row['candidate'][key], fmt)} | {_num(pc.get(key), fmt)} |")
        sp, ps, err = row["speedup"], row["predicted_speedup"] or {}, row["speedup_error"] or {}
        lines += ["", "| speedup | measured | predicted | error (measured / predicted - 1) |", "|---|---|---|---|"]
        for key in ("ttft", "decode", "e2e"):
            lines.append(f"| {key} | {_num(sp.get(key), '.3f')}x | {_num(ps.get(key), '.3f')}x | {_pct(err.get(key))} |")
        ratio = (row["perplexity"] / row["dense_perplexity"]) if row["perplexity"] and row["dense_perplexity"] else None
        lines += ["", f"Held-out news perplexity {_num(row['perplexity'], '.2f')} (dense "
                      f"{_num(row['dense_perplexity'], '.2f')}, {_num(ratio, '.2f')}x); GenAI greedy tokens "
                      f"{'equal' if row['token_exact'] else 'DIFFER from'} transformers'; agreement with the dense "
                      f"model's tokens {_num(row['token_agreement_with_dense'], '.0%')}; baseline re-check drift "
                      f"{_pct(row['drift'])}; fingerprint differences vs the tables: "
                      f"{', '.join(row['fingerprint_differences'] or []) or 'none'}.", ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench-chat"))
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--targets", type=float, nargs="+", default=[1.5, 2.0])
    ap.add_argument("--runtime-rounds", type=int, default=5,
                    help="rounds of the dense PyTorch / GenAI full-logits / GenAI comparison (0: skip it)")
    ap.add_argument("--only-runtimes", action="store_true",
                    help="re-run only the dense runtime comparison on an existing --work folder")
    ap.add_argument("--render", action="store_true", help="only re-write the Markdown from the stored JSON")
    args = ap.parse_args()
    if args.render:
        result = json.loads(OUT.with_suffix(".json").read_text())
        atomic_write_bytes(OUT.with_suffix(".md"), markdown(result).encode())
        return 0
    import onnxruntime_genai

    from ziplm_deploy.runtime.fingerprint import cpu_count, cpu_name

    work = Path(args.work)
    t0 = time.perf_counter()
    if args.only_runtimes:
        result = json.loads(OUT.with_suffix(".json").read_text())
        result["runtimes"] = runtimes(work, args.runtime_rounds)
        atomic_write_json(OUT.with_suffix(".json"), result)
        atomic_write_bytes(OUT.with_suffix(".md"), markdown(result).encode())
        print(markdown(result))
        return 0
    cmd = [sys.executable, "-m", "ziplm_deploy", "demo", "--workload", "chat", "--out", str(work),
           "--rounds", str(args.rounds), "--targets", *map(str, args.targets)]
    print("$ " + " ".join(cmd[2:]), flush=True)
    rc = subprocess.run(cmd, cwd=ROOT).returncode
    if rc not in (0, 1):  # 1: a member failed the gate; its figures are still the benchmark's
        raise SystemExit(f"demo exited {rc}")
    log = (work / "workload" / "workload.json")
    tables = "the stored profiles/smollm2-135m_ort-cpu_chat_t1.json" if not (work / "chat-tables").is_dir() else \
        "measured in the run (the stored ones are from another device)"
    result = {"setup": {"cpu": cpu_name(), "cores": cpu_count(), "genai": onnxruntime_genai.__version__,
                        "rounds": args.rounds, "targets": args.targets, "tables": tables, "workload_manifest": str(log),
                        "date": time.strftime("%Y-%m-%d"), "seconds": round(time.perf_counter() - t0, 1),
                        "demo_exit_code": rc},
              "rows": member_rows(work)}
    if args.runtime_rounds:
        result["runtimes"] = runtimes(work, args.runtime_rounds)
        result["setup"]["seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write_json(OUT.with_suffix(".json"), result)
    atomic_write_bytes(OUT.with_suffix(".md"), markdown(result).encode())
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
