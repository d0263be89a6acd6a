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
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .. import __version__
from ..core.errors import UserError
from ..core.manifest import MANIFEST_FILE, file_sha256, now_utc
from ..core.parity import ExportReference, load_reference, reference_path
from ..runtime import RUNTIMES
from .report import VerifyReport

ENGINE_SUFFIXES = (".plan", ".engine")
# deployment runtimes of ONNX files / engines (the registry's, less torch)
VERIFY_RUNTIMES = tuple(name for name, r in RUNTIMES.items() if r.deploys != "torch")
FALLBACK_VOCAB = 16  # token ids for graphs without ziplm metadata: small enough for any vocabulary
PLAIN_GRAPHS = ("encoder", "decoder", "prefill")  # graphs PyTorch can be run on without a KV cache


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


@dataclass
class Resolved:
    role: str
    source: str
    kind: str  # "directory" | "onnx" | "engine"
    file: Path | None = None  # what the runtime loads
    onnx: Path | None = None  # the ONNX file behind it (parity reference, metadata)
    metadata: dict[str, str] | None = None
    manifest: dict[str, Any] | None = None

    @property
    def precision(self) -> str:
        """The precision label of the graph (directories are exported in fp32)."""
        from ..runtime.quantize import precision_of_metadata

        return precision_of_metadata(self.metadata or {}, self.source).label

    def describe(self) -> dict[str, Any]:
        shape = json.loads(self.metadata["ziplm_shape"]) if self.metadata and "ziplm_shape" in self.metadata else None
        out: dict[str, Any] = {"source": self.source, "kind": self.kind, "file": str(self.file) if self.file else None,
                               "sha256": None, "bytes": None, "params": None, "shape": shape, "latency": None,
                               "manifest": None}
        if self.file and self.file.is_file():
            out["sha256"], out["bytes"] = file_sha256(self.file), self.file.stat().st_size
        if self.onnx and self.onnx.is_file():
            out["params"] = onnx_params(self.onnx)
        out["precision"] = self.precision
        if self.manifest:
            out["manifest"] = {k: self.manifest.get(k) for k in ("method", "parent", "metrics", "table_sha256")
                               if k in self.manifest}
        return out


def kind_of(path: str | os.PathLike, role: str) -> str:
    p = Path(path)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise UserError(f"--{role} {p} is a folder without config.json", "pass a model directory or an ONNX file")
        return "directory"
    if not p.is_file():
        raise UserError(f"--{role} not found: {p}", "pass a model directory, an ONNX file or a TensorRT engine")
    if p.suffix == ".onnx":
        return "onnx"
    if p.suffix in ENGINE_SUFFIXES:
        return "engine"
    raise UserError(f"--{role} {p}: unknown kind of file", "expected a model directory, FILE.onnx or FILE.plan")


@dataclass(frozen=True)
class OnnxInfo:
    metadata: dict[str, str]
    params: int
    opset: int
    inputs: tuple[str, ...]


@functools.lru_cache(maxsize=16)
def _onnx_info(path: str, mtime_ns: int, size: int) -> OnnxInfo:
    """What verify reads of an ONNX file, read once (weights stay on disk when external); an empty,
    truncated or garbage file is a ``UserError``."""
    import onnx

    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception as e:  # onnx raises DecodeError & co for a broken file
        raise UserError(f"{path} is not a readable ONNX file: {str(e).splitlines()[0] if str(e) else e!r}",
                        "re-export it, or copy it again (the file may be truncated)") from None
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    missing = [what for what, present in (("an IR version", proto.ir_version > 0), ("an opset", opset > 0),
                                          ("graph nodes", len(proto.graph.node) > 0),
                                          ("graph outputs", len(proto.graph.output) > 0)) if not present]
    if missing:
        raise UserError(f"{path} is not a complete ONNX model (no {', no '.join(missing)}; {size} bytes)",
                        "re-export it, or copy it again (the file may be empty or truncated)")
    params = 0
    for init in proto.graph.initializer:
        n = 1
        for d in init.dims:
            n *= int(d)
        params += n
    feeds = {i.name for i in proto.graph.initializer}
    inputs = tuple(i.name for i in proto.graph.input if i.name not in feeds)
    return OnnxInfo({p.key: p.value for p in proto.metadata_props}, params, opset, inputs)


