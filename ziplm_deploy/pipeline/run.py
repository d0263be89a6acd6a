"""Run a pipeline: profile -> prune -> (distill) -> export -> (engine) -> verify -> gate -> report, resumable.

Verify times one prefill pass of each member against the dense model; with ``verify.generation`` (and
``prune.workload_tables``) it times the run's workload in ONNX Runtime GenAI instead (``verify --workload`` with
the run's copy of the workload tables), and judges each member's target on the metric it was searched for
(``prune.budget``).

Each stage writes its artifacts atomically into the run directory and records, in ``state.json``,
a key: the hash of its options and of its inputs' contents. A re-run skips every stage whose key is
unchanged and whose outputs are still there; an interrupted run resumes at the stage it stopped in,
and inside ``prune`` it keeps the finished models and the OBS database.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..core.checks import check_output_path, mapping, number, sweep_temporaries, typed
from ..core.errors import UserError
from ..core.jsonio import atomic_write_json, check_header, make_dirs, read_json
from .spec import PipelineSpec

STATE_FILE = "state.json"
STATE_FORMAT = "ziplm-deploy/run-state"
STAGES = ("profile", "prune", "distill", "export", "engine", "verify")
# folders of the run directory where a killed run can leave a temporary (``TEMP_PREFIX``*) behind
WORK_FOLDERS = (".", "workload", "prune", "prune/verify", "onnx", "distill", "engines", "gate")
WORKLOAD_DIR = "workload"  # the run's copy of prune.workload_tables (manifest + tables)


@dataclass
class RunResult:
    run_dir: str
    stages_run: list[str] = field(default_factory=list)
    stages_skipped: list[str] = field(default_factory=list)
    gate_failures: list[str] = field(default_factory=list)
    gate_checks: dict[str, list[str]] = field(default_factory=dict)  # failed member -> names of its failed checks
    members: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _content_hash(path: str | os.PathLike) -> str:
    """Hash of a file, or of a directory's files (names, sizes and contents of the small ones, sizes and
    modification times of weights)."""
    path = Path(path)
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        stat = f.stat()
        h.update(str(f.relative_to(path.parent if path.is_file() else path)).encode())
        if stat.st_size <= 16 << 20:
            h.update(f.read_bytes())
        else:
            h.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


class _State:
    def __init__(self, run_dir: Path):
        self.path = run_dir / STATE_FILE
        self.stages: dict[str, Any] = _read_state(self.path) if self.path.is_file() else {}

    def done(self, stage: str, key: str) -> Any:
        entry = self.stages.get(stage)
        if entry and entry.get("key") == key and all(Path(p).exists() for p in entry.get("outputs", [])):
            return entry.get("result")
        return None

    def record(self, stage: str, key: str, outputs: list[str], result: Any) -> None:
        self.stages[stage] = {"key": key, "outputs": outputs, "result": result, "finished": time.time()}
        atomic_write_json(self.path, {"format": STATE_FORMAT, "version": 1, "stages": self.stages})


def _read_state(path: Path) -> dict[str, Any]:
    """The recorded stages of ``state.json``, every field checked; a damaged file is a one-line error
    saying how to start over (the finished models and the OBS database are reused either way)."""
    source = str(path)
    try:
        payload = read_json(path, "run state")
        check_header(payload, STATE_FORMAT, (1,), source)
        stages = mapping(payload.get("stages"), source, "stages")
        for name, entry in stages.items():
            _check_stage_entry(name, entry, source)
    except UserError as e:
        raise UserError(e.message, f"delete {path} to start the run over") from None
    return stages


def _check_stage_entry(name: str, entry: Any, source: str) -> None:
    from ..prune.family import member_from_json

    if name not in STAGES:
        raise UserError(f"{source}: stages.{name} is not a stage (stages: {', '.join(STAGES)})")
    key = f"stages.{name}"
    entry = mapping(entry, source, key)
    typed(entry.get("key"), str, source, f"{key}.key", "a string")
    outputs = typed(entry.get("outputs"), list, source, f"{key}.outputs", "a list of paths")
    for i, p in enumerate(outputs):
        typed(p, str, source, f"{key}.outputs[{i}]", "a path")
    number(entry.get("finished"), source, f"{key}.finished", lo=0.0)
    result = entry.get("result")
    if name == "prune":
        for i, m in enumerate(typed(result, list, source, f"{key}.result", "a list of members")):
            member_from_json(m, source, f"{key}.result[{i}]")
        return
    for k, v in mapping(result, source, f"{key}.result").items():  # name -> path
        typed(v, str, source, f"{key}.result.{k}", "a path")


@dataclass(frozen=True)
class _Run:
    """What the stages of one run share."""
    spec: PipelineSpec
    run_dir: Path
    log: Callable[[str], None]
    progress: bool
    stage: Callable[[str, str, Callable[[], tuple[list[str], Any]]], Any]  # _run_stage of this run
    model_key: str  # the model's content hash, part of every stage key
    workload_manifest: Path | None  # prune.workload_tables' manifest (None without)
    table_path: Path  # the profile stage's table
    run_workload: Path  # the manifest of the run's copy of the workload tables
    onnx_cache: Path  # verify's export cache: verify reuses these files


def run_pipeline(spec: PipelineSpec, run_dir: str | os.PathLike, log: Callable[[str], None] = print,
                 progress: bool = True) -> RunResult:
    started = time.perf_counter()
    run_dir = check_output_path(run_dir, "run directory", directory=True)
    if spec.engine is not None:
        from ..runtime.tensorrt import _import_trt

        _import_trt()  # a clear error before any work where TensorRT is missing
    state = _State(run_dir)  # a damaged state.json is refused before any work
    workload_manifest = _check_workload(spec)  # so are unusable prune.workload_tables
    _check_method_table(spec, workload_manifest)  # and tables the pruning method cannot use
    make_dirs(run_dir)
    for folder in WORK_FOLDERS:
        for stale in sweep_temporaries(run_dir / folder):
            log(f"removed the temporary {stale} of an interrupted run")
    result = RunResult(str(run_dir))
    run = _Run(spec=spec, run_dir=run_dir, log=log, progress=progress,
               stage=lambda name, key, fn: _run_stage(state, result, log, name, key, fn),
               model_key=_content_hash(spec.model), workload_manifest=workload_manifest,
               table_path=run_dir / "table.json", run_workload=run_dir / WORKLOAD_DIR / "workload.json",
               onnx_cache=run_dir / "onnx")

    _profile_stage(run)
    members, prune_key = _prune_stage(run)
    result.members = members
    reached = [m for m in members if m["reachable"]]
    for m in members:
        if not m["reachable"]:
            log(f"  target {m['target']:g}x unreachable (max predicted {m['max_speedup']:.2f}x)")
    # distill (optional): the trained models replace the pruned ones from here on; trained_key is part of the
    # export / verify keys when the exported models are trained ones
    reached, trained_key = _distill_stage(run, reached, prune_key)
    exported, export_key = _export_stage(run, reached, prune_key, trained_key)
    engines = _engine_stage(run, exported, export_key)
    verify_reports = _verify_stage(run, reached, engines, prune_key, trained_key)

    # gate (always re-judged: cheap, and its verdict is the run's exit code) --------------------
    if spec.gate is not None:
        result.gate_checks = _gate(spec, verify_reports, members, run_dir / "gate", log)
        result.gate_failures = list(result.gate_checks)

    _report_stage(run, reached)
    result.seconds = round(time.perf_counter() - started, 1)
    return result


def _run_stage(state: _State, result: RunResult, log: Callable[[str], None], name: str, key: str,
               fn: Callable[[], tuple[list[str], Any]]) -> Any:
    """The stage's recorded result where its key is unchanged and its outputs are still there; else runs it
    (``fn`` returns its outputs and result) and records it."""
    cached = state.done(name, key)
    if cached is not None:
        log(f"[{name}] unchanged: skipped")
        result.stages_skipped.append(name)
        return cached
    log(f"[{name}]")
    outputs, value = fn()
    state.record(name, key, outputs, value)
    result.stages_run.append(name)
    return value


def _profile_stage(run: _Run) -> None:
    spec = run.spec
    if run.workload_manifest is not None:  # the manifest pins every table's sha256
        profile_key = _sha(["workload", run.model_key, _content_hash(run.workload_manifest)])
    else:
        profile_key = _sha([_profile_options(spec), run.model_key,
                            _content_hash(spec.profile.table) if spec.profile.table else None])
    run.stage("profile", profile_key, lambda: _write_table(run))


def _write_table(run: _Run) -> tuple[list[str], dict[str, str]]:
    from ..core.arch import arch_from_dir
    from ..core.table import LatencyTable
    from ..profiling.profiler import ProfileOptions, profile
    from ..runtime.timing import Protocol

    spec, table_path = run.spec, run.table_path
    if run.workload_manifest is not None:  # the workload's tables, and its prefill table for verify
        from ..core.workload import WorkloadTables

        tables = WorkloadTables.load(run.workload_manifest)
        copied = tables.save(run.run_dir / WORKLOAD_DIR)
        tables.prefill.save(table_path)
        return [str(table_path), str(copied)], {"table": str(table_path), "workload_tables": str(copied)}
    from ..runtime.quantize import Precision

    if spec.profile.table:
        table = LatencyTable.load(spec.profile.table)
        mismatch = table.fingerprint.precision_mismatch(spec.profile.precision, "profile.precision")
        if mismatch:
            raise UserError(mismatch, "set profile.precision to the table's, or give a table of that precision")
    else:
        p = spec.profile
        table = profile(arch_from_dir(spec.model), ProfileOptions(
            runtime=p.runtime, batch=p.batch, seq=p.seq, threads=p.threads, opt_level=p.opt_level,
            ffn_step=p.ffn_step, rank_step=p.rank_step or 0, protocol=Protocol(rounds=p.rounds),
            precision=Precision.parse(p.precision)),
            progress=run.progress)
    table.save(table_path)
    return [str(table_path)], {"table": str(table_path)}


def _prune_stage(run: _Run) -> tuple[list[dict[str, Any]], str]:
    """The members (``asdict`` of each ``prune.family`` member), and the stage key."""
    spec = run.spec
    prune_key = _sha([_prune_options(spec), run.model_key,
                      _content_hash(run.run_workload if run.workload_manifest is not None else run.table_path),
                      _content_hash(spec.prune.calib) if Path(spec.prune.calib).exists() else spec.prune.calib])
    return run.stage("prune", prune_key, lambda: _prune_members(run)), prune_key


def _prune_members(run: _Run) -> tuple[list[str], list[dict[str, Any]]]:
    from ..core.table import LatencyTable
    from ..prune.family import PruneConfig, prune_family

    spec, log = run.spec, run.log
    p = spec.prune
    config = PruneConfig(method=p.method, targets=p.targets, seq_len=p.seq_len, windows=p.windows, seed=p.seed,
                         ffn_step=p.ffn_step, damp=p.damp, loss=p.loss, uniform=p.uniform,
                         spdy_samples=p.spdy_samples, device=p.device, cost=p.cost,
                         probe_windows=p.probe_windows, attention_levels=p.attention_levels, flop_steps=p.flop_steps)
    if run.workload_manifest is not None:
        run_workload = run.run_workload
        latency, latency_path = _workload_latency(run_workload, p.budget, "the run's workload tables"), run_workload
    else:
        latency, latency_path = LatencyTable.load(run.table_path), run.table_path
    report = prune_family(spec.model, latency, latency_path, p.calib, config,
                          run.run_dir / "prune", log=lambda s: log("  " + s), progress=run.progress)
    members = [asdict(m) for m in report.members]
    return [m["path"] for m in members if m["path"]], members


def _distill_stage(run: _Run, reached: list[dict[str, Any]],
                   prune_key: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The reached members, with the trained models in place of the pruned ones where the pipeline distills, and
    the trained key (the distill stage key; empty without distilling)."""
    spec = run.spec
    if spec.distill is None or not reached:
        return reached, []
    distill_key = _sha([asdict(spec.distill), prune_key, run.model_key,
                        _content_hash(spec.distill.data) if Path(spec.distill.data).exists() else spec.distill.data])
    trained = run.stage("distill", distill_key,
                        lambda: _distill(spec, reached, run.run_dir / "distill", distill_key, run.log, run.progress))
    return [{**m, "path": trained[Path(m["path"]).name]} for m in reached], [distill_key]


