"""``verify``: measure a baseline and a candidate end to end in the deployment runtime.

1. resolve each model: an ONNX file is used as is; a model directory is exported (validated) into a
   cache folder keyed by the directory's content hash; a TensorRT engine is used with its sidecar;
2. time both with the shared protocol (``runtime.measure.time_models``: interleaved shuffled rounds,
   percentiles, the baseline re-timed at the end to detect interference);
3. parity of the candidate in the runtime against PyTorch (directory) or against unoptimised ONNX
   Runtime CPU (ONNX file / engine), per output;
4. measured speedup vs the target and vs the latency table's prediction (or the manifest's);
5. optionally quality of both (``eval_data``; needs directories and torch).

Anything that fails after the inputs were validated is recorded in the report (``status: error``),
never silently dropped: the gate fails closed on it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .. import __version__
from ..core.errors import UserError
from ..core.manifest import MANIFEST_FILE, file_sha256, now_utc
from .report import VerifyReport

ENGINE_SUFFIXES = (".plan", ".engine")
VERIFY_RUNTIMES = ("ort-cpu", "ort-cuda", "ort-trt", "trt")  # deployment runtimes of ONNX files / engines
FALLBACK_VOCAB = 16  # token ids for graphs without ziplm metadata: small enough for any vocabulary


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

    def validate(self) -> "VerifyOptions":
        if self.runtime not in VERIFY_RUNTIMES:
            raise UserError(f"unknown runtime {self.runtime!r} for verify", f"choose one of: {', '.join(VERIFY_RUNTIMES)}")
        for name in ("batch", "seq", "rounds", "eval_windows", "eval_seq"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.threads < 0 or self.warmup < 0 or self.retries < 0:
            raise UserError("--threads, --warmup and --retries must be >= 0")
        if self.target is not None and self.target <= 0:
            raise UserError(f"--target must be > 0, got {self.target}")
        if not 0 <= self.tolerance < 1:
            raise UserError(f"--tolerance is a fraction in [0, 1), got {self.tolerance}")
        if self.atol < 0 or self.rtol < 0:
            raise UserError("--atol and --rtol must be >= 0")
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

    def describe(self) -> dict[str, Any]:
        shape = json.loads(self.metadata["ziplm_shape"]) if self.metadata and "ziplm_shape" in self.metadata else None
        out: dict[str, Any] = {"source": self.source, "kind": self.kind, "file": str(self.file) if self.file else None,
                               "sha256": None, "bytes": None, "params": None, "shape": shape, "latency": None,
                               "manifest": None}
        if self.file and self.file.is_file():
            out["sha256"], out["bytes"] = file_sha256(self.file), self.file.stat().st_size
        if self.onnx and self.onnx.is_file():
            out["params"] = onnx_params(self.onnx)
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


@functools.lru_cache(maxsize=16)
def _onnx_info(path: str, mtime_ns: int) -> tuple[dict[str, str], int, int]:
    """(metadata, parameter count, opset) of an ONNX file, read once (weights stay on disk when external)."""
    import onnx

    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception as e:  # onnx raises DecodeError & co for a broken file
        raise UserError(f"{path} is not a readable ONNX file: {str(e).splitlines()[0] if str(e) else e!r}") from None
    params = 0
    for init in proto.graph.initializer:
        n = 1
        for d in init.dims:
            n *= int(d)
        params += n
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return {p.key: p.value for p in proto.metadata_props}, params, opset


def onnx_info(path: Path) -> tuple[dict[str, str], int, int]:
    return _onnx_info(str(path), path.stat().st_mtime_ns)


def onnx_metadata(path: Path) -> dict[str, str]:
    return dict(onnx_info(Path(path))[0])


def onnx_params(path: Path) -> int:
    return onnx_info(Path(path))[1]


def dir_digest(model_dir: Path) -> str:
    """Content hash of a model directory's config and weights (the export cache key)."""
    h = hashlib.sha256()
    for f in sorted(model_dir.iterdir()):
        if f.is_file() and (f.name == "config.json" or f.suffix in (".safetensors", ".bin")):
            h.update(f.name.encode())
            h.update(file_sha256(f).encode())
    return h.hexdigest()


def export_dir(model_dir: Path, cache: Path, log: Callable[[str], None], atol: float, rtol: float) -> Path:
    """The validated ONNX export of a model directory, reused from ``cache`` when its content is unchanged."""
    out = cache / f"{model_dir.name}-{dir_digest(model_dir)[:16]}.onnx"
    if out.is_file():
        log(f"reusing export {out}")
        return out
    log(f"exporting {model_dir} to {out} (PyTorch, validated)")
    from ..export import export_onnx  # torch: only for directories
    from ..models import load_model

    export_onnx(load_model(model_dir), out, atol=atol, rtol=max(rtol, 1e-3))
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
    from ..core.arch import arch_from_config
    from ..core.shape import ModelShape

    meta = r.metadata or {}
    if "ziplm_config" not in meta or "ziplm_shape" not in meta:
        return None, None
    return (arch_from_config(json.loads(meta["ziplm_config"]), source=f"{r.source} metadata"),
            ModelShape.from_json(json.loads(meta["ziplm_shape"]), source=f"{r.source} metadata"))


def _opset(path: Path | None) -> int:
    return onnx_info(path)[2] if path is not None else 0