def onnx_info(path: Path) -> OnnxInfo:
    st = Path(path).stat()
    return _onnx_info(str(path), st.st_mtime_ns, st.st_size)


def onnx_metadata(path: Path) -> dict[str, str]:
    return dict(onnx_info(Path(path)).metadata)


def onnx_params(path: Path) -> int:
    return onnx_info(Path(path)).params


def dir_digest(model_dir: str | os.PathLike) -> str:
    """Content hash of a model directory's config and weights (the export cache key, the source check)."""
    files = sorted(f for f in Path(model_dir).iterdir()
                   if f.is_file() and (f.name == "config.json" or f.suffix in (".safetensors", ".bin")))
    return _dir_digest(tuple((str(f), st.st_mtime_ns, st.st_size) for f in files for st in (f.stat(),)))


@functools.lru_cache(maxsize=32)
def _dir_digest(files: tuple[tuple[str, int, int], ...]) -> str:
    h = hashlib.sha256()
    for name, _, _ in files:
        h.update(Path(name).name.encode())
        h.update(file_sha256(name).encode())
    return h.hexdigest()


def export_dir(model_dir: Path, cache: Path, log: Callable[[str], None], atol: float, rtol: float) -> Path:
    """The validated ONNX export of a model directory, reused from ``cache`` when its content is unchanged;
    in the precision the model was pruned for (its manifest: a member of an int8 search is timed int8)."""
    from ..runtime.quantize import deployed_precision

    precision = deployed_precision(model_dir)
    digest = dir_digest(model_dir)
    tag = "" if not precision.quantized else "-" + precision.label.replace("/", "-")
    out = cache / f"{model_dir.name}-{digest[:16]}{tag}.onnx"
    if out.is_file():
        log(f"reusing export {out}")
        return out
    from ..export import export_onnx  # torch: only for directories
    from ..models import load_model

    if precision.quantized:
        from ..export.quantize import export_quantized, static_calibration_windows
        from ..runtime.quantize import DEFAULT_MIN_TOP1

        # int8-static: calibrated on the text the member was pruned on (its manifest), as `export` does
        calibration = static_calibration_windows(model_dir) if precision.static else None
        log(f"exporting {model_dir} to {out} ({precision.label}: the precision it was pruned for; PyTorch, validated)")
        export_quantized(load_model(model_dir), out, precision, atol=atol, rtol=max(rtol, 1e-3), source=model_dir,
                         min_top1=DEFAULT_MIN_TOP1, calibration=calibration)
        return out
    log(f"exporting {model_dir} to {out} (PyTorch, validated)")
    export_onnx(load_model(model_dir), out, atol=atol, rtol=max(rtol, 1e-3), source=model_dir,
                source_sha256=digest)
    return out


def resolve(path: str, role: str, runtime: str, cache: Path, log: Callable[[str], None],
            opts: VerifyOptions) -> Resolved:
    kind = kind_of(path, role)
    p = Path(path)
    if kind == "engine":
        if runtime != "trt":
            raise UserError(f"--{role} {p} is a TensorRT engine", "use --runtime trt for engines")
        from ..runtime.tensorrt import load_engine_metadata

        meta = load_engine_metadata(p)
        src = Path(meta.get("source_onnx") or "")
        onnx_file = src if src.is_file() and file_sha256(src) == meta["source_onnx_sha256"] else None
        return Resolved(role, str(p), kind, p, onnx_file, dict(meta.get("onnx_metadata") or {}), None)
    if kind == "onnx":
        return Resolved(role, str(p), kind, p, p, onnx_metadata(p), None)
    manifest = None
    if (p / MANIFEST_FILE).is_file():
        manifest = json.loads((p / MANIFEST_FILE).read_text())
    onnx_file = export_dir(p, cache, log, opts.atol, opts.rtol)
    return Resolved(role, str(p), kind, onnx_file, onnx_file, onnx_metadata(onnx_file), manifest)