def _export_stage(run: _Run, reached: list[dict[str, Any]], prune_key: str,
                  trained_key: list[str]) -> tuple[dict[str, str], str | None]:
    """The exported ONNX files (name -> path; none without the export section), and the stage key."""
    spec = run.spec
    models = [("dense", spec.model)] + [(Path(m["path"]).name, m["path"]) for m in reached]
    if spec.export is None:
        return {}, None
    export_key = _sha([asdict(spec.export), prune_key, run.model_key, *trained_key])
    return run.stage("export", export_key, lambda: _export_models(run, models)), export_key


def _export_models(run: _Run, models: list[tuple[str, str]]) -> tuple[list[str], dict[str, str]]:
    from ..verify.measure import export_dir

    spec, log, cache = run.spec, run.log, run.onnx_cache
    written = {}
    for name, path in models:
        written[name] = str(export_dir(Path(path), cache, lambda s: log("  " + s), spec.export.atol,
                                       spec.export.rtol))
        if spec.export.with_past and name != "dense":
            from ..export import export_onnx
            from ..models import load_model

            decode = cache / f"{name}-decode.onnx"
            if not decode.with_name(f"{name}-decode_with_past.onnx").exists():
                export_onnx(load_model(path), decode, with_past=True, atol=spec.export.atol,
                            rtol=spec.export.rtol)
    return list(written.values()), written


