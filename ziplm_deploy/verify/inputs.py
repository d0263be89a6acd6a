"""Verify's inputs: path resolution, ONNX introspection, content digests and the export cache.

``resolve`` turns a ``--baseline`` / ``--candidate`` path into what the runtime loads (an ONNX file as is, a model
directory exported into a cache folder keyed by its content hash, a TensorRT engine with its sidecar);
``onnx_info`` reads an ONNX file once (metadata, parameter count, opset, inputs) and refuses a broken one.
Torch-free at module level: PyTorch is imported only to export a model directory.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..core.errors import UserError
from ..core.manifest import MANIFEST_FILE, file_sha256

if TYPE_CHECKING:
    from .measure import VerifyOptions

ENGINE_SUFFIXES = (".plan", ".engine")
FALLBACK_VOCAB = 16  # token ids for graphs without ziplm metadata: small enough for any vocabulary


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