def _arch_and_shape(r: Resolved) -> tuple[Any, Any]:
    return _metadata_arch_and_shape(r.metadata or {}, r.source)


def _metadata_arch_and_shape(meta: dict[str, str], source: str) -> tuple[Any, Any]:
    from ..core.arch import arch_from_config
    from ..core.shape import ModelShape

    if "ziplm_config" not in meta or "ziplm_shape" not in meta:
        return None, None
    try:
        config, shape = json.loads(meta["ziplm_config"]), json.loads(meta["ziplm_shape"])
    except json.JSONDecodeError as e:
        raise UserError(f"{source}: ziplm metadata is not valid JSON ({e})", "re-export it") from None
    return (arch_from_config(config, source=f"{source} metadata"),
            ModelShape.from_json(shape, source=f"{source} metadata"))


def _opset(path: Path | None) -> int:
    return onnx_info(path).opset if path is not None else 0


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
@dataclass(frozen=True)
class ParityPlan:
    """The candidate's parity reference, chosen (and its files checked) before timing."""

    reference: str  # "pytorch" | "export-reference" | "onnxruntime-cpu-unoptimised" | "none"
    path: str | None = None  # model directory / reference file / source ONNX
    sha256: str | None = None  # its content hash
    note: str = ""  # why this reference (why not PyTorch), or why none
    stored: ExportReference | None = None


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


def _check_table(table_path: str, candidate: str, kind: str) -> None:
    """The table must describe the candidate's dense architecture (and fit its recorded shape)."""
    from ..core.arch import arch_from_dir
    from ..core.table import LatencyTable

    table = LatencyTable.load(table_path)
    meta: dict[str, str] = {}
    if kind == "directory":
        from ..core.manifest import pruned_precision
        from ..runtime.quantize import PRECISION_METADATA

        arch, shape = arch_from_dir(candidate), None
        meta = {PRECISION_METADATA: pruned_precision(candidate)}  # what export_dir will export it as
    else:
        if kind == "engine":
            from ..runtime.tensorrt import load_engine_metadata

            meta = dict(load_engine_metadata(candidate).get("onnx_metadata") or {})
        else:
            meta = onnx_metadata(Path(candidate))
        arch, shape = _metadata_arch_and_shape(meta, candidate)
        if arch is None:
            raise UserError(f"{candidate} carries no ziplm_shape/ziplm_config metadata",
                            "export it with `ziplm-deploy export`, or drop --table")
    table.check_arch(arch, candidate)
    if shape is not None:
        shape.validate(table.arch, source=f"{candidate} metadata")
    _check_table_precision(table, meta, candidate)


def _check_table_precision(table: Any, meta: dict[str, str], candidate: str) -> None:
    """A table predicts the precision it was measured in: refuse a candidate of another one."""
    from ..runtime.quantize import Precision, precision_of_metadata

    precision = precision_of_metadata(meta, candidate)
    mismatch = table.fingerprint.precision_mismatch(precision.label, f"--candidate {candidate}")
    if mismatch:
        table_flags = Precision.parse(table.fingerprint.precision).cli_flags
        raise UserError(mismatch, f"pass a table profiled with `profile {precision.cli_flags}`, or a candidate "
                                  f"exported with `export {table_flags}`")


def plan_parity(candidate: str, kind: str) -> ParityPlan:
    """PyTorch when the model (or the ONNX file's recorded, unchanged source directory) is here with torch;
    else the export reference beside the ONNX file (its hash checked: a mismatch is a ``UserError``); else none."""
    p = Path(candidate)
    if kind == "engine":
        return ParityPlan("onnxruntime-cpu-unoptimised", note="the engine vs its source ONNX file in ONNX Runtime CPU")
    if kind == "directory":
        return ParityPlan("pytorch", str(p), dir_digest(p), "the candidate directory in PyTorch")
    info = onnx_info(p)
    source, why_not = _torch_source(info.metadata)
    if source is not None:
        return ParityPlan("pytorch", str(source), info.metadata["ziplm_source_sha256"],
                          "the source model directory recorded at export, unchanged since")
    ref_file = reference_path(p)
    if not ref_file.is_file():
        return ParityPlan("none", note=f"no export reference {ref_file.name} beside {p} and {why_not}")
    stored = load_reference(ref_file)
    if set(stored.inputs) != set(info.inputs):
        raise UserError(f"export reference {ref_file} was written for inputs {sorted(stored.inputs)}, "
                        f"but {p} takes {sorted(info.inputs)}",
                        "keep each FILE.onnx with its own FILE.onnx.reference.npz, or re-export")
    return ParityPlan("export-reference", str(ref_file), file_sha256(ref_file), why_not, stored)


