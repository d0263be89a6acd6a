"""Quantized export, validated for what it is: a quality tolerance against the fp32 PyTorch model.

``export_quantized`` exports the model in fp32 (``export_onnx``, validated at the usual parity against
PyTorch), quantizes every graph with ``runtime.quantize.quantize_file_to`` (the function the profiler
quantizes block graphs with) and writes the quantized graph as ``FILE.onnx``: the file that is deployed
(the fp32 graph is not kept; export it separately to have both). Its validation is not 1e-3 parity:

* top-1 agreement of the quantized graph's logits (next-token, or label for classifiers) with PyTorch's
  fp32 logits on the export's validation inputs, at least ``min_top1`` (default 0.1: a wiring check that
  catches a broken graph; see ``runtime.quantize.DEFAULT_MIN_TOP1`` for why quality is judged on text);
* with text, the perplexity of the quantized graph in ONNX Runtime against the fp32 PyTorch model's on
  the same windows; with ``max_ppl_increase`` a relative increase above it fails the export.

Both go into the ONNX metadata (``ziplm_precision``, ``ziplm_quality``: JSON with ``kind``
"top1-agreement", the values and the tolerance), and the export reference beside the file
(``FILE.onnx.reference.npz``: the validation inputs and PyTorch's fp32 outputs) is written for the
quantized file, so ``verify`` judges it by the same tolerance. Atomic like ``export_onnx``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..core.checks import TEMP_PREFIX
from ..core.errors import UserError
from ..core.manifest import file_sha256
from ..core.parity import load_reference, reference_path, save_reference
from ..runtime.quantize import DEFAULT_MIN_TOP1, QUALITY_METADATA, TOP1_KIND, Precision, quantize_file_to
from .onnx import ExportResult, export_onnx, fresh_tempdir, move_into_place


@dataclass
class GraphQuality:
    graph: str
    top1_agreement: float
    positions: int
    min_top1: float
    perplexity_fp32: float | None = None  # PyTorch fp32 on the text windows
    perplexity: float | None = None  # the quantized graph in ONNX Runtime
    max_ppl_increase: float | None = None

    @property
    def ppl_increase(self) -> float | None:
        if self.perplexity is None or not self.perplexity_fp32:
            return None
        return self.perplexity / self.perplexity_fp32 - 1.0

    def failures(self) -> list[str]:
        out = []
        if not self.top1_agreement >= self.min_top1:
            out.append(f"{self.graph}: top-1 agreement with fp32 PyTorch {self.top1_agreement:.1%} "
                       f"< {self.min_top1:.1%} ({self.positions} positions)")
        inc = self.ppl_increase
        if self.max_ppl_increase is not None and inc is not None and not inc <= self.max_ppl_increase:
            out.append(f"{self.graph}: perplexity {self.perplexity:.3f} vs fp32 {self.perplexity_fp32:.3f} "
                       f"(+{inc:.1%} > +{self.max_ppl_increase:.1%})")
        return out

    def to_json(self, precision: Precision) -> dict[str, Any]:
        d = {"kind": TOP1_KIND, "precision": precision.label, "reference": "pytorch-fp32", "graph": self.graph,
             "top1_agreement": round(self.top1_agreement, 6), "positions": self.positions,
             "min_top1_agreement": self.min_top1}
        if self.perplexity is not None:
            d.update(perplexity_fp32=round(self.perplexity_fp32, 6), perplexity=round(self.perplexity, 6),
                     perplexity_increase=round(self.ppl_increase, 6), max_perplexity_increase=self.max_ppl_increase)
        return d


class QuantizedValidationError(UserError):
    def __init__(self, failures: list[str]):
        super().__init__(f"the quantized model is out of tolerance: {'; '.join(failures)}",
                         "try --per-channel, lower --min-top1 / raise --max-ppl-increase, or ship fp32")


@dataclass
class QuantizedExport:
    paths: list[Path]
    precision: Precision
    quality: list[GraphQuality] = field(default_factory=list)
    fp32: ExportResult | None = None  # the fp32 export the quantized graphs came from (removed)
    references: list[Path] = field(default_factory=list)


def export_quantized(model: Any, out: str | os.PathLike, precision: Precision, with_past: bool = False,
                     atol: float = 1e-4, rtol: float = 1e-3, source: str | os.PathLike | None = None,
                     windows: Any = None, min_top1: float = DEFAULT_MIN_TOP1,
                     max_ppl_increase: float | None = None, calibration: Any = None) -> QuantizedExport:
    """Export ``model`` to ``out`` quantized to ``precision``, validated against fp32 PyTorch (see module).

    ``windows``: token windows (n, seq) for the perplexity check (optional); ``calibration``: the token
    windows that calibrate ``int8-static`` (required for it: ``static_calibration_windows``)."""
    out = Path(out)
    if not precision.quantized:
        raise UserError("export_quantized needs a quantized precision", "use export_onnx for fp32")
    if precision.static and calibration is None:
        raise UserError(f"{precision.label} needs calibration text", "pass --calib FILE (.txt, .jsonl or wikipedia)")
    tmp = fresh_tempdir(out)
    try:
        fp32 = export_onnx(model, tmp / "fp32" / out.name, with_past=with_past, atol=atol, rtol=rtol, source=source)
        ppl_fp32 = _torch_perplexity(model, windows) if windows is not None else None
        result = quantize_exported(fp32.paths, out.parent, precision, windows, ppl_fp32, min_top1, max_ppl_increase,
                                   calibration)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result.fp32 = fp32
    return result


def quantize_exported(fp32_paths: list[Path], out_dir: Path, precision: Precision, windows: Any = None,
                      ppl_fp32: float | None = None, min_top1: float = DEFAULT_MIN_TOP1,
                      max_ppl_increase: float | None = None, calibration: Any = None) -> QuantizedExport:
    """Quantize graphs ``export_onnx`` wrote (each with its export reference) into ``out_dir`` under the
    same names, validated and recorded as ``export_quantized`` does; ``ppl_fp32``: the fp32 model's
    perplexity on ``windows`` (the baseline of the perplexity check). Atomic."""
    out_dir = Path(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{Path(fp32_paths[0]).stem}.", dir=out_dir))
    try:
        staged, quality = [], []
        for path in map(Path, fp32_paths):
            q_path, ref_path, q = _quantize_graph(path, tmp, precision, min_top1, windows, ppl_fp32, max_ppl_increase,
                                                  calibration)
            staged.append((q_path, ref_path, out_dir / path.name))
            quality.append(q)
        failures = [f for q in quality for f in q.failures()]
        if failures:
            raise QuantizedValidationError(failures)
        finals = move_into_place(staged)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return QuantizedExport(finals, precision, quality, None, [reference_path(f) for f in finals])


def _quantize_graph(fp32_path: Path, tmp: Path, precision: Precision, min_top1: float, windows: Any,
                    ppl_fp32: float | None, max_ppl_increase: float | None,
                    calibration: Any = None) -> tuple[Path, Path, GraphQuality]:
    """Quantize one graph, measure it against the fp32 reference outputs, write metadata and reference."""
    import onnx

    from ..verify.ort_quality import ort_perplexity, ort_session, top1_agreement

    q_path = tmp / "q" / fp32_path.name
    q_path.parent.mkdir(exist_ok=True)
    ref = load_reference(reference_path(fp32_path))
    head = next((n for n in ("logits",) if n in ref.outputs), None)
    if head is None:
        raise UserError(f"a quantized export is validated by top-1 agreement of logits; the {ref.graph} graph "
                        f"outputs {', '.join(ref.outputs)}", "quantize causal LMs or classifiers, or export fp32")
    quantize_file_to(fp32_path, q_path, precision, calibration=calibration)
    session = ort_session(q_path, threads=1)
    got = session.run([head], ref.inputs)[0]
    positions = int(np.prod(got.shape[:-1]))
    q = GraphQuality(ref.graph, top1_agreement(got, ref.outputs[head]), positions, min_top1,
                     max_ppl_increase=max_ppl_increase)
    if windows is not None and ref.graph in ("decoder", "prefill"):
        q.perplexity_fp32 = ppl_fp32
        q.perplexity = ort_perplexity(q_path, np.asarray(windows), session=session)
    proto = onnx.load(str(q_path))
    proto.metadata_props.add(key=QUALITY_METADATA, value=json.dumps(q.to_json(precision)))
    onnx.save_model(proto, str(q_path))
    ref_path = tmp / "q" / reference_path(fp32_path).name
    save_reference(ref_path, ref.graph, ref.inputs, ref.outputs, file_sha256(q_path), f"ziplm-deploy {__version__}")
    return q_path, ref_path, q


def static_calibration_windows(model_dir: str | os.PathLike, text: str | os.PathLike | None = None) -> Any:
    """The token windows (``STATIC_CALIBRATION``: 16 x 128) that calibrate an ``int8-static`` export of
    ``model_dir``: of ``text``, else of the calibration text its prune run recorded (manifest ``options.data``),
    cut with its tokenizer. No text to be had is a ``UserError``."""
    from ..core.manifest import MANIFEST_FILE, ModelManifest
    from ..models.tokenizer import load_tokenizer
    from ..prune.data import calibration_windows
    from ..runtime.quantize import STATIC_CALIBRATION

    if text is None:
        manifest = Path(model_dir) / MANIFEST_FILE
        text = ModelManifest.load(manifest).options.get("data") if manifest.is_file() else None
        if not isinstance(text, str) or not text:
            raise UserError(f"int8-static needs calibration text, and {model_dir} records none (no prune run's data)",
                            "pass --calib FILE (.txt, .jsonl or wikipedia)")
    tokenizer = load_tokenizer(model_dir)
    if tokenizer is None:
        raise UserError(f"{model_dir} has no tokenizer files", "int8-static calibration needs the model's tokenizer")
    count, seq = STATIC_CALIBRATION
    return calibration_windows(tokenizer, text, seq, count).numpy()


def _torch_perplexity(model: Any, windows: Any) -> float:
    import torch

    from ..prune.evaluate import perplexity

    ppl = perplexity(model, torch.as_tensor(np.asarray(windows)), progress=False)
    if not math.isfinite(ppl):
        raise UserError("the fp32 model's perplexity on the text is not finite")
    return ppl