def verify(baseline: str, candidate: str, opts: VerifyOptions, cache: Path,
           log: Callable[[str], None] = print) -> VerifyReport:
    """Measure, compare and predict; the returned report carries ``status: error`` if a step failed."""
    from ..runtime import get_backend
    from ..runtime.timing import Protocol

    opts.validate()
    kinds = {role: kind_of(p, role) for role, p in (("baseline", baseline), ("candidate", candidate))}
    for role, kind in kinds.items():
        if kind == "engine" and opts.runtime != "trt":
            raise UserError(f"--{role} {baseline if role == 'baseline' else candidate} is a TensorRT engine",
                            "use --runtime trt for engines")
    protocol = Protocol(warmup=opts.warmup, rounds=opts.rounds, seed=opts.seed)
    report = VerifyReport(
        producer=f"ziplm-deploy {__version__}", created=now_utc(),
        runtime={"name": opts.runtime, "threads": opts.threads, "opt_level": opts.opt_level},
        inputs={"batch": opts.batch, "seq": opts.seq}, protocol=protocol.to_json(),
        baseline={"source": baseline, "kind": kinds["baseline"], "latency": None},
        candidate={"source": candidate, "kind": kinds["candidate"], "latency": None},
    )
    if opts.eval_data and "directory" not in kinds.values():
        raise UserError("--eval-data needs model directories", "pass --baseline/--candidate as directories")
    backend = get_backend(opts.runtime, threads=opts.threads, opt_level=opts.opt_level)
    try:
        models = {role: resolve(p, role, opts.runtime, cache, log, opts)
                  for role, p in (("baseline", baseline), ("candidate", candidate))}
        for role, r in models.items():
            setattr(report, role, r.describe())
        _measure(report, backend, models, opts, protocol, log)
        _predict(report, models, opts)
        report.parity = _parity(backend, models["candidate"], opts, log)
        if opts.eval_data:
            report.quality = _quality(models, opts, log)
    except UserError as e:
        log(f"error: {e}")
        report.fail(str(e))
    return report


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
                                     opset=_opset(models["candidate"].onnx)).to_json()
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
        predicted = base_ms / predicted_ms
        mine = DeviceFingerprint.from_json(report.fingerprint, "measurement") if report.fingerprint else None
        diffs = table.fingerprint.differences(mine) if mine else []
        sp.update(predicted=round(predicted, 5), predicted_ms=round(predicted_ms, 5), prediction_source="table",
                  predicted_baseline_ms=round(base_ms, 5),
                  latency_prediction_error=round(sp["candidate_ms"] / predicted_ms - 1, 5),
                  table={"path": str(opts.table), "sha256": file_sha256(opts.table), "fingerprint_differences": diffs})
    else:
        metrics = (models["candidate"].manifest or {}).get("metrics") or {}
        if metrics.get("predicted_speedup"):
            sp.update(predicted=metrics["predicted_speedup"], predicted_ms=metrics.get("predicted_ms"),
                      prediction_source="manifest")
            if metrics.get("predicted_ms"):
                sp["latency_prediction_error"] = round(sp["candidate_ms"] / metrics["predicted_ms"] - 1, 5)
    if sp["predicted"]:
        sp["prediction_error"] = round(measured / sp["predicted"] - 1, 5)


def _parity(backend: Any, cand: Resolved, opts: VerifyOptions, log: Callable[[str], None]) -> dict[str, Any]:
    from ..runtime import get_backend
    from ..runtime.feeds import synthetic_feeds
    from .parity import compare, torch_outputs

    arch, _ = _arch_and_shape(cand)
    dims = {"batch": opts.batch, "seq": opts.seq, "past": 0, "total": opts.seq}
    with backend.load(cand.file) as session:
        feeds = synthetic_feeds(session.inputs, dims, arch.vocab if arch else FALLBACK_VOCAB, seed=opts.seed + 1)
        got = session.run(feeds)
    if cand.kind == "directory":
        log("parity: candidate in the runtime vs PyTorch")
        reference, want = "pytorch", torch_outputs(cand.source, feeds)
    else:
        if cand.onnx is None:
            raise UserError(f"no source ONNX for {cand.source}: parity cannot be checked",
                            "keep the engine's source ONNX (recorded in its sidecar) next to it")
        log("parity: candidate in the runtime vs ONNX Runtime CPU without graph optimisations")
        with get_backend("ort-cpu", threads=1, opt_level="disabled").load(cand.onnx) as ref:
            want = ref.run(feeds)
        reference = "onnxruntime-cpu-unoptimised"
    rows = compare(got, want, opts.atol, opts.rtol)
    if not rows:
        raise UserError("parity: the runtime and the reference share no output names")
    return {"reference": reference, "atol": opts.atol, "rtol": opts.rtol, "ok": all(r["ok"] for r in rows),
            "outputs": rows}


def _quality(models: dict[str, Resolved], opts: VerifyOptions, log: Callable[[str], None]) -> dict[str, Any]:
    """Perplexity (causal LM) or accuracy (classifier) of both directories on ``eval_data`` (PyTorch)."""
    from ..core.arch import arch_from_dir
    from ..models import load_model
    from ..models.tokenizer import load_tokenizer
    from ..prune.evaluate import accuracy, perplexity, read_labelled

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
            "data": str(opts.eval_data), "source": "eval"}