@dataclass(frozen=True)
class QualityPlan:
    """Where verify's quality figures come from, chosen (and the manifest read) before any work."""

    kind: str  # "eval-data" | "heldout-calibration" | "skip" (not measured: ``note`` says why) | "none" (no source)
    data: str | None = None  # --eval-data, or the calibration data recorded in the candidate's manifest
    seq: int = 0  # heldout-calibration: the prune run's window length,
    calibration_windows: int = 0  # the number of windows it drew
    seed: int = 0  # and its seed
    note: str = ""  # skip: the report's quality.note


def plan_quality(paths: dict[str, str], kinds: dict[str, str], opts: VerifyOptions) -> QualityPlan:
    """``--no-eval``: skip; ``--eval-data``: that data; else held-out windows of the calibration text a pruned
    member's manifest records (``options``: the prune run's ``data``, ``seq_len``, ``windows``, ``seed``) when
    it can be measured, a skip saying why when it cannot, and "none" for a candidate that records no calibration
    data (an ONNX file, a directory without a manifest or made by another method). A manifest that records
    calibration data with unusable options is refused (``UserError``)."""
    if opts.no_eval:
        return QualityPlan("skip", note="quality not measured: --no-eval")
    if opts.eval_data:
        return QualityPlan("eval-data", str(opts.eval_data))
    manifest_file = Path(paths["candidate"]) / MANIFEST_FILE
    if kinds["candidate"] != "directory" or not manifest_file.is_file():
        return QualityPlan("none")
    from ..core.arch import arch_from_dir
    from ..core.manifest import ModelManifest
    from ..prune.data import BUILTIN_TEXTS
    from ..prune.family import METHODS

    manifest = ModelManifest.load(manifest_file)
    options = manifest.options
    data = options.get("data")
    if manifest.method not in METHODS or data is None:  # only prune runs draw calibration_windows of their data
        return QualityPlan("none")
    values = {k: options.get(k) for k in ("seq_len", "windows", "seed")}
    bad = [f"options.{k} is {v!r}" for k, v in values.items()
           if isinstance(v, bool) or not isinstance(v, int) or v < (0 if k == "seed" else 1)]
    if not isinstance(data, str) or not data:
        bad.insert(0, f"options.data is {data!r}")
    if bad:
        raise UserError(f"{manifest_file}: {', '.join(bad)}: not the calibration of a prune run",
                        "regenerate the member with `ziplm-deploy prune`, or pass --eval-data or --no-eval")
    if "engine" in kinds.values():
        return QualityPlan("skip", note="quality not measured: the baseline is a TensorRT engine "
                                        "(verify the ONNX files for quality)")
    if not arch_from_dir(paths["candidate"]).is_decoder:
        return QualityPlan("skip", note=f"quality not measured: held-out calibration text measures perplexity, and "
                                        f"{paths['candidate']} is not a decoder (pass --eval-data with labelled text)")
    if data not in BUILTIN_TEXTS and not Path(data).exists():
        return QualityPlan("skip", data, note=f"quality not measured: the calibration data {data} recorded in "
                                              f"{manifest_file} is gone (pass --eval-data)")
    return QualityPlan("heldout-calibration", data, values["seq_len"], values["windows"], values["seed"])


