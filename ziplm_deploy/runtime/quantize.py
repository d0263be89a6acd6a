"""Deployment precision of an ONNX graph, and the one function that applies it (torch-free).

``fp32`` leaves a graph as it is; ``int8-dynamic`` is ONNX Runtime's ``quantize_dynamic``: QInt8 weights
(per tensor, or per output channel with ``per_channel``), activations quantized to uint8 at run time,
MatMuls with a constant weight only. The profiler (block graphs, ``--check`` shapes), the exporter and
edge devices all call ``quantize_graph``, so a latency table predicts the model exactly as shipped.

A precision is named by its label: ``fp32``, ``int8-dynamic`` or ``int8-dynamic/per-channel``; the label
goes into table fingerprints and into the ONNX metadata (``ziplm_precision``).
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import UserError
from ..core.fingerprint import PRECISION_LABELS

PRECISIONS = ("fp32", "int8-dynamic")
PER_CHANNEL = "per-channel"
PRECISION_METADATA = "ziplm_precision"  # ONNX metadata key of the precision label
QUALITY_METADATA = "ziplm_quality"  # ONNX metadata: how a quantized graph was validated (export.quantize)
TOP1_KIND = "top1-agreement"  # its tolerance kind: arg-max agreement with the fp32 PyTorch logits
# Top-1 agreement of a quantized graph's logits with fp32 PyTorch on the export's validation inputs (random
# tokens) is a wiring check, not a quality verdict: it catches a broken or mismatched graph (an unrelated
# model agrees on ~0% of positions), while a sound int8 SmolLM2-135M agrees on 36% (dense) and 23% (ZipLM 2x)
# of these low-confidence positions (~60% on real text). Quality is judged on text: `export --eval-data
# --max-ppl-increase`, and the gate's `max_perplexity_increase` on `verify --eval-data`.
DEFAULT_MIN_TOP1 = 0.1


@dataclass(frozen=True)
class Precision:
    name: str = "fp32"
    per_channel: bool = False

    def __post_init__(self) -> None:
        if self.name not in PRECISIONS:
            raise UserError(f"unknown precision {self.name!r}", f"choose one of {', '.join(PRECISIONS)}")
        if self.per_channel and self.name == "fp32":
            raise UserError("--per-channel needs a quantized precision", "pass --precision int8-dynamic --per-channel")

    @property
    def quantized(self) -> bool:
        return self.name != "fp32"

    @property
    def label(self) -> str:
        return f"{self.name}/{PER_CHANNEL}" if self.per_channel else self.name

    @property
    def cli_flags(self) -> str:
        """The command-line options that select this precision."""
        return f"--precision {self.name}" + (" --per-channel" if self.per_channel else "")

    @staticmethod
    def parse(label: str, source: str = "precision") -> "Precision":
        """The precision a label names (``int8-dynamic/per-channel``); anything else is a ``UserError``."""
        if label not in PRECISION_LABELS:
            raise UserError(f"{source}: unknown precision {label!r}", f"expected one of {', '.join(PRECISION_LABELS)}")
        name, _, option = str(label).partition("/")
        return Precision(name, bool(option))


FP32 = Precision()


def quantize_graph(model: Any, precision: Precision) -> bytes:
    """The serialized graph in ``precision``: ``model`` is a ModelProto, serialized bytes or a path."""
    import onnx

    proto = model if isinstance(model, onnx.ModelProto) else _load(model)
    if not precision.quantized:
        return proto.SerializeToString()
    with tempfile.TemporaryDirectory(prefix="ziplm-quant.") as tmp:
        out = Path(tmp) / "model.onnx"
        quantize_file_to(proto, out, precision)
        return out.read_bytes()


def quantize_file_to(model: Any, out: str | os.PathLike, precision: Precision) -> None:
    """Write ``model`` (ModelProto or path) to ``out`` in ``precision``, keeping its metadata and adding
    ``ziplm_precision``."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    proto = model if isinstance(model, onnx.ModelProto) else _load(model)
    meta = {p.key: p.value for p in proto.metadata_props}
    if precision.quantized:
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # quantize_dynamic warns about pre-processing on every call
        try:
            quantize_dynamic(proto, out, per_channel=precision.per_channel, weight_type=QuantType.QInt8)
        finally:
            root.setLevel(level)
        proto = onnx.load(str(out))
    meta[PRECISION_METADATA] = precision.label
    del proto.metadata_props[:]
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save_model(proto, str(out))


def precision_of_metadata(meta: dict[str, str], source: str) -> Precision:
    """The precision an ONNX file records (files without the key were written in fp32)."""
    return Precision.parse(meta.get(PRECISION_METADATA, "fp32"), f"{source}: metadata {PRECISION_METADATA}")


def _load(model: Any) -> Any:
    import onnx

    if isinstance(model, bytes):
        return onnx.load_from_string(model)
    return onnx.load(os.fspath(model))


def quality_of_metadata(meta: dict[str, str], source: str) -> dict[str, Any] | None:
    """The ``ziplm_quality`` record of a quantized ONNX file (None when absent)."""
    import json

    if QUALITY_METADATA not in meta:
        return None
    try:
        record = json.loads(meta[QUALITY_METADATA])
    except json.JSONDecodeError:
        raise UserError(f"{source}: metadata {QUALITY_METADATA} is not valid JSON", "re-export it") from None
    if not isinstance(record, dict):
        raise UserError(f"{source}: metadata {QUALITY_METADATA} must be an object", "re-export it")
    return record
