"""Gate policies: a strict YAML file of budgets, judged against a ``verify.json``. Fails closed.

Policy file (every key optional except ``version``; unknown keys are refused with their path)::

    format: ziplm-deploy/gate-policy   # optional
    version: 1
    name: release-cpu                  # shown in the outputs
    device:                            # the measurement's fingerprint must match these fields
      cpu: "AMD EPYC"
      runtime: onnxruntime
      provider: CPUExecutionProvider
      threads: 1
    budgets:
      max_latency_ms: 40.0             # candidate latency (the report's statistic, p25)
      min_speedup: 1.8                 # measured speedup over the baseline
      max_target_shortfall: 0.05       # measured may fall short of the target by at most 5%
      max_prediction_error: 0.10       # |measured / predicted speedup - 1|
      max_latency_prediction_error: 0.10  # |measured / predicted candidate latency - 1|
      max_perplexity_increase: 0.05    # candidate / baseline perplexity - 1
      max_accuracy_drop: 0.01          # baseline - candidate accuracy (absolute)
      max_parity_abs_error: 1.0e-3     # worst output's max |diff|
      max_parity_mean_error: 1.0e-4    # worst output's mean |diff|
      max_timing_drift: 0.10           # |drift| of the re-timed baseline (interference)
    require_parity_ok: true            # every output within the report's own atol/rtol (default true)

Fail closed: a report whose status is ``error``, a budget whose measurement is missing (null), a
fingerprint that does not match ``device`` (or no fingerprint at all) fail the gate. A policy without
any budget is refused: it could only pass vacuously.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..core.errors import UserError
from ..core.fingerprint import DeviceFingerprint
from .report import VerifyReport

POLICY_FORMAT = "ziplm-deploy/gate-policy"
POLICY_VERSION = 1
_TOP = ("format", "version", "name", "device", "budgets", "require_parity_ok")


@dataclass(frozen=True)
class Budgets:
    max_latency_ms: float | None = None
    min_speedup: float | None = None
    max_target_shortfall: float | None = None
    max_prediction_error: float | None = None
    max_latency_prediction_error: float | None = None
    max_perplexity_increase: float | None = None
    max_accuracy_drop: float | None = None
    max_parity_abs_error: float | None = None
    max_parity_mean_error: float | None = None
    max_timing_drift: float | None = None


@dataclass(frozen=True)
class Policy:
    name: str = "policy"
    device: dict[str, Any] = field(default_factory=dict)
    budgets: Budgets = Budgets()
    require_parity_ok: bool = True

    @staticmethod
    def from_dict(d: Any, source: str = "policy") -> "Policy":
        if not isinstance(d, dict):
            raise UserError(f"{source}: expected a mapping with 'version' and 'budgets'")
        _unknown(d, _TOP, source, "")
        if "format" in d and d["format"] != POLICY_FORMAT:
            raise UserError(f"{source}: format is {d['format']!r}, expected {POLICY_FORMAT!r}")
        if d.get("version") != POLICY_VERSION:
            raise UserError(f"{source}: version must be {POLICY_VERSION}, got {d.get('version')!r}",
                            "add `version: 1` at the top")
        device = d.get("device") or {}
        if not isinstance(device, dict):
            raise UserError(f"{source}: 'device' must be a mapping of fingerprint fields")
        _unknown(device, tuple(f.name for f in fields(DeviceFingerprint)), source, "device.")
        budgets = d.get("budgets") or {}
        if not isinstance(budgets, dict):
            raise UserError(f"{source}: 'budgets' must be a mapping")
        _unknown(budgets, tuple(f.name for f in fields(Budgets)), source, "budgets.")
        for key, value in budgets.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise UserError(f"{source}: budgets.{key} must be a non-negative number, got {value!r}")
        require = d.get("require_parity_ok", True)
        if not isinstance(require, bool):
            raise UserError(f"{source}: require_parity_ok must be true or false, got {require!r}")
        if not budgets and not device and not require:
            raise UserError(f"{source}: the policy checks nothing", "add budgets (e.g. budgets.min_speedup)")
        name = d.get("name", Path(source).stem)
        return Policy(str(name), dict(device), Budgets(**{k: float(v) for k, v in budgets.items()}), require)

    @staticmethod
    def load(path: str | os.PathLike) -> "Policy":
        import yaml

        path = Path(path)
        if not path.is_file():
            raise UserError(f"policy not found: {path}", "check the path")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise UserError(f"policy {path} is not valid YAML: {str(e).splitlines()[0]}") from None
        return Policy.from_dict(data, str(path))


def _unknown(d: dict[str, Any], allowed: tuple[str, ...], source: str, prefix: str) -> None:
    bad = sorted(str(k) for k in d if k not in allowed)
    if bad:
        import difflib

        hints = [f"{prefix}{b} (did you mean {prefix}{m[0]}?)" if (m := difflib.get_close_matches(b, allowed, 1))
                 else f"{prefix}{b}" for b in bad]
        raise UserError(f"{source}: unknown key(s) {', '.join(hints)}", f"allowed under '{prefix[:-1] or 'top level'}': "
                        f"{', '.join(allowed)}")


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    measured: Any  # None: not measured
    allowed: str
    message: str


@dataclass
class Verdict:
    policy: str
    report: str
    checks: list[Check]

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]


def _fmt(x: Any) -> str:
    if x is None:
        return "not measured"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def judge(policy: Policy, report: VerifyReport, report_name: str = "verify.json") -> Verdict:
    checks: list[Check] = []

    def add(name: str, measured: Any, allowed: str, ok: bool | None, what: str) -> None:
        if measured is None:
            checks.append(Check(name, False, None, allowed, f"{what}: not measured (the gate fails closed)"))
        else:
            message = f"{what}: measured {_fmt(measured)}, allowed {allowed}"
            checks.append(Check(name, bool(ok), measured, allowed, message))

    ok = report.ok
    errored = f"measurement errored: {report.error or 'status ' + report.status}"
    checks.append(Check("measurement", ok, report.status, "status ok", "measurement completed" if ok else errored))
    _device(policy, report, checks)
    b, sp = policy.budgets, report.speedup or {}
    cand_lat = (report.candidate or {}).get("latency") or {}
    stat = sp.get("statistic", "p25")
    if b.max_latency_ms is not None:
        v = cand_lat.get(stat)
        add("max_latency_ms", v, f"<= {b.max_latency_ms:g} ms", v is not None and v <= b.max_latency_ms,
            f"candidate latency ({stat}, ms)")
    if b.min_speedup is not None:
        v = sp.get("measured")
        add("min_speedup", v, f">= {b.min_speedup:g}x", v is not None and v >= b.min_speedup, "measured speedup")
    if b.max_target_shortfall is not None:
        v = sp.get("target_deviation")
        add("max_target_shortfall", v, f">= -{b.max_target_shortfall:g} (measured/target - 1)",
            v is not None and v >= -b.max_target_shortfall, f"deviation from the target {_fmt(sp.get('target'))}x")
    if b.max_prediction_error is not None:
        v = sp.get("prediction_error")
        add("max_prediction_error", v, f"|error| <= {b.max_prediction_error:g}",
            v is not None and abs(v) <= b.max_prediction_error, "speedup prediction error (measured/predicted - 1)")
    if b.max_latency_prediction_error is not None:
        v = sp.get("latency_prediction_error")
        add("max_latency_prediction_error", v, f"|error| <= {b.max_latency_prediction_error:g}",
            v is not None and abs(v) <= b.max_latency_prediction_error, "latency prediction error")
    q = report.quality or {}
    if b.max_perplexity_increase is not None:
        v = None
        if q.get("metric") == "perplexity" and q.get("baseline") and q.get("candidate") is not None:
            v = q["candidate"] / q["baseline"] - 1
        add("max_perplexity_increase", v, f"<= {b.max_perplexity_increase:g} (relative)",
            v is not None and v <= b.max_perplexity_increase, "perplexity increase over the baseline")
    if b.max_accuracy_drop is not None:
        v = None
        if q.get("metric") == "accuracy" and q.get("baseline") is not None and q.get("candidate") is not None:
            v = q["baseline"] - q["candidate"]
        add("max_accuracy_drop", v, f"<= {b.max_accuracy_drop:g}", v is not None and v <= b.max_accuracy_drop,
            "accuracy drop vs the baseline")
    rows = (report.parity or {}).get("outputs") or []
    for key, col, limit in (("max_parity_abs_error", "max_abs", b.max_parity_abs_error),
                            ("max_parity_mean_error", "mean_abs", b.max_parity_mean_error)):
        if limit is None:
            continue
        vals = [r.get(col) for r in rows]
        v = None if not vals or any(x is None for x in vals) else max(vals)
        add(key, v, f"<= {limit:g}", v is not None and v <= limit, f"worst output {col.replace('_', ' ')} error")
    if policy.require_parity_ok:
        par = report.parity
        v = None if not par or not rows else bool(par.get("ok")) and all(r.get("ok") for r in rows)
        add("parity", v, "every output within the report's atol/rtol", v,
            f"parity vs {(par or {}).get('reference', '?')}")
    if b.max_timing_drift is not None:
        v = (report.timing or {}).get("drift")
        add("max_timing_drift", v, f"|drift| <= {b.max_timing_drift:g}", v is not None and abs(v) <= b.max_timing_drift,
            "baseline re-timed at the end moved by")
    return Verdict(policy.name, report_name, checks)


def _device(policy: Policy, report: VerifyReport, checks: list[Check]) -> None:
    if not policy.device:
        return
    fp = report.fingerprint
    if not isinstance(fp, dict):
        checks.append(Check("device", False, None, "fingerprint matches the policy",
                            "device: the report has no fingerprint (the gate fails closed)"))
        return
    diffs = [f"{k}: policy {v!r} != measured {fp.get(k)!r}" for k, v in policy.device.items() if fp.get(k) != v]
    checks.append(Check("device", not diffs, {k: fp.get(k) for k in policy.device}, "fingerprint matches the policy",
                        "device fingerprint matches" if not diffs else "device mismatch: " + "; ".join(diffs)))