def _torch_source(meta: dict[str, str]) -> tuple[Path | None, str]:
    """(the source directory to run in PyTorch, or None and why not)."""
    src = meta.get("ziplm_source")
    if not src:
        return None, "no source model directory recorded in its metadata"
    if meta.get("ziplm_graph") not in PLAIN_GRAPHS:
        return None, f"its {meta.get('ziplm_graph')!r} graph needs a KV cache PyTorch is not run with"
    if not (Path(src) / "config.json").is_file():
        return None, f"its source directory {src} is not here"
    try:
        import torch  # noqa: F401
    except ImportError:
        return None, "torch is not installed"
    if dir_digest(src) != meta.get("ziplm_source_sha256"):
        return None, f"its source directory {src} changed since export"
    return Path(src), ""


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
    report.timing = {"statistic": st, "baseline_recheck": stats["baseline:recheck"].to_json(), "drift": round(moved, 5),
                     "max_drift": protocol.max_drift, "interference": abs(moved) > protocol.max_drift,
                     "attempts": attempt}
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
    report.speedup = {"statistic": st, "baseline_ms": base, "candidate_ms": cand, "measured": round(measured, 5),
                      "target": target, "tolerance": opts.tolerance,
                      "target_source": "option" if opts.target is not None else ("manifest" if target else None),
                      "meets_target": None if target is None else bool(measured >= target * (1 - opts.tolerance)),
                      "target_deviation": None if target is None else round(measured / target - 1, 5),
                      "predicted": None, "predicted_ms": None, "prediction_error": None,
                      "latency_prediction_error": None, "prediction_source": None, "table": None}


def _predict(report: VerifyReport, models: dict[str, Resolved], opts: VerifyOptions) -> None:
    """Table prediction for the candidate's shape (``--table``), else the manifest's prediction."""
    sp = report.speedup
    measured = sp["measured"]
    if opts.table:
        from ..core.fingerprint import DeviceFingerprint
        from ..core.table import LatencyTable

        table = LatencyTable.load(opts.table)
        arch, shape = _arch_and_shape(models["candidate"])
        if shape is None:
            raise UserError(f"{models['candidate'].source} carries no ziplm_shape/ziplm_config metadata",
                            "export it with `ziplm-deploy export`, or drop --table")
        table.check_arch(arch, models["candidate"].source)
        predicted_ms = table.predict(shape)
        base_arch, base_shape = _arch_and_shape(models["baseline"])
        if base_shape is None or len(base_shape.layers) != len(shape.layers):
            base_shape = table.dense_shape()  # the baseline is the dense model the table describes
        else:
            table.check_arch(base_arch, models["baseline"].source)
        base_ms = table.predict(base_shape)
        if models["baseline"].precision == "fp32" != table.fingerprint.precision and base_shape == table.dense_shape():
            base_ms = table.speedup_baseline_ms()  # the fp32 dense model, timed in the table's own run
        predicted = base_ms / predicted_ms
        mine = DeviceFingerprint.from_json(report.fingerprint, "measurement") if report.fingerprint else None
        diffs = table.fingerprint.differences(mine) if mine else []
        sp.update(predicted=round(predicted, 5), predicted_ms=round(predicted_ms, 5), prediction_source="table",
                  predicted_baseline_ms=round(base_ms, 5),
                  latency_prediction_error=round(sp["candidate_ms"] / predicted_ms - 1, 5),
                  table={"path": str(opts.table), "sha256": file_sha256(opts.table), "fingerprint_differences": diffs})
    else:
        manifest = models["candidate"].manifest or {}
        metrics = manifest.get("metrics") or {}
        options = manifest.get("options") or {}
        # a member searched on a workload predicts its budgeted metric (end to end, decode...), which one prefill
        # pass does not measure: no prediction here (pass --table, or verify --workload for those figures)
        workload_budget = options.get("budget") if isinstance(options, dict) and options.get("workload") else None
        if metrics.get("predicted_speedup") and workload_budget in (None, "ttft"):
            sp.update(predicted=metrics["predicted_speedup"], predicted_ms=metrics.get("predicted_ms"),
                      prediction_source="manifest")
            if metrics.get("predicted_ms"):
                sp["latency_prediction_error"] = round(sp["candidate_ms"] / metrics["predicted_ms"] - 1, 5)
    if sp["predicted"]:
        sp["prediction_error"] = round(measured / sp["predicted"] - 1, 5)


