"""Verify's prediction: the latency table checked against the candidate before any work (``_check_table``), and
the predicted speedup (the table's, else the manifest's) set beside the measured one (``_predict``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.errors import UserError
from ..core.manifest import file_sha256
from .inputs import Resolved, _arch_and_shape, _metadata_arch_and_shape, onnx_metadata
from .report import Speedup, VerifyReport

if TYPE_CHECKING:
    from .measure import VerifyOptions


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


def _predict(report: VerifyReport, models: dict[str, Resolved], opts: VerifyOptions) -> None:
    """Table prediction for the candidate's shape (``--table``), else the manifest's prediction."""
    sp = report.speedup
    if opts.table:
        _predict_from_table(sp, report.fingerprint, models, opts.table)
    else:
        _predict_from_manifest(sp, models["candidate"].manifest or {})
    if sp.predicted:
        sp.prediction_error = round(sp.measured / sp.predicted - 1, 5)


def _predict_from_table(sp: Speedup, fingerprint: dict[str, Any] | None, models: dict[str, Resolved],
                        table_path: str) -> None:
    from ..core.fingerprint import DeviceFingerprint
    from ..core.table import LatencyTable

    table = LatencyTable.load(table_path)
    arch, shape = _arch_and_shape(models["candidate"])
    if shape is None:
        raise UserError(f"{models['candidate'].source} carries no ziplm_shape/ziplm_config metadata",
                        "export it with `ziplm-deploy export`, or drop --table")
    table.check_arch(arch, models["candidate"].source)
    predicted_ms = table.predict(shape)
    base_ms = _table_baseline_ms(table, models["baseline"], shape)
    mine = DeviceFingerprint.from_json(fingerprint, "measurement") if fingerprint else None
    sp.predicted, sp.prediction_source = round(base_ms / predicted_ms, 5), "table"
    sp.predicted_ms, sp.predicted_baseline_ms = round(predicted_ms, 5), round(base_ms, 5)
    sp.latency_prediction_error = round(sp.candidate_ms / predicted_ms - 1, 5)
    sp.table = {"path": str(table_path), "sha256": file_sha256(table_path),
                "fingerprint_differences": table.fingerprint.differences(mine) if mine else []}


def _table_baseline_ms(table: Any, baseline: Resolved, shape: Any) -> float:
    """The table's time of the baseline: its own shape, else the dense model the table describes (an fp32 baseline
    of a table of another precision: the fp32 dense model, timed in the table's own run)."""
    base_arch, base_shape = _arch_and_shape(baseline)
    if base_shape is None or len(base_shape.layers) != len(shape.layers):
        base_shape = table.dense_shape()
    else:
        table.check_arch(base_arch, baseline.source)
    if baseline.precision == "fp32" != table.fingerprint.precision and base_shape == table.dense_shape():
        return table.speedup_baseline_ms()
    return table.predict(base_shape)


def _predict_from_manifest(sp: Speedup, manifest: dict[str, Any]) -> None:
    metrics = manifest.get("metrics") or {}
    options = manifest.get("options") or {}
    # a member searched on a workload predicts its budgeted metric (end to end, decode...), which one prefill
    # pass does not measure: no prediction here (pass --table, or verify --workload for those figures)
    workload_budget = options.get("budget") if isinstance(options, dict) and options.get("workload") else None
    if metrics.get("predicted_speedup") and workload_budget in (None, "ttft"):
        sp.predicted, sp.predicted_ms = metrics["predicted_speedup"], metrics.get("predicted_ms")
        sp.prediction_source = "manifest"
        if metrics.get("predicted_ms"):
            sp.latency_prediction_error = round(sp.candidate_ms / metrics["predicted_ms"] - 1, 5)
