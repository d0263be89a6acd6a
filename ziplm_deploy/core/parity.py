"""The one parity rule (torch-free): an output passes when ``max|got - want| <= atol + rtol * max|want|``.

Used by the exporter's self-validation and by ``verify`` on edge devices alike; also the export reference
(fixed inputs and PyTorch's outputs, hashed) that the exporter stores beside every ONNX file it writes.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from .errors import UserError


@dataclass(frozen=True)
class OutputDiff:
    graph: str
    name: str
    max_abs: float
    mean_abs: float
    ref_max: float  # max |reference| of this output: the scale rtol applies to
    tolerance: float  # atol + rtol * ref_max

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.max_abs)) and self.max_abs <= self.tolerance


def output_diff(graph: str, name: str, got: np.ndarray, want: np.ndarray, atol: float, rtol: float) -> OutputDiff:
    """Error statistics of one output; a shape mismatch gives an infinite (failing) error."""
    a, b = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    scale = float(np.abs(b).max()) if b.size else 0.0
    if a.shape != b.shape:
        return OutputDiff(graph, name, float("inf"), float("inf"), scale, atol + rtol * scale)
    err = np.abs(a - b)
    return OutputDiff(graph, name, float(err.max()) if err.size else 0.0, float(err.mean()) if err.size else 0.0,
                      scale, atol + rtol * scale)


# --- the export reference: fixed inputs and PyTorch's outputs for them, stored beside each ONNX file ---------
# ``FILE.onnx.reference.npz``: arrays ``in:<name>`` / ``out:<name>`` and ``meta`` (JSON: format, version,
# producer, graph, onnx_sha256 of the file as exported, data_sha256 of the arrays). ``verify`` compares an
# ONNX candidate with it when PyTorch or the source model is not at hand (torch-free).
REFERENCE_FORMAT = "ziplm-deploy/export-reference"
REFERENCE_VERSION = 1
REFERENCE_SUFFIX = ".reference.npz"
_REFERENCE_HINT = "re-export the model with `ziplm-deploy export` (it writes FILE.onnx and FILE.onnx.reference.npz)"


@dataclass(frozen=True)
class ExportReference:
    graph: str
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    onnx_sha256: str  # the ONNX file as exported
    data_sha256: str  # of the arrays: names, dtypes, shapes and bytes
    producer: str = ""


def reference_path(onnx_path: str | os.PathLike) -> Path:
    return Path(os.fspath(onnx_path) + REFERENCE_SUFFIX)


def arrays_sha256(inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for prefix, arrays in (("in:", inputs), ("out:", outputs)):
        for name, arr in arrays.items():
            arr = np.ascontiguousarray(arr)
            digest.update(f"{prefix}{name}|{arr.dtype.str}|{arr.shape}|".encode())
            digest.update(arr.tobytes())
    return digest.hexdigest()


def save_reference(path: str | os.PathLike, graph: str, inputs: Mapping[str, np.ndarray],
                   outputs: Mapping[str, np.ndarray], onnx_sha256: str, producer: str) -> ExportReference:
    """Write the reference file (the caller renames it into place together with the ONNX file)."""
    inputs = {k: np.ascontiguousarray(v) for k, v in inputs.items()}
    outputs = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in outputs.items()}
    ref = ExportReference(graph, inputs, outputs, onnx_sha256, arrays_sha256(inputs, outputs), producer)
    meta = {"format": REFERENCE_FORMAT, "version": REFERENCE_VERSION, "producer": producer, "graph": graph,
            "onnx_sha256": onnx_sha256, "data_sha256": ref.data_sha256, "inputs": list(inputs),
            "outputs": list(outputs)}
    arrays = {f"in:{k}": v for k, v in inputs.items()} | {f"out:{k}": v for k, v in outputs.items()}
    with open(path, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
    return ref


def load_reference(path: str | os.PathLike) -> ExportReference:
    """Read and check a reference file; unreadable, malformed or not matching its own hash: ``UserError``."""
    from .checks import mapping, typed
    from .jsonio import check_header

    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        meta = json.loads(str(arrays.pop("meta")))
    except Exception as e:  # zipfile / numpy / json errors of a corrupt file
        raise UserError(f"export reference {path} is unreadable ({type(e).__name__}: {str(e)[:80]})",
                        _REFERENCE_HINT) from None
    source = f"export reference {path}"
    check_header(mapping(meta, source), REFERENCE_FORMAT, (REFERENCE_VERSION,), source)
    names = {key: typed(meta.get(key), list, source, key, "a list of names") for key in ("inputs", "outputs")}
    try:
        inputs = {n: arrays[f"in:{n}"] for n in names["inputs"]}
        outputs = {n: arrays[f"out:{n}"] for n in names["outputs"]}
    except KeyError as e:
        raise UserError(f"{source} lacks the array {e.args[0]}", _REFERENCE_HINT) from None
    recorded = {key: typed(meta.get(key), str, source, key, "a string")
                for key in ("graph", "onnx_sha256", "data_sha256")}
    if arrays_sha256(inputs, outputs) != recorded["data_sha256"]:
        raise UserError(f"{source} does not match its recorded sha256 (the file was corrupted or edited)",
                        _REFERENCE_HINT)
    return ExportReference(recorded["graph"], inputs, outputs, recorded["onnx_sha256"], recorded["data_sha256"],
                           str(meta.get("producer", "")))