def _parity(backend: Any, cand: Resolved, plan: ParityPlan, opts: VerifyOptions,
            log: Callable[[str], None]) -> dict[str, Any]:
    """Per-output parity of the candidate in the runtime against ``plan``'s reference (never against itself);
    a quantized candidate against an fp32 reference is judged by top-1 agreement of its logits."""
    from .parity import compare, compare_top1

    extra: dict[str, Any] = {"file_matches_export": None}
    if plan.reference == "none":
        return _parity_block(plan, opts, [], extra)
    if plan.reference == "export-reference":
        log(f"parity: candidate in the runtime vs the export reference {plan.path}")
        with backend.load(cand.file) as session:
            got = session.run(plan.stored.inputs)
        want = plan.stored.outputs
        extra["file_matches_export"] = file_sha256(cand.file) == plan.stored.onnx_sha256
        if not extra["file_matches_export"]:
            log(f"warning: {cand.file} changed since export (its sha256 differs from the reference's)")
    else:
        got, want, plan = _run_against(backend, cand, plan, opts, log)
    top1 = cand.precision != "fp32" and plan.reference in ("pytorch", "export-reference")
    if top1:
        min_top1, source = _min_top1(cand, opts)
        log(f"parity: the candidate is {cand.precision}: judged by top-1 agreement of its logits with the fp32 "
            f"reference (at least {min_top1:.0%}, {source}), not by 1e-3 parity")
        rows = compare_top1(got, want, min_top1)
        if not rows:
            raise UserError(f"parity: a quantized candidate is judged by top-1 agreement of its logits, but the "
                            f"reference has no logits (outputs: {', '.join(want)})", "verify a causal LM or classifier")
    else:
        rows = compare(got, want, opts.atol, opts.rtol)
    if not rows:
        raise UserError("parity: the reference has no outputs")
    extra["tolerance"] = ({"kind": "top1-agreement", "min_top1_agreement": min_top1, "source": source,
                           "candidate": cand.precision, "reference_precision": "fp32",
                           "judged": [r["name"] for r in rows]} if top1
                          else {"kind": "max-abs", "atol": opts.atol, "rtol": opts.rtol})
    return _parity_block(plan, opts, rows, extra)


def _min_top1(cand: Resolved, opts: VerifyOptions) -> tuple[float, str]:
    """The top-1 tolerance of a quantized candidate and where it comes from."""
    from ..core.checks import number
    from ..runtime.quantize import DEFAULT_MIN_TOP1, quality_of_metadata

    if opts.min_top1 is not None:
        return opts.min_top1, "option"
    record = quality_of_metadata(cand.metadata or {}, cand.source)
    if record is None or "min_top1_agreement" not in record:
        return DEFAULT_MIN_TOP1, "default"
    value = number(record["min_top1_agreement"], cand.source, "metadata ziplm_quality.min_top1_agreement", lo=0.0, hi=1.0)
    return value, "the tolerance it was exported with"


def _run_against(backend: Any, cand: Resolved, plan: ParityPlan, opts: VerifyOptions,
                 log: Callable[[str], None]) -> tuple[dict, dict, ParityPlan]:
    """Synthetic inputs of the verify shape through the candidate and through PyTorch / the source ONNX."""
    from ..runtime import get_backend
    from ..runtime.feeds import synthetic_feeds
    from .parity import torch_outputs

    arch, _ = _arch_and_shape(cand)
    dims = {"batch": opts.batch, "seq": opts.seq, "past": 0, "total": opts.seq}
    with backend.load(cand.file) as session:
        feeds = synthetic_feeds(session.inputs, dims, arch.vocab if arch else FALLBACK_VOCAB, seed=opts.seed + 1)
        got = session.run(feeds)
    if plan.reference == "pytorch":
        log(f"parity: candidate in the runtime vs PyTorch on {plan.path}")
        return got, torch_outputs(plan.path, feeds), plan
    if cand.onnx is None:
        raise UserError(f"no source ONNX for {cand.source}: parity cannot be checked",
                        "keep the engine's source ONNX (recorded in its sidecar) next to it")
    log("parity: candidate in the runtime vs ONNX Runtime CPU without graph optimisations")
    with get_backend("ort-cpu", threads=1, opt_level="disabled").load(cand.onnx) as ref:
        want = ref.run(feeds)
    return got, want, ParityPlan(plan.reference, str(cand.onnx), file_sha256(cand.onnx), plan.note)


