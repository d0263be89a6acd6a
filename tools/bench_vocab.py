"""Benchmark: vocabulary trimming (``trim-vocab``) of SmolLM2-135M or Gemma-3-270m at several coverages.

Tokens counted on gensim's Wikipedia dump (the domain); quality measured against the untrimmed model on
held-out news text (gensim's ``lee_background.cor``): coverage, top-1 agreement, KL, perplexity with the
out-of-set tokens counted, greedy agreement. Speed: each model's ONNX Runtime GenAI folder (``export
--genai``: last-position logits, past KV; written only when GenAI greedy equals transformers token for
token), its ``model.onnx`` timed in ONNX Runtime CPU (1 thread, batch 1): prefill of 128 tokens
(last-position logits) and one decode step at a 128-token past, all models interleaved (shared protocol,
p25); and GenAI's own loop (1 intra-op thread): every decode step of 64 greedy tokens after a 128-token
prompt timed, runs interleaved (p25).

    python tools/bench_vocab.py [--model smollm2|gemma3] [--coverages 0.99 0.999 0.9999] [--rounds 20]
                                [--decode-rounds 200] [--work DIR]

Writes tools/results/vocab_{model}.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

SEQ, PAST, DECODE_TOKENS = 128, 128, 64
WIKI_HELDOUT = 16  # --heldout wikipedia: articles kept out of the counts
MODELS = {"smollm2": ("SmolLM2-135M", "smollm2_dir"), "gemma3": ("Gemma-3-270m", "gemma3_dir")}  # label, assets fn


def heldout_windows(tokenizer, seq_len: int, count: int):
    from gensim.test.utils import datapath

    from ziplm_deploy.prune.data import token_windows

    texts = [t for t in Path(datapath("lee_background.cor")).read_text(errors="replace").splitlines() if t.strip()]
    return token_windows(tokenizer, texts, seq_len)[:count]


def ort_calls(folder: Path, prompt, rng):
    """(prefill, decode) callables on the folder's graph: 128 prompt tokens with an empty past; 1 token at a
    128-token past (random KV of the graph's per-layer shapes)."""
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(folder / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    kv = [i for i in session.get_inputs() if i.name.startswith("past_key_values.")]
    ids = np.asarray([prompt], dtype=np.int64)
    prefill = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(SEQ)[None]}
    prefill |= {i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), dtype=np.float32) for i in kv}
    decode = {"input_ids": ids[:, -1:], "attention_mask": np.ones((1, PAST + 1), dtype=np.int64),
              "position_ids": np.array([[PAST]], dtype=np.int64)}
    decode |= {i.name: rng.standard_normal((1, i.shape[1], PAST, i.shape[3])).astype(np.float32) for i in kv}
    return (lambda: session.run(["logits"], prefill)), (lambda: session.run(["logits"], decode))


def genai_decode(model, prompt) -> tuple[float, list[float], list[int]]:
    """(time to first token ms, each later token's ms, tokens): GenAI greedy on a loaded ``og.Model``, EOS held off."""
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + DECODE_TOKENS, min_length=len(prompt) + DECODE_TOKENS,
                              do_sample=False)
    generator = og.Generator(model, params)
    t0 = time.perf_counter()
    generator.append_tokens(list(prompt))
    generator.generate_next_token()
    ttft = (time.perf_counter() - t0) * 1e3
    steps = []
    while not generator.is_done():
        t0 = time.perf_counter()
        generator.generate_next_token()
        steps.append((time.perf_counter() - t0) * 1e3)
    return ttft, steps, [int(t) for t in generator.get_sequence(0)][len(prompt):]


