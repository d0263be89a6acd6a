"""``verify``: measure a baseline and a candidate end to end in the deployment runtime.

1. resolve each model: an ONNX file is used as is; a model directory is exported (validated) into a
   cache folder keyed by the directory's content hash; a TensorRT engine is used with its sidecar;
2. time both with the shared protocol (``runtime.measure.time_models``: interleaved shuffled rounds,
   percentiles, the baseline re-timed at the end to detect interference);
3. parity of the candidate in the runtime against an independent reference, per output: PyTorch on the
   model directory (a directory, or an ONNX file whose recorded source directory is here unchanged and
   torch importable); else the export reference stored beside the ONNX file (``FILE.onnx.reference.npz``:
   inputs and PyTorch's outputs, hashed; torch-free); an engine against its source ONNX in unoptimised
   ONNX Runtime CPU. With no reference, parity is recorded as not checkable (``reference: "none"``,
   ``ok: false``): the gate fails closed, a file is never compared with itself;
4. measured speedup vs the target and vs the latency table's prediction (or the manifest's);
5. quality of both whenever it can be measured (``plan_quality``, chosen before any work): on ``eval_data``;
   without it, on held-out windows of the candidate's calibration text (a member directory whose manifest
   records the prune run's data, still readable: windows of the same tokenisation and length the run did
   not draw, ``prune.data.heldout_calibration_windows``). In PyTorch when both are directories deployed
   fp32, else perplexity of both ONNX graphs in ONNX Runtime itself (``verify.ort_quality``; a quantized
   member is measured as shipped). The block records where its figures came from (``data_kind``,
   ``data_source``); when quality cannot or must not be measured (``no_eval``, the calibration data gone,
   no window held out) it says why (``metric`` null, ``note``) and the gate's quality budgets fail closed.
   No quality source at all (no ``eval_data``, no recorded calibration data): ``quality`` is null.

With ``workload`` (``verify --workload chat|PxG``) generation is timed instead, in ONNX Runtime GenAI:
TTFT, ms/token, tokens/s and end to end (``verify.generation``).

A quantized candidate (``ziplm_precision`` metadata, ``export --precision``) is judged for what it is:
parity is top-1 agreement of its logits with the fp32 reference (``parity.tolerance.kind``
"top1-agreement", at least ``min_top1``), never 1e-3 parity against fp32 outputs; a latency table of
another precision than the candidate's is refused before any timing.

Bad input is refused before any timing (``UserError``, exit 2): unreadable or incomplete ONNX files, a
latency table of another model, a corrupted export reference. Anything that fails after the inputs
were validated is recorded in the report (``status: error``), never silently dropped: the gate fails
closed on it.

This module holds the options, the entry point, the checks before any work and the timing (steps 1-2); the
rest lives beside it: ``verify.inputs`` (resolution, ONNX introspection, the export cache), ``verify.parity_run``
(step 3), ``verify.predict`` (step 4, and the latency table's checks) and ``verify.quality`` (step 5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .. import __version__
from ..core.errors import UserError
from ..core.manifest import now_utc
from ..runtime import RUNTIMES
from .inputs import FALLBACK_VOCAB, Resolved, _arch_and_shape, _opset, export_dir, kind_of, onnx_info, resolve
from .parity_run import ParityPlan, _parity, plan_parity
from .predict import _check_table, _predict
from .quality import _heldout_quality, _ort_quality, _quality, not_measured, plan_quality
from .report import Speedup, Timing, VerifyReport

__all__ = ["VERIFY_RUNTIMES", "VerifyOptions", "export_dir", "preflight", "verify"]  # export_dir: for pipeline.run

# deployment runtimes of ONNX files / engines (the registry's, less torch)
VERIFY_RUNTIMES = tuple(name for name, r in RUNTIMES.items() if r.deploys != "torch")


@dataclass(frozen=True)
class VerifyOptions:
    runtime: str = "ort-cpu"
    batch: int = 1
    seq: int = 128
    threads: int = 1
    opt_level: str = "all"
    target: float | None = None
    tolerance: float = 0.05
    table: str | None = None
    atol: float = 1e-4
    rtol: float = 1e-3
    warmup: int = 5
    rounds: int = 50
    seed: int = 0
    retries: int = 1  # extra measurements when interference is detected
    eval_data: str | None = None
    eval_windows: int = 8
    eval_seq: int = 128
    no_eval: bool = False  # skip quality (the report says so); the default measures it whenever it can
    min_top1: float | None = None  # quantized candidates: least top-1 agreement with the fp32 reference; None:
    # the tolerance the file was exported with (metadata ziplm_quality), else runtime.quantize.DEFAULT_MIN_TOP1
    workload: str | None = None  # generation workload (chat, PxG): time TTFT / decode in GenAI (verify.generation)
    workload_tables: str | None = None  # with workload: the tables' prediction and its error
    target_metric: str = "e2e"  # with workload: the speedup ``target`` judges: e2e | ttft | decode (the metric a
    # member was searched for, prune --budget)

    def validate(self) -> "VerifyOptions":
        if self.runtime not in VERIFY_RUNTIMES:
            raise UserError(f"unknown runtime {self.runtime!r} for verify", f"choose one of: {', '.join(VERIFY_RUNTIMES)}")
        for name in ("batch", "seq", "rounds", "eval_windows", "eval_seq"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.threads < 0 or self.warmup < 0 or self.retries < 0:
            raise UserError("--threads, --warmup and --retries must be >= 0")
        if self.target is not None and not (math.isfinite(self.target) and self.target > 0):
            raise UserError(f"--target must be a finite number > 0, got {self.target}")
        if not 0 <= self.tolerance < 1:
            raise UserError(f"--tolerance is a fraction in [0, 1), got {self.tolerance}")
        if not (math.isfinite(self.atol) and math.isfinite(self.rtol) and self.atol >= 0 and self.rtol >= 0):
            raise UserError(f"--atol and --rtol must be finite numbers >= 0, got {self.atol}, {self.rtol}")
        if self.min_top1 is not None and not 0 <= self.min_top1 <= 1:
            raise UserError(f"the top-1 agreement tolerance is a fraction in [0, 1], got {self.min_top1}")
        if self.no_eval and self.eval_data:
            raise UserError("--no-eval and --eval-data contradict each other", "drop one of them")
        if self.workload_tables is not None and self.workload is None:
            raise UserError("--workload-tables needs --workload", "pass --workload W (the tables' workload)")
        if self.target_metric not in ("e2e", "ttft", "decode"):
            raise UserError(f"unknown target metric {self.target_metric!r}", "choose one of: e2e, ttft, decode")
        if self.target_metric != "e2e" and self.workload is None:
            raise UserError(f"target metric {self.target_metric} needs a workload (one prefill pass has one speedup)",
                            "pass a workload, or judge e2e")
        return self


def verify(baseline: str, candidate: str, opts: VerifyOptions, cache: Path,
           log: Callable[[str], None] = print) -> VerifyReport:
    """Measure, compare and predict; the returned report carries ``status: error`` if a step failed.

    Bad input raises ``UserError`` before any work (nothing exported, nothing timed)."""
    from ..runtime import get_backend
    from ..runtime.timing import Protocol

    opts.validate()
    if opts.workload is not None:  # generation: TTFT / decode / end to end in ONNX Runtime GenAI
        from .generation import verify_workload

        return verify_workload(baseline, candidate, opts, cache, log)
    paths = {"baseline": baseline, "candidate": candidate}
    kinds = {role: kind_of(p, role) for role, p in paths.items()}
    for role, kind in kinds.items():
        if kind == "engine" and opts.runtime != "trt":
            raise UserError(f"--{role} {paths[role]} is a TensorRT engine", "use --runtime trt for engines")
    if opts.eval_data and "engine" in kinds.values():
        raise UserError("--eval-data measures directories or ONNX files, not TensorRT engines",
                        "drop --eval-data, or verify the ONNX files")
    plan = preflight(paths, kinds, opts)
    quality_plan = plan_quality(paths, kinds, opts)
    protocol = Protocol(warmup=opts.warmup, rounds=opts.rounds, seed=opts.seed)
    report = VerifyReport(
        producer=f"ziplm-deploy {__version__}", created=now_utc(),
        runtime={"name": opts.runtime, "threads": opts.threads, "opt_level": opts.opt_level},
        inputs={"batch": opts.batch, "seq": opts.seq}, protocol=protocol.to_json(),
        baseline={"source": baseline, "kind": kinds["baseline"], "latency": None},
        candidate={"source": candidate, "kind": kinds["candidate"], "latency": None},
    )
    backend = get_backend(opts.runtime, threads=opts.threads, opt_level=opts.opt_level)
    if plan.reference == "none":
        log(f"warning: parity cannot be checked: {plan.note}")
    try:
        models = {role: resolve(p, role, opts.runtime, cache, log, opts) for role, p in paths.items()}
        for role, r in models.items():
            setattr(report, role, r.describe())
        _measure(report, backend, models, opts, protocol, log)
        _predict(report, models, opts)
        report.parity = _parity(backend, models["candidate"], plan, opts, log)
        # PyTorch on directories deployed fp32; a quantized deployment is measured as shipped, in ORT
        both_fp32_dirs = all(r.kind == "directory" and r.precision == "fp32" for r in models.values())
        if quality_plan.kind == "eval-data":
            report.quality = _quality(models, opts, log) if both_fp32_dirs else _ort_quality(models, opts, log)
        elif quality_plan.kind == "heldout-calibration":
            report.quality = _heldout_quality(models, quality_plan, opts, both_fp32_dirs, log)
        elif quality_plan.kind == "skip":
            report.quality = not_measured(quality_plan.note, log)
    except UserError as e:
        log(f"error: {e}")
        report.fail(str(e))
    return report


# --- checks before any work -------------------------------------------------------------------------
def preflight(paths: dict[str, str], kinds: dict[str, str], opts: VerifyOptions) -> ParityPlan:
    """Refuse bad input before any export or timing: unreadable or incomplete ONNX files, model
    directories without a readable config, a latency table of another model, a corrupted export
    reference. Returns the candidate's parity reference."""
    from ..core.arch import arch_from_dir

    for role, kind in kinds.items():
        if kind == "onnx":
            onnx_info(Path(paths[role]))
        elif kind == "directory":
            arch_from_dir(paths[role])
    if opts.table:
        _check_table(opts.table, paths["candidate"], kinds["candidate"])
    return plan_parity(paths["candidate"], kinds["candidate"])


