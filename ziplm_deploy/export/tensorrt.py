"""TensorRT engine files: ``build_engine`` builds a serialized engine from an exported ONNX file with one
optimisation profile (``runtime.tensorrt.build_serialized``, the builder the profiler uses too) and writes its
metadata sidecar ``FILE.plan.json`` (format ``ziplm-deploy/engine``: TensorRT version, GPU model and compute
capability, precision, profile, source ONNX and engine sha256), which ``runtime.tensorrt`` checks before it
loads the engine. Shapes are given trtexec style (``parse_shapes``, ``profiles_from_args``).

Torch-free; ``tensorrt`` is imported when an engine is built (``build-engine`` and the pipeline's engine stage).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..core.errors import UserError
from ..runtime.tensorrt import (ENGINE_FORMAT, ENGINE_VERSION, PRECISIONS, TensorRTBackend, build_serialized,
                                sidecar_path)


def parse_shapes(spec: str) -> dict[str, tuple[int, ...]]:
    """``"input_ids:1x128,attention_mask:1x128"`` -> {name: dims} (trtexec's --minShapes syntax)."""
    out: dict[str, tuple[int, ...]] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, dims = part.rpartition(":")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            shape = ()
        if not sep or not name or not shape or min(shape) < 1:
            raise UserError(f"bad shape {part!r}", "write NAME:DxDx..., e.g. input_ids:1x128,attention_mask:1x128")
        out[name] = shape
    return out


def profiles_from_args(onnx_inputs: dict[str, int], min_s: str | None, opt_s: str,
                       max_s: str | None) -> dict[str, tuple[tuple[int, ...], ...]]:
    """{input: (min, opt, max)} from the three shape options; ``onnx_inputs`` maps input name -> rank."""

    def expand(spec: str, flag: str) -> dict[str, tuple[int, ...]]:
        if ":" in spec:
            shapes = parse_shapes(spec)
        else:
            dims = parse_shapes(f"all:{spec}")["all"]
            shapes = {n: dims for n, rank in onnx_inputs.items() if rank == len(dims)}
        unknown = sorted(set(shapes) - set(onnx_inputs))
        if unknown:
            raise UserError(f"{flag}: the model has no input(s) {unknown}", f"inputs: {', '.join(onnx_inputs)}")
        missing = sorted(set(onnx_inputs) - set(shapes))
        if missing:
            raise UserError(f"{flag}: no shape for input(s) {missing}", "name them: NAME:DxD,...")
        return shapes

    opt = expand(opt_s, "--opt")
    lo = expand(min_s, "--min") if min_s else opt
    hi = expand(max_s, "--max") if max_s else opt
    out = {}
    for name in onnx_inputs:
        a, b, c = lo[name], opt[name], hi[name]
        if not (len(a) == len(b) == len(c)) or any(x > y or y > z for x, y, z in zip(a, b, c)):
            raise UserError(f"profile of {name!r} needs min <= opt <= max with equal ranks, got {a} / {b} / {c}")
        out[name] = (a, b, c)
    return out


def onnx_input_ranks(path: str | os.PathLike) -> dict[str, int]:
    """Input name -> rank of an ONNX graph (initializers listed as inputs excluded), weights not loaded."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    return {i.name: len(i.type.tensor_type.shape.dim) for i in graph.input if i.name not in inits}


def build_engine(onnx_path: str | os.PathLike, out: str | os.PathLike, profiles: dict[str, tuple[tuple[int, ...], ...]],
                 precision: str = "fp32", timing_cache: str | None = None, workspace_mb: int = 4096,
                 opt_level: str = "3") -> dict[str, Any]:
    """Build ``out`` (a serialized engine) from ``onnx_path`` with one optimisation profile
    ``{input: (min, opt, max)}``; write its sidecar; return the metadata. Needs TensorRT and a GPU."""
    from ..core.jsonio import atomic_write_bytes, atomic_write_json

    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}", f"choose one of {', '.join(PRECISIONS)}")
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise UserError(f"ONNX file not found: {onnx_path}")
    backend = TensorRTBackend(opt_level=opt_level, workspace_mb=workspace_mb)
    atomic_write_bytes(out, build_serialized(backend, onnx_path, profiles, precision, timing_cache))
    meta = engine_metadata(backend, onnx_path, out, profiles, precision, timing_cache)
    atomic_write_json(sidecar_path(out), meta)
    return meta


def engine_metadata(backend: TensorRTBackend, onnx_path: Path, engine: str | os.PathLike,
                    profiles: dict[str, tuple[tuple[int, ...], ...]], precision: str,
                    timing_cache: str | None) -> dict[str, Any]:
    """The sidecar ``runtime.tensorrt.check_engine_metadata`` reads before loading ``engine``."""
    import datetime as _dt
    import json as _json

    import onnx

    from .. import __version__
    from ..core.manifest import file_sha256
    from ..runtime.fingerprint import gpu_name

    proto = onnx.load(str(onnx_path), load_external_data=False)
    meta = {
        "format": ENGINE_FORMAT, "version": ENGINE_VERSION,
        "tensorrt_version": backend.trt.__version__, "gpu": gpu_name(),
        "compute_capability": backend.cuda.compute_capability(),
        "precision": precision, "builder_opt_level": int(backend.opt_level), "workspace_mb": backend.workspace_mb,
        "profiles": [{name: {"min": list(p[0]), "opt": list(p[1]), "max": list(p[2])} for name, p in profiles.items()}],
        "source_onnx": str(onnx_path), "source_onnx_sha256": file_sha256(onnx_path),
        "engine_sha256": file_sha256(engine), "timing_cache": str(Path(timing_cache)) if timing_cache else None,
        "onnx_metadata": {p.key: p.value for p in proto.metadata_props},
        "producer": f"ziplm-deploy {__version__}",
        "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
    }
    _json.dumps(meta)  # fail before writing if anything is not JSON
    return meta
