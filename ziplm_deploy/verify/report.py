"""``verify.json``: what ``verify`` measured and what ``gate`` and ``report`` read.

JSON form (version 1)::

    {"format": "ziplm-deploy/verify-report", "version": 1, "producer": ..., "created": ...,
     "status": "ok" | "error", "error": null | "what went wrong",
     "runtime": {"name": "ort-cpu", "threads": 1, "opt_level": "all"},
     "inputs": {"batch": 1, "seq": 128}, "protocol": {...}, "fingerprint": {...DeviceFingerprint...},
     "baseline": {MODEL}, "candidate": {MODEL},
     "timing": {"statistic": "p25", "baseline_recheck": {...}, "drift": 0.01, "max_drift": 0.05,
                "interference": false, "attempts": 1, "metric": "e2e" (verify --workload only)},
     "speedup": {"statistic": "p25", "metric": "e2e" | "ttft" | "decode" (verify --workload only),
                 "baseline_ms": 80.0, "candidate_ms": 42.0, "measured": 1.9, "target": 2.0, "tolerance": 0.05,
                 "target_source": "option" | "manifest" | null, "meets_target": true, "target_deviation": -0.05,
                 "predicted": 2.0, "predicted_ms": 40.1, "prediction_error": -0.05, "latency_prediction_error": 0.03,
                 "prediction_source": "table" | "manifest" | "workload-tables" | null,
                 "table": {"path", "sha256", "fingerprint_differences": [...]} | null,
                 "predicted_baseline_ms": 80.2 (a prediction from tables only)},  # {}: errored before timing
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

In memory ``speedup`` is a ``Speedup`` and ``timing`` a ``Timing`` (``Section``s: one field per key verify
writes); the other sections are the JSON's dicts. ``from_json`` refuses only a malformed structure (exit 2,
one line naming the file and key: see ``check_structure``); it keeps every measurement as the JSON has it
(a string, NaN, null or a bool where a number belongs fails the gate's check of it, exit 1), keeps keys a
section does not know (``Section.extra``) and does not add the keys a report written before them lacks
(``Section.absent``), so ``to_json(from_json(x)) == x``. A ``timing`` that is not an object stays the raw
JSON value (the gate says so).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeVar

from ..core.checks import mapping, typed
from ..core.errors import UserError
from ..core.jsonio import atomic_write_json, check_header, read_json

VERIFY_FORMAT = "ziplm-deploy/verify-report"
VERIFY_VERSION = 1
_KEYS = ("producer", "created", "status", "error", "runtime", "inputs", "protocol", "fingerprint", "baseline",
         "candidate", "timing", "speedup", "parity", "quality", "workload")

_S = TypeVar("_S", bound="Section")


@dataclass
class Section:
    """One JSON-object section of ``verify.json``: a subclass's fields are its keys, in the order verify writes
    them. Values are whatever the JSON holds (the gate judges each one). ``extra``: keys the class does not know,
    written back after its own. ``absent``: known keys the JSON did not have (built here: the class's
    ``OPTIONAL`` ones); such a key is written only once it is set (not None)."""

    OPTIONAL: ClassVar[frozenset[str]] = frozenset()
    extra: dict[str, Any] = field(default_factory=dict, kw_only=True)
    absent: frozenset[str] | None = field(default=None, kw_only=True, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.absent is None:
            self.absent = self.OPTIONAL

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls) if f.name not in ("extra", "absent"))

    def has(self, key: str) -> bool:
        """Whether ``to_json`` writes the known ``key``: it is set, or it is not absent (a null that was written)."""
        return getattr(self, key) is not None or key not in self.absent

    def to_json(self) -> dict[str, Any]:
        return {**{k: getattr(self, k) for k in self.keys() if self.has(k)}, **self.extra}

    @classmethod
    def from_json(cls: type[_S], payload: dict[str, Any]) -> _S:
        known = cls.keys()
        return cls(**{k: payload[k] for k in known if k in payload},
                   extra={k: v for k, v in payload.items() if k not in known},
                   absent=frozenset(k for k in known if k not in payload))

    @classmethod
    def empty(cls: type[_S]) -> _S:
        """A section with no keys: ``{}`` (a report that errored before it was measured)."""
        return cls.from_json({})


@dataclass
class Timing(Section):
    """``timing``: the protocol's statistic and the baseline re-timed at the end (``drift`` from the first timing;
    ``interference`` when it moved more than ``max_drift``, after ``attempts`` measurements); ``metric`` (``verify
    --workload``: "e2e", the time the drift is of) only when set."""

    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"metric"})
    statistic: str | None = None
    baseline_recheck: dict[str, Any] | None = None  # Stats JSON: {"p25", "p50", "p90", "n"}
    drift: float | None = None
    max_drift: float | None = None
    interference: bool | None = None
    attempts: int | None = None
    metric: str | None = None


@dataclass
class Speedup(Section):
    """``speedup``: baseline / candidate time at ``statistic``, judged against ``target`` (within ``tolerance``) and
    set beside the prediction (``prediction_source``: "table", "manifest", "workload-tables"). ``metric`` (``verify
    --workload``: the time compared, e2e | ttft | decode) and ``predicted_baseline_ms`` (a prediction from tables)
    only when set."""

    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"metric", "predicted_baseline_ms"})
    statistic: str | None = None
    metric: str | None = None
    baseline_ms: float | None = None
    candidate_ms: float | None = None
    measured: float | None = None
    target: float | None = None
    tolerance: float | None = None
    target_source: str | None = None  # "option" | "manifest"
    meets_target: bool | None = None
    target_deviation: float | None = None  # measured / target - 1
    predicted: float | None = None
    predicted_ms: float | None = None
    prediction_error: float | None = None  # measured / predicted - 1
    latency_prediction_error: float | None = None  # candidate_ms / predicted_ms - 1
    prediction_source: str | None = None
    table: dict[str, Any] | None = None  # {"path", "sha256", "fingerprint_differences"}
    predicted_baseline_ms: float | None = None


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
    timing: Timing | Any = field(default_factory=Timing.empty)  # as loaded: the raw value when not an object
    speedup: Speedup = field(default_factory=Speedup.empty)
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
        body = {k: getattr(self, k) for k in _KEYS}
        body.update(timing=_section_json(self.timing), speedup=self.speedup.to_json())
        if body["workload"] is None:
            del body["workload"]
        return copy.deepcopy({"format": VERIFY_FORMAT, "version": VERIFY_VERSION, **body})

    @staticmethod
    def from_json(payload: Any, source: str = "verify report") -> "VerifyReport":
        """A report whose structure is sound (exit 2 otherwise); its measurements are judged by the gate."""
        check_structure(payload, source)
        values = {k: payload[k] for k in _KEYS if k in payload}
        values["speedup"] = Speedup.from_json(payload["speedup"])
        if isinstance(values.get("timing"), dict):
            values["timing"] = Timing.from_json(values["timing"])
        return VerifyReport(**values)

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_json(path, self.to_json())

    @staticmethod
    def load(path: str | os.PathLike) -> "VerifyReport":
        return VerifyReport.from_json(read_json(path, "verify report"), source=str(path))


def _section_json(value: Any) -> Any:
    return value.to_json() if isinstance(value, Section) else value


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