# --- timing ------------------------------------------------------------------------------------------
def _measure(report: VerifyReport, backend: Any, models: dict[str, Resolved], opts: VerifyOptions, protocol: Any,
             log: Callable[[str], None]) -> None:
    from ..runtime.fingerprint import fingerprint
    from ..runtime.measure import drift, time_models

    arch, _ = _arch_and_shape(models["candidate"])
    vocab = arch.vocab if arch else FALLBACK_VOCAB
    dims = {"batch": opts.batch, "seq": opts.seq, "past": 0, "total": opts.seq}
    log(f"timing baseline and candidate in {opts.runtime} (batch {opts.batch}, seq {opts.seq}, "
        f"{opts.threads} thread(s), {protocol.rounds} interleaved rounds)")
    files = {"baseline": models["baseline"].file, "candidate": models["candidate"].file}
    st = protocol.statistic
    for attempt in range(1, opts.retries + 2):  # re-measure when the re-timed baseline moved (interference)
        stats = time_models(backend, files, dims, vocab, protocol)
        moved = drift(stats["baseline"], stats["baseline:recheck"], st)
        if abs(moved) <= protocol.max_drift or attempt > opts.retries:
            break
        log(f"the baseline moved by {moved:+.1%} during timing (machine busy): measuring again")
    report.baseline["latency"] = stats["baseline"].to_json()
    report.candidate["latency"] = stats["candidate"].to_json()
    report.timing = Timing(statistic=st, baseline_recheck=stats["baseline:recheck"].to_json(), drift=round(moved, 5),
                           max_drift=protocol.max_drift, interference=abs(moved) > protocol.max_drift, attempts=attempt)
    dtype = "float16" if getattr(backend, "fp16", False) else "float32"
    report.fingerprint = fingerprint(backend, dtype=dtype, batch=opts.batch, seq=opts.seq, mode="prefill", kv_len=0,
                                     opset=_opset(models["candidate"].onnx),
                                     precision=models["candidate"].precision).to_json()
    base, cand = stats["baseline"].get(st), stats["candidate"].get(st)
    measured = base / cand
    target = opts.target
    manifest = models["candidate"].manifest or {}
    if target is None:
        target = (manifest.get("metrics") or {}).get("target_speedup")
    report.speedup = Speedup(
        statistic=st, baseline_ms=base, candidate_ms=cand, measured=round(measured, 5), target=target,
        tolerance=opts.tolerance,
        target_source="option" if opts.target is not None else ("manifest" if target else None),
        meets_target=None if target is None else bool(measured >= target * (1 - opts.tolerance)),
        target_deviation=None if target is None else round(measured / target - 1, 5))