def _engine_stage(run: _Run, exported: dict[str, str], export_key: str | None) -> dict[str, str]:
    """(engine, optional) TensorRT engines of the exported models (the spec refuses engines without export)."""
    if run.spec.engine is None:
        return {}
    return run.stage("engine", _sha([asdict(run.spec.engine), export_key]),
                     lambda: _engines(run.spec, exported, run.run_dir / "engines", run.log))


def _verify_stage(run: _Run, reached: list[dict[str, Any]], engines: dict[str, str], prune_key: str,
                  trained_key: list[str]) -> dict[str, str]:
    """The verify reports (member name -> path; none without verify or without reached targets)."""
    spec = run.spec
    if spec.verify is None or not reached:
        return {}
    verify_key = _sha([_verify_options(spec), prune_key, run.model_key,
                       asdict(spec.export) if spec.export else None, *trained_key,
                       *([asdict(spec.engine)] if spec.engine else [])])
    return run.stage("verify", verify_key, lambda: _verify_members(run, reached, engines))


def _verify_members(run: _Run, reached: list[dict[str, Any]],
                    engines: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    from ..verify.measure import VerifyOptions, verify

    spec, log, run_workload = run.spec, run.log, run.run_workload
    verify_dir = run.run_dir / "prune" / "verify"
    v = spec.verify
    reports = {}
    for m in reached:
        name = Path(m["path"]).name
        target = _verify_target(spec, m, name, log)
        common = dict(runtime=v.runtime, threads=v.threads, target=target, tolerance=v.tolerance,
                      rounds=v.rounds, atol=spec.export.atol if spec.export else 1e-4,
                      rtol=spec.export.rtol if spec.export else 1e-3, eval_data=v.eval_data)
        if v.generation:  # the run's workload in GenAI, predicted from the run's copy of its tables
            w = _run_workload(run_workload)
            opts = VerifyOptions(batch=w.batch, workload=w.name, workload_tables=str(run_workload),
                                 target_metric=spec.prune.budget or "e2e", **common)
        else:
            opts = VerifyOptions(batch=v.batch, seq=v.seq, table=str(run.table_path), **common)
        baseline, candidate = (engines["dense"], engines[name]) if engines else (spec.model, m["path"])
        rep = verify(baseline, candidate, opts, run.onnx_cache, log=lambda s: log("  " + s))
        out = verify_dir / f"{name}.verify.json"
        rep.save(out)
        reports[name] = str(out)
        sp = rep.speedup
        what = f"{sp.metric} speedup " if v.generation else ""
        log(f"  {name}: measured {what}{sp.measured}x, predicted {sp.predicted}x" if rep.ok
            else f"  {name}: measurement failed: {rep.error}")
    return list(reports.values()), reports


def _report_stage(run: _Run, reached: list[dict[str, Any]]) -> None:
    if run.spec.report and not reached:
        run.log("[report] skipped: no target was reached, so there is no model to report on")
    elif run.spec.report:
        from ..verify.runreport import collect, render_html, render_markdown

        run_dir = run.run_dir
        data = collect(run_dir / "prune")
        (run_dir / "report.html").write_text(render_html(data))
        (run_dir / "report.md").write_text(render_markdown(data))
        run.log(f"[report] {run_dir / 'report.html'}")


def _check_method_table(spec: PipelineSpec, workload_manifest: Path | None) -> None:
    """A given table (profile.table or prune.workload_tables) that the pruning method cannot use (FLOP without
    low-rank entries) is refused before any work; a measured one is checked by the spec (profile.rank_step)."""
    from ..prune.family import METHOD_REGISTRY
    from ..prune.search import LatencyModel

    if workload_manifest is not None:
        latency = _workload_latency(workload_manifest, spec.prune.budget, "prune.workload_tables")
    elif spec.profile.table:
        from ..core.table import LatencyTable

        latency = LatencyModel.of_table(LatencyTable.load(spec.profile.table), "profile.table")
    else:
        return
    METHOD_REGISTRY[spec.prune.method].check(latency)


def _profile_options(spec: PipelineSpec) -> dict[str, Any]:
    """The profile section's part of the stage key; without ``rank_step`` what it was before that option existed."""
    options = asdict(spec.profile)
    if options["rank_step"] is None:
        del options["rank_step"]
    return options


def _prune_options(spec: PipelineSpec) -> dict[str, Any]:
    """The prune section's part of the stage key; without a workload exactly what it was before workloads
    existed (a run directory made then resumes without pruning again); likewise ``flop_steps``."""
    options = asdict(spec.prune)
    for key in ("workload_tables", "budget", "flop_steps"):
        if options[key] is None:
            del options[key]
    return options


def _verify_options(spec: PipelineSpec) -> dict[str, Any]:
    """The verify section's part of the stage key; without ``generation`` exactly what it was before that option
    existed (a run directory made then resumes without verifying again)."""
    options = asdict(spec.verify)
    if not options["generation"]:
        del options["generation"]
    return options


def _run_workload(manifest: Path):
    from ..core.workload import WorkloadTables

    return WorkloadTables.load(manifest).workload


def _workload_latency(path: str | os.PathLike, budget: str | None, source: str):
    from ..core.workload import WorkloadTables
    from ..prune.search import LatencyModel

    return LatencyModel.of_workload(WorkloadTables.load(path), budget or "e2e", source=source)


def _check_workload(spec: PipelineSpec) -> Path | None:
    """The manifest of ``prune.workload_tables`` (None without), refused before any work when it does not load,
    does not describe the model, has no decode step for ``budget: decode``, or when verify would time a prefill
    pass of another length or batch than the workload's prompt (verify predicts it from the prefill table) or of
    other logits (a generating workload's prefill table times the last position's, the plain export every one); with
    ``verify.generation``, when the model is an encoder or verify could not time the workload
    (``_check_generation``)."""
    p = spec.prune
    if p.workload_tables is None:
        return None
    from ..core.arch import arch_from_dir

    arch = arch_from_dir(spec.model)
    generation = spec.verify is not None and spec.verify.generation
    if generation and not arch.is_decoder:
        raise UserError(f"verify.generation generates tokens, and {spec.model} is a {arch.family} encoder",
                        "drop verify.generation (verify then times one prefill pass)")
    manifest = Path(p.workload_tables)
    if manifest.is_dir():
        manifest = manifest / "workload.json"
    latency = _workload_latency(manifest, p.budget, f"prune.workload_tables {manifest}")
    latency.check_arch(arch, spec.model)
    w = latency.tables.workload
    v = spec.verify
    if generation:
        _check_generation(spec, manifest, latency.tables)
    elif v is not None and (v.seq, v.batch) != (w.prompt, w.batch):
        raise UserError(f"verify times a prefill pass of batch {v.batch}, seq {v.seq}, but workload {w.name} has "
                        f"batch {w.batch}, prompt {w.prompt}: its prefill table cannot predict that pass",
                        f"set verify.seq: {w.prompt} and verify.batch: {w.batch}")
    elif v is not None and latency.tables.prefill.fingerprint.logits != "all":
        raise UserError(f"workload {w.name}'s prefill table times the LM head on the last position only (a generation's "
                        "first token, as GenAI runs it), but verify without generation times an exported graph that "
                        "computes every position's logits: the table cannot predict that pass",
                        "set verify.generation: true (time the workload in ONNX Runtime GenAI), or drop verify")
    return manifest


def _check_generation(spec: PipelineSpec, manifest: Path, tables: Any) -> None:
    """``verify.generation``, before any work: a workload that generates tokens, tables of the fp32 deployment (the
    baseline is the dense model, fp32: tables of another precision cannot predict it), and everything
    ``verify --workload`` checks of its inputs (GenAI installed, the context length, the tables), on the dense model."""
    from ..verify.generation import check_inputs
    from ..verify.measure import VerifyOptions

    w = tables.workload
    fix = "profile a generation workload (`ziplm-deploy profile --workload chat`), or drop verify.generation"
    if w.generate < 1:
        raise UserError(f"verify.generation times generated tokens, and workload {w.name} of "
                        f"prune.workload_tables generates none", fix)
    precision = tables.prefill.fingerprint.precision
    if precision != "fp32":
        raise UserError(f"verify.generation times the members against the dense model in fp32, and prune.workload_"
                        f"tables {manifest} are {precision}: they cannot predict the fp32 baseline",
                        "verify the members with `ziplm-deploy verify --workload` against the dense model's "
                        f"{precision} GenAI folder, or drop verify.generation")
    v = spec.verify
    opts = VerifyOptions(runtime=v.runtime, threads=v.threads, rounds=v.rounds, batch=w.batch, workload=w.name,
                         workload_tables=str(manifest), target_metric=spec.prune.budget or "e2e",
                         eval_data=v.eval_data)
    try:
        check_inputs(spec.model, spec.model, opts.validate())
    except UserError as e:
        raise UserError(f"verify.generation: {e.message}", e.hint) from None


def _verify_target(spec: PipelineSpec, member: dict[str, Any], name: str, log: Callable[[str], None]) -> float:
    """What verify judges a member's measured speedup against. Verify times one prefill pass: with a workload
    budget other than TTFT, that is the member's predicted TTFT speedup (its e2e / decode target is predicted).
    With ``verify.generation`` it times the workload, and judges the member's own target on its budget's metric."""
    budget = spec.prune.budget or "e2e"
    prediction = member.get("workload_prediction")
    if spec.verify is not None and spec.verify.generation:
        return member["target"]
    if spec.prune.workload_tables is None or budget == "ttft" or not prediction:
        return member["target"]
    ttft = prediction["speedup"]["ttft"]
    log(f"  {name}: verify times the prefill pass only, so it checks the predicted TTFT speedup {ttft:.2f}x "
        f"(the {budget} target {member['target']:g}x is predicted: {member['predicted_speedup']:.2f}x)")
    return ttft


def _gate(spec: PipelineSpec, verify_reports: dict[str, str], members: list[dict[str, Any]], gate_dir: Path,
          log: Callable[[str], None]) -> dict[str, list[str]]:
    """Judge every verified member; an unreachable target fails its gate too (it has no model to verify).
    Writes JUnit XML and Markdown per member; returns the failed members, each with its failed checks' names."""
    from ..verify.output import junit_xml, markdown
    from ..verify.policy import Check, Policy, Verdict, judge
    from ..verify.report import VerifyReport

    policy = Policy.load(spec.gate.policy)
    verdicts = {name: judge(policy, VerifyReport.load(path), report_name=path) for name, path in verify_reports.items()}
    for m in members:
        if not m["reachable"]:
            name = f"{spec.prune.method}-{m['target']:g}x"
            why = (f"target {m['target']:g}x is unreachable with {spec.prune.method}: the table predicts at most "
                   f"{m['max_speedup']:.2f}x")
            verdicts[name] = Verdict(policy.name, "(none: no model reaches the target)",
                                     [Check("target_reachable", False, m["max_speedup"], f">= {m['target']:g}x", why)])
    gate_dir.mkdir(exist_ok=True)
    failed: dict[str, list[str]] = {}
    for name, verdict in verdicts.items():
        (gate_dir / f"{name}.xml").write_bytes(junit_xml(verdict))
        (gate_dir / f"{name}.md").write_text(markdown(verdict))
        log(f"[gate] {name}: {'PASSED' if verdict.passed else 'FAILED'}"
            + ("" if verdict.passed else f" ({verdict.failures[0].message})"))
        if not verdict.passed:
            failed[name] = [c.name for c in verdict.failures]
    return failed


def _engines(spec: PipelineSpec, exported: dict[str, str], out: Path,
             log: Callable[[str], None]) -> tuple[list[str], dict[str, str]]:
    """One engine (+ metadata sidecar) per exported ONNX file, with one optimisation profile."""
    from ..export.tensorrt import build_engine, onnx_input_ranks, profiles_from_args

    e = spec.engine
    engines: dict[str, str] = {}
    for name, onnx_path in exported.items():
        plan = out / f"{name}.plan"
        log(f"  building {plan} ({e.precision})")
        profiles = profiles_from_args(onnx_input_ranks(onnx_path), e.min, e.opt, e.max)
        build_engine(onnx_path, plan, profiles, precision=e.precision,
                     timing_cache=e.timing_cache, workspace_mb=e.workspace_mb, opt_level=e.opt_level)
        engines[name] = str(plan)
    return list(engines.values()), engines


def _distill(spec: PipelineSpec, members: list[dict[str, Any]], out: Path, key: str, log: Callable[[str], None],
             progress: bool) -> tuple[list[str], dict[str, str]]:
    """Train every pruned member. A trained model saved under the same stage ``key`` (options, data,
    pruned models) is kept, and a member interrupted mid-training continues from its last checkpoint;
    anything left by other options is removed first."""
    import shutil

    from ..core.manifest import MANIFEST_FILE
    from ..distill.losses import LossWeights
    from ..distill.trainer import CHECKPOINTS, TrainConfig, latest_checkpoint, save_student, train, warmup_steps
    from ..models import load_model
    from ..models.tokenizer import load_tokenizer
    from ..prune.data import train_heldout_windows

    d = spec.distill
    weights = LossWeights.for_student(d.teacher, d.kd_weight, d.hidden_weight, d.task_weight, d.temperature)
    config = TrainConfig(steps=d.steps, lr=d.lr, warmup=warmup_steps(d.steps, d.warmup), batch_size=d.batch_size,
                         grad_accum=d.grad_accum, mixed_precision=d.mixed_precision, seed=d.seed,
                         save_every=d.save_every)
    tokenizer = load_tokenizer(spec.model)
    if tokenizer is None:
        raise UserError(f"{spec.model} has no tokenizer files", "save the tokenizer into the model directory")
    windows, held = train_heldout_windows(tokenizer, d.data, d.seq_len, d.eval_windows, d.seed)
    teacher = load_model(spec.model) if weights.needs_teacher else None
    trained: dict[str, str] = {}
    for m in members:
        name = Path(m["path"]).name
        model_dir = out / name
        trained[name] = str(model_dir)
        work = out / f"{name}.train"
        if (model_dir / MANIFEST_FILE).is_file():
            if _stage_key_of(model_dir / MANIFEST_FILE) == key:
                log(f"  {name}: trained earlier, kept")
                continue
            shutil.rmtree(model_dir)
        stale = work / "stage_key"
        if work.exists() and (not stale.is_file() or stale.read_text() != key):
            shutil.rmtree(work)  # checkpoints of other options, data or pruned models
        work.mkdir(parents=True, exist_ok=True)
        for folder in (work, work / CHECKPOINTS):  # half-written checkpoints of a killed run
            sweep_temporaries(folder)
        stale.write_text(key)
        student = load_model(m["path"])
        res = train(student, windows, work, config, weights, teacher=teacher, eval_windows=held,
                    resume=latest_checkpoint(work) is not None, progress=progress)
        metrics = {"steps": res.steps, "train_seconds": res.seconds, "heldout_ppl_before": res.evals[0]["ppl"],
                   "heldout_ppl_after": res.evals[-1]["ppl"],
                   **{k: m[k] for k in ("predicted_speedup", "predicted_ms") if m.get(k) is not None}}
        save_student(student, model_dir, parent=m["path"], method="distill" if weights.needs_teacher else "pretrain",
                     tokenizer=tokenizer, options={"distill": asdict(d), "weights": asdict(weights), "stage_key": key},
                     metrics=metrics)
        log(f"  {name}: held-out perplexity {metrics['heldout_ppl_before']:.2f} -> {metrics['heldout_ppl_after']:.2f} "
            f"after {res.steps} steps")
    return list(trained.values()), trained


def _stage_key_of(manifest: Path) -> str | None:
    """The distill stage key a trained model was saved under; None for a manifest that does not load
    (the model is trained again)."""
    from ..core.manifest import ModelManifest

    try:
        return ModelManifest.load(manifest).options.get("stage_key")
    except UserError:
        return None
