"""``verify.json``: what ``verify`` measured and what ``gate`` and ``report`` read.

JSON form (version 1)::

    {"format": "ziplm-deploy/verify-report", "version": 1, "producer": ..., "created": ...,
     "status": "ok" | "error", "error": null | "what went wrong",
     "runtime": {"name": "ort-cpu", "threads": 1, "opt_level": "all"},
     "inputs": {"batch": 1, "seq": 128}, "protocol": {...}, "fingerprint": {...DeviceFingerprint...},
     "baseline": {MODEL}, "candidate": {MODEL},
     "timing": {"statistic": "p25", "baseline_recheck": {...}, "drift": 0.01, "max_drift": 0.05,
                "interference": false, "attempts": 1},
     "speedup": {"measured": 1.9, "target": 2.0, "tolerance": 0.05, "meets_target": true,
                 "target_deviation": -0.05, "predicted": 2.0, "predicted_ms": 40.1,
                 "prediction_error": -0.05, "latency_prediction_error": 0.03, "prediction_source": "table"|"manifest",
                 "table": {"path", "sha256", "fingerprint_differences": [...]}},
     "parity": {"reference": "pytorch" | "export-reference" | "onnxruntime-cpu-unoptimised" (engines) | "none",
                "reference_path", "reference_sha256", "note", "file_matches_export", "atol", "rtol", "ok",
                "outputs": [{"name", "max_abs", "mean_abs", "ref_max", "tolerance", "ok"}]},
     "quality": null | {"metric": "perplexity" | "accuracy", "baseline": 12.1, "candidate": 13.0,
                        "data": ..., "source": "eval" | "manifest"},
     "workload": null | {...}}   # verify --workload: generation latency (see verify.generation)

MODEL: {"source", "kind": "directory"|"onnx"|"engine", "file", "sha256", "bytes", "params", "shape",
"latency": {"p25","p50","p90","n"} | null, "manifest": {...metrics...} | null}.
Fields that could not be measured are null: the gate treats null as a failure, never as a pass, and so
is a non-finite (NaN, Infinity), out-of-range or mistyped measurement. ``workload`` (optional; absent
in reports written before it) is the TTFT / ms-per-token / tokens/s / end-to-end block of ``verify
--workload``, whose report's top-level latency and speedup are then the end-to-end generation time's.
``from_json`` refuses only a malformed structure (exit 2, one line naming the file and key): see
``check_structure``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

from ..core.checks import mapping, typed
from ..core.errors import UserError
from ..core.jsonio import atomic_write_json, check_header, read_json

VERIFY_FORMAT = "ziplm-deploy/verify-report"
VERIFY_VERSION = 1
_KEYS = ("producer", "created", "status", "error", "runtime", "inputs", "protocol", "fingerprint", "baseline",
         "candidate", "timing", "speedup", "parity", "quality", "workload")


@dataclass
class VerifyReport:
    producer: str = ""
    created: str = ""
    status: str = "ok"
    error: str | None = None
    runtime: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)
    protocol: dict[str, Any] = field(default_factory=dict)
    fingerprint: dict[str, Any] | None = None
    baseline: dict[str, Any] = field(default_factory=dict)
    candidate: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, Any] = field(default_factory=dict)
    speedup: dict[str, Any] = field(default_factory=dict)
    parity: dict[str, Any] | None = None
    quality: dict[str, Any] | None = None
    workload: dict[str, Any] | None = None  # verify --workload: generation latency (verify.generation)

    @property
    def ok(self) -> bool:
        return self.status == "ok" and self.error is None

    def fail(self, message: str) -> "VerifyReport":
        self.status, self.error = "error", message
        return self

    def to_json(self) -> dict[str, Any]:
        """The report's JSON; ``workload`` only when there is one (a prefill report is written as before it existed)."""
        body = asdict(self)
        if body["workload"] is None:
            del body["workload"]
        return {"format": VERIFY_FORMAT, "version": VERIFY_VERSION, **body}

    @staticmethod
    def from_json(payload: Any, source: str = "verify report") -> "VerifyReport":
        """A report whose structure is sound (exit 2 otherwise); its measurements are judged by the gate."""
        check_structure(payload, source)
        return VerifyReport(**{k: payload[k] for k in _KEYS if k in payload})

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_json(path, self.to_json())

    @staticmethod
    def load(path: str | os.PathLike) -> "VerifyReport":
        return VerifyReport.from_json(read_json(path, "verify report"), source=str(path))


def check_structure(payload: Any, source: str) -> None:
    """Refuse a malformed report with one line naming the file and key: not a verify report, a version
    that is not the integer 1, unknown or missing keys, a status other than ok/error, sections of the
    wrong type. Measurements inside the sections (numbers, flags) are the gate's to judge: a wrong one
    fails its check (exit 1), it does not make the report unreadable."""
    check_header(payload, VERIFY_FORMAT, (VERIFY_VERSION,), source)
    if type(payload["version"]) is not int:  # true == 1 and 1.0 == 1 in Python
        raise UserError(f"{source}: version must be the integer {VERIFY_VERSION}, got {payload['version']!r}",
                        "regenerate it with `ziplm-deploy verify`")
    unknown = set(payload) - set(_KEYS) - {"format", "version"}
    missing = {"status", "baseline", "candidate", "speedup"} - set(payload)
    if unknown or missing:
        raise UserError(f"{source}: missing {sorted(missing)} / unknown {sorted(unknown)} keys",
                        "regenerate it with `ziplm-deploy verify`")
    if not isinstance(payload["status"], str) or payload["status"] not in ("ok", "error"):
        raise UserError(f"{source}: status must be 'ok' or 'error', got {payload['status']!r}")
    for key in ("baseline", "candidate", "speedup"):
        mapping(payload[key], source, key)
    for key in ("parity", "quality", "runtime", "inputs", "protocol", "workload"):
        if payload.get(key) is not None:
            typed(payload[key], dict, source, key, "a JSON object or null")