def _parity_block(plan: ParityPlan, opts: VerifyOptions, rows: list[dict[str, Any]],
                  extra: dict[str, Any]) -> dict[str, Any]:
    return {"reference": plan.reference, "reference_path": plan.path, "reference_sha256": plan.sha256,
            "note": plan.note, "atol": opts.atol, "rtol": opts.rtol, "ok": bool(rows) and all(r["ok"] for r in rows),
            "outputs": rows, **extra}


def _quality(models: dict[str, Resolved], opts: VerifyOptions, log: Callable[[str], None]) -> dict[str, Any]:
    """Perplexity (causal LM) or accuracy (classifier) of both directories on ``eval_data`` (PyTorch)."""
    from ..core.arch import arch_from_dir
    from ..models import load_model
    from ..models.tokenizer import load_tokenizer
    from ..core.labelled import read_labelled
    from ..prune.evaluate import accuracy, perplexity

    values, metric = {}, None
    for role, r in models.items():
        if r.kind != "directory":
            raise UserError(f"--eval-data needs both models as directories; --{role} is {r.kind}")
        tokenizer = load_tokenizer(r.source)
        if tokenizer is None:
            raise UserError(f"{r.source} has no tokenizer files", "--eval-data needs the tokenizer in the directory")
        model = load_model(r.source)
        log(f"quality of the {role} on {opts.eval_data}")
        if arch_from_dir(r.source).is_decoder:
            from ..prune.data import read_texts, token_windows

            windows = token_windows(tokenizer, read_texts(opts.eval_data), opts.eval_seq)[: opts.eval_windows]
            metric, values[role] = "perplexity", perplexity(model, windows, progress=False)
        else:
            texts, labels = read_labelled(opts.eval_data)
            metric, values[role] = "accuracy", accuracy(model, tokenizer, texts, labels)
    return {"metric": metric, "baseline": round(values["baseline"], 6), "candidate": round(values["candidate"], 6),
            "data": str(opts.eval_data), "source": "eval", **_eval_data_origin(opts)}


def _eval_data_origin(opts: VerifyOptions) -> dict[str, str]:
    return {"data_kind": "eval-data", "data_source": f"--eval-data {opts.eval_data}"}


def not_measured(note: str, log: Callable[[str], None]) -> dict[str, Any]:
    """The quality block of a verify that did not measure quality: why (``note``), no figures (the gate's
    quality budgets fail closed on it)."""
    log(note)
    return {"metric": None, "baseline": None, "candidate": None, "note": note}