def head_call(hidden: int, rows: int, rng):
    """The bare LM head of ``rows`` output tokens: one decode position's MatMul [1, 1, hidden] x [hidden, rows]."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(rng.standard_normal((hidden, rows)).astype(np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "head",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, hidden])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, rows])], [weight])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    session = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
                                   .SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feed = {"x": rng.standard_normal((1, 1, hidden)).astype(np.float32)}
    return lambda: session.run(None, feed)


def one_thread(folder: Path) -> None:
    """The bench's copy of the folder runs GenAI on one intra-op thread (the profiles' setting)."""
    path = folder / "genai_config.json"
    config = json.loads(path.read_text())
    config["model"]["decoder"]["session_options"]["intra_op_num_threads"] = 1
    path.write_text(json.dumps(config, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="smollm2")
    parser.add_argument("--heldout", choices=("news", "wikipedia"), default="news",
                        help="news: gensim's lee_background.cor (another domain); wikipedia: the last "
                             f"{WIKI_HELDOUT} Wikipedia articles, left out of the token counts (in-domain)")
    parser.add_argument("--coverages", type=float, nargs="+", default=[0.99, 0.999, 0.9999])
    parser.add_argument("--rounds", type=int, default=20, help="prefill timing rounds")
    parser.add_argument("--decode-rounds", type=int, default=200, help="decode-step timing rounds (a step is ~30 ms)")
    parser.add_argument("--eval-windows", type=int, default=16)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--greedy-tokens", type=int, default=32)
    parser.add_argument("--genai-runs", type=int, default=5)
    parser.add_argument("--work", help="keep the model directories and GenAI folders here")
    args = parser.parse_args()

    import numpy as np
    import torch

    from ziplm_deploy.core.arch import read_model_config
    from ziplm_deploy.export.genai import export_genai
    from ziplm_deploy.models import load_model, save_model
    from ziplm_deploy.models import assets
    from ziplm_deploy.models.assets import wikipedia_text
    from ziplm_deploy.models.tokenizer import load_tokenizer
    from ziplm_deploy.models.vocab import (count_tokens, prompts_from, select_tokens, special_ids, trim_model,
                                           vocab_quality)
    from ziplm_deploy.runtime.fingerprint import cpu_name
    from ziplm_deploy.runtime.timing import Protocol, round_robin, stats_of

    started = time.perf_counter()
    suffix = "" if args.heldout == "news" else "_in_domain"
    torch.set_num_threads(2)
    label, dir_fn = MODELS[args.model]
    dense_dir = getattr(assets, dir_fn)()
    tokenizer = load_tokenizer(dense_dir)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_vocab."))
    work.mkdir(parents=True, exist_ok=True)
    reference = load_model(dense_dir)
    vocab = reference.config.vocab_size
    t0 = time.perf_counter()
    articles = wikipedia_text()
    domain = articles[:-WIKI_HELDOUT] if args.heldout == "wikipedia" else articles
    counts = count_tokens(tokenizer, domain, vocab)
    count_s = time.perf_counter() - t0
    generation = json.loads((dense_dir / "generation_config.json").read_text())
    specials = special_ids(tokenizer, vocab, read_model_config(dense_dir), generation)
    if args.heldout == "wikipedia":
        from ziplm_deploy.prune.data import token_windows

        held = token_windows(tokenizer, articles[-WIKI_HELDOUT:], SEQ)[: args.eval_windows]
    else:
        held = heldout_windows(tokenizer, SEQ, args.eval_windows)
    prompts = prompts_from(held, args.prompts, 16)
    print(f"counted {int(counts.sum()):,} Wikipedia tokens ({int((counts > 0).sum()):,} distinct) in {count_s:.1f}s; "
          f"{len(specials)} specials; {held.numel():,} held-out tokens", flush=True)

    folders = {"untrimmed": work / "untrimmed-genai"}
    rows = [{"model": "untrimmed", "kept": vocab}]
    if not (folders["untrimmed"] / "ziplm_genai.json").is_file():
        r = export_genai(reference, folders["untrimmed"], tokenizer_dir=dense_dir, source=dense_dir, overwrite=True)
        rows[0]["export_s"] = round(r.seconds, 1)
        print(f"untrimmed GenAI folder in {r.seconds:.0f}s", flush=True)
    for c in args.coverages:
        name = f"coverage-{c:g}"
        saved = work / name / "bench-row.json"
        folders[name] = work / f"{name}-genai"
        if saved.is_file() and (folders[name] / "ziplm_genai.json").is_file():  # --work of an earlier run
            rows.append(json.loads(saved.read_text()))
            continue
        sel = select_tokens(counts, specials, coverage=c)
        model = trim_model(copy.deepcopy(reference), sel.kept)
        t0 = time.perf_counter()
        q = vocab_quality(model, reference, held, prompts, args.greedy_tokens,
                          eval_data="gensim lee_background.cor" if args.heldout == "news" else "held-out Wikipedia")
        quality_s = time.perf_counter() - t0
        model_dir = work / name
        save_model(model, model_dir, tokenizer=tokenizer, overwrite=True)
        r = export_genai(model, folders[name], tokenizer_dir=dense_dir, source=model_dir, overwrite=True)
        row = {"model": name, "coverage_target": c, "kept": len(sel.kept), "train_coverage": round(sel.coverage, 6),
               **{k: v for k, v in q.to_json().items() if k not in ("format", "version", "kept", "vocab_size",
                                                                      "eval_data")},
               "quality_s": round(quality_s, 1), "export_s": round(r.seconds, 1),
               "genai_token_exact": f"{len(r.prompts)} prompts x 16 tokens"}
        rows.append(row)
        saved.write_text(json.dumps(row))
        print(json.dumps(row), flush=True)
        del model

    for folder in folders.values():
        one_thread(folder)
    rng = np.random.default_rng(0)
    prompt = held[0].tolist()
    calls = {name: ort_calls(folder, prompt, rng) for name, folder in folders.items()}
    protocol = Protocol(warmup=3, rounds=args.rounds)
    timings = {}
    for phase, i, rounds in (("prefill", 0, args.rounds), ("decode", 1, args.decode_rounds)):
        samples = round_robin({name: c[i] for name, c in calls.items()}, replace(protocol, rounds=rounds))
        timings[phase] = {name: stats_of(s).to_json() for name, s in samples.items()}
        print(phase, {n: round(v["p25"], 3) for n, v in timings[phase].items()}, flush=True)
    del calls
    heads = {row["model"]: head_call(reference.config.hidden_size, row["kept"], rng) for row in rows}
    samples = round_robin(heads, replace(protocol, rounds=args.decode_rounds))
    timings["head_matmul"] = {name: stats_of(s).to_json() for name, s in samples.items()}
    del heads
    import onnxruntime_genai as og

    loaded = {name: og.Model(str(folder)) for name, folder in folders.items()}
    genai = {name: {"ttft": [], "steps": [], "tokens": None} for name in folders}
    for _ in range(args.genai_runs):  # interleaved runs; every decode step timed
        for name, model in loaded.items():
            ttft, steps, tokens = genai_decode(model, prompt)
            genai[name]["ttft"].append(ttft)
            genai[name]["steps"] += steps
            genai[name]["tokens"] = tokens
    del loaded
    base = {phase: timings[phase]["untrimmed"]["p25"] for phase in timings}
    step = {name: stats_of(np.array(g["steps"])).to_json() for name, g in genai.items()}
    timings["genai_decode_step"] = step
    timings["genai_ttft"] = {name: stats_of(np.array(g["ttft"])).to_json() for name, g in genai.items()}
    untrimmed_tokens = genai["untrimmed"]["tokens"]
    for row in rows:
        name = row["model"]
        for phase in ("prefill", "decode"):
            row[f"{phase}_ms"] = round(timings[phase][name]["p25"], 3)
            row[f"{phase}_speedup"] = round(base[phase] / timings[phase][name]["p25"], 4)
        row["head_matmul_ms"] = round(timings["head_matmul"][name]["p25"], 3)
        row["genai_ttft_ms"] = round(timings["genai_ttft"][name]["p50"], 2)
        row["genai_step_ms"] = round(step[name]["p25"], 3)
        row["genai_decode_tps"] = round(1000 / step[name]["p25"], 2)
        row["genai_decode_speedup"] = round(step["untrimmed"]["p25"] / step[name]["p25"], 4)
        tokens = genai[name]["tokens"]
        row["genai_same_64_tokens_as_untrimmed"] = next(
            (i for i, (a, b) in enumerate(zip(tokens, untrimmed_tokens)) if a != b), len(tokens))
    result = {
        "benchmark": f"vocab_{args.model}{suffix}", "model": label, "date": time.strftime("%Y-%m-%d"),
        "machine": f"{cpu_name()}, {os.cpu_count()} cpus (shared with other jobs: load average "
                   f"{os.getloadavg()[0]:.1f} at the end)",
        "python": platform.python_version(), "torch": torch.__version__,
        "settings": {
            "domain": "gensim Wikipedia dump (token counts)" if args.heldout == "news" else
                      f"gensim Wikipedia dump but its last {WIKI_HELDOUT} articles (token counts)",
            "heldout": "gensim lee_background.cor" if args.heldout == "news" else
                       f"the last {WIKI_HELDOUT} Wikipedia articles (in-domain, not counted)",
            "eval": f"{held.shape[0]} x {SEQ} held-out windows",
            "greedy": f"{len(prompts)} prompts (16 tokens) x {args.greedy_tokens} tokens",
            "runtime": "onnxruntime CPU, 1 thread, GenAI graph (last-position logits, past KV)",
            "prefill": f"{SEQ} tokens, empty past", "decode": f"1 token at a {PAST}-token past",
            "statistic": "p25", "rounds": args.rounds, "decode_rounds": args.decode_rounds,
            "genai": f"{DECODE_TOKENS} greedy tokens after a {SEQ}-token prompt, 1 intra-op thread, "
                     f"{args.genai_runs} interleaved runs, p25 of every decode step (tokens/s = 1000 / p25 ms)",
            "fill": "dropped tokens: max(kept logits) - 128"},
        "domain_tokens": int(counts.sum()), "domain_distinct": int((counts > 0).sum()), "specials": len(specials),
        "rows": rows, "timings": timings, "seconds": round(time.perf_counter() - started, 1),
    }
    out = ROOT / "tools" / "results" / f"vocab_{args.model}{suffix}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


def markdown(result) -> str:
    s = result["settings"]
    lines = [f"{result.get('model', 'SmolLM2-135M')} vocabulary trimming; tokens counted on {s['domain']} ({result['domain_tokens']:,} tokens, "
             f"{result['domain_distinct']:,} distinct); quality vs the untrimmed model on {s['eval']} of {s['heldout']}, "
             f"greedy {s['greedy']}; latency: {s['runtime']}, p25 of {s['rounds']} (prefill) / {s['decode_rounds']} "
             f"(decode) interleaved rounds; GenAI: {s['genai']}. "
             f"{result['machine']}, {result['date']}.", "",
             "| model | kept | train cov. | held-out cov. | top-1 | KL | ppl in-set (untrimmed) | greedy prefix / step "
             "| prefill ms | decode ms | head MatMul ms | decode speedup | GenAI tok/s | GenAI speedup |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        common = (f"| {r['prefill_ms']:.1f} ({r['prefill_speedup']:.2f}x) | {r['decode_ms']:.2f} | {r['head_matmul_ms']:.2f} | "
                  f"{r['decode_speedup']:.2f}x | {r['genai_decode_tps']:.1f} | {r['genai_decode_speedup']:.2f}x |")
        if r["model"] == "untrimmed":
            lines.append(f"| untrimmed | {r['kept']:,} | – | – | – | – | – | – " + common)
            continue
        lines.append(f"| coverage {r['coverage_target']:g} | {r['kept']:,} | {r['train_coverage']:.2%} | {r['coverage']:.2%} "
                     f"| {r['top1_agreement']:.2%} | {r['kl']:.4f} | {r['perplexity_in_set']:.2f} "
                     f"({r['reference_perplexity_in_set']:.2f}) | {r['greedy_prefix_agreement']:.1%} / "
                     f"{r['greedy_step_agreement']:.1%} " + common)
    lines += ["", "Perplexity over all held-out tokens is infinite for every trimmed model (the impossible tokens: "
              + ", ".join(f"{r['model']} {r['impossible_tokens']} of {r['tokens']}" for r in result["rows"][1:])
              + f"); the untrimmed model's is {result['rows'][1]['reference_perplexity']:.2f}. KL is KL(trimmed || "
              "untrimmed) in nats (the other direction is infinite). Head MatMul: the bare [1, hidden] x [hidden, K] product "
              "of one decode position, timed alone (same protocol). Every GenAI folder generated token-exact like "
              "transformers before it was written."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