def _heldout_quality(models: dict[str, Resolved], plan: QualityPlan, opts: VerifyOptions, in_torch: bool,
                     log: Callable[[str], None]) -> dict[str, Any]:
    """Perplexity of both on up to ``eval_windows`` held-out windows of the candidate's calibration text, cut
    with its tokenizer (the prune run's) as the run cut it: in PyTorch (``in_torch``) or in ONNX Runtime.
    Windows that cannot be had (data gone or changed, none held out, no tokenizer) leave it not measured."""
    from ..models.tokenizer import load_tokenizer
    from ..prune.data import heldout_calibration_windows

    cand = models["candidate"]
    tokenizer = load_tokenizer(cand.source)
    if tokenizer is None:
        return not_measured(f"quality not measured: {cand.source} has no tokenizer files to cut its calibration "
                            f"text with (pass --eval-data)", log)
    try:
        windows = heldout_calibration_windows(tokenizer, plan.data, plan.seq, plan.calibration_windows, plan.seed,
                                              opts.eval_windows)
    except UserError as e:
        return not_measured(f"quality not measured: {e.message}", log)
    arch, _ = _arch_and_shape(models["baseline"])
    if arch is not None and int(windows.max()) >= arch.vocab:
        return not_measured(f"quality not measured: the candidate's tokenizer gives token ids beyond the baseline's "
                            f"vocabulary of {arch.vocab} (pass --eval-data)", log)
    source = (f"held-out calibration text {plan.data} ({len(windows)} windows of {plan.seq} tokens not used for "
              f"calibration)")
    values = {}
    if in_torch:
        from ..models import load_model
        from ..prune.evaluate import perplexity

        for role, r in models.items():
            log(f"quality of the {role} on {source}")
            values[role] = perplexity(load_model(r.source), windows, progress=False)
        engine: dict[str, Any] = {"source": "eval"}
    else:
        from .ort_quality import ort_perplexity

        for role, r in models.items():
            log(f"quality of the {role} ({r.precision}) in ONNX Runtime on {source}")
            values[role] = ort_perplexity(r.onnx, windows.numpy(), threads=opts.threads)
        engine = {"source": "onnxruntime", "precision": {role: r.precision for role, r in models.items()}}
    return {"metric": "perplexity", "baseline": round(values["baseline"], 6), "candidate": round(values["candidate"], 6),
            "data": plan.data, **engine, "windows": int(len(windows)), "seq": plan.seq,
            "data_kind": "heldout-calibration", "data_source": source,
            "calibration": {"windows": plan.calibration_windows, "seed": plan.seed}}


def _ort_quality(models: dict[str, Resolved], opts: VerifyOptions, log: Callable[[str], None]) -> dict[str, Any]:
    """Perplexity (decoder) or accuracy (classifier) of both ONNX graphs (a directory: its validated export) in
    ONNX Runtime on ``eval_data``, tokenized with the candidate's tokenizer.json (torch-free): a quantized file
    is measured as shipped."""
    from .ort_quality import ort_accuracy, ort_perplexity, read_texts, text_windows

    tokenizer_dir = _tokenizer_dir(models["candidate"])
    arch, _ = _arch_and_shape(models["candidate"])
    if arch is not None and not arch.is_decoder:
        from ..core.labelled import read_labelled

        texts, labels = read_labelled(opts.eval_data)
        metric, extra = "accuracy", {"examples": len(labels)}
        measure = lambda onnx: ort_accuracy(onnx, tokenizer_dir, texts, labels, threads=opts.threads)  # noqa: E731
    else:
        windows = text_windows(tokenizer_dir, read_texts(opts.eval_data), opts.eval_seq, opts.eval_windows)
        metric, extra = "perplexity", {"windows": int(len(windows)), "seq": opts.eval_seq}
        measure = lambda onnx: ort_perplexity(onnx, windows, threads=opts.threads)  # noqa: E731
    values = {}
    for role, r in models.items():
        log(f"{metric} of the {role} ({r.precision}) in ONNX Runtime on {opts.eval_data}")
        values[role] = measure(r.onnx)
    return {"metric": metric, "baseline": round(values["baseline"], 6), "candidate": round(values["candidate"], 6),
            "data": str(opts.eval_data), "source": "onnxruntime", **extra,
            "precision": {role: r.precision for role, r in models.items()}, **_eval_data_origin(opts)}


def _tokenizer_dir(r: Resolved) -> Path:
    """Where the tokenizer.json of a model is: its directory, the ONNX file's recorded source, or beside it."""
    candidates = [Path(r.source)] if r.kind == "directory" else []
    if r.metadata and r.metadata.get("ziplm_source"):
        candidates.append(Path(r.metadata["ziplm_source"]))
    if r.onnx is not None:
        candidates.append(Path(r.source).parent if r.kind != "directory" else r.onnx.parent)
    for d in candidates:
        if (d / "tokenizer.json").is_file():
            return d
    raise UserError(f"no tokenizer.json for {r.source} (looked in {', '.join(map(str, candidates))})",
                    "keep the model's tokenizer.json beside the ONNX file, or its source directory in place")
