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
      # generation (a report of `verify --workload`: its workload block; any other report fails these)
      min_ttft_speedup: 1.5            # baseline / candidate time to first token
      min_decode_speedup: 1.5          # baseline / candidate ms per token (= the tokens/s ratio)
      min_e2e_speedup: 1.5             # baseline / candidate end-to-end time of the G tokens
      min_tokens_per_s: 20.0           # candidate decode throughput (batch * 1000 / ms per token)
      max_ttft_ms: 250.0               # candidate time to first token (the block's statistic, p25)
    require_parity_ok: true            # every output within the report's own atol/rtol (default true)

Fail closed: a report whose status is not ``ok`` or whose ``error`` is set, a budget whose measurement is
missing (null), not finite (NaN, Infinity), out of range (a latency < 0, a perplexity <= 0) or of the wrong
type (a string, a list, a bool: ``true`` is not 1), a parity flag that is anything but a JSON ``true``,
a fingerprint that does not match ``device`` (or no fingerprint at all), a generation budget on a report
without a ``workload`` block (or with a null metric: ``min_decode_speedup`` of a G = 1 workload) fail
the gate (exit 1); every measurement is read through ``read_value`` (``read_number`` where it sits in a
dict), the one rule. A policy without any budget is refused: it could only pass vacuously.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from ..core.errors import UserError
from ..core.fingerprint import DeviceFingerprint
from .report import Timing, VerifyReport

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
    min_ttft_speedup: float | None = None
    min_decode_speedup: float | None = None
    min_e2e_speedup: float | None = None
    min_tokens_per_s: float | None = None
    max_ttft_ms: float | None = None


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
        if type(d.get("version")) is not int or d["version"] != POLICY_VERSION:  # true and 1.0 are not 1
            raise UserError(f"{source}: version must be {POLICY_VERSION}, got {d.get('version')!r}",
                            "add `version: 1` at the top")
        device = _section(d, "device", source, "a mapping of fingerprint fields")
        _unknown(device, tuple(f.name for f in fields(DeviceFingerprint)), source, "device.")
        for key, value in device.items():
            _check_device_value(key, value, source)
        budgets = _section(d, "budgets", source, "a mapping of budget names to numbers")
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
        if not isinstance(name, str) or not name:
            raise UserError(f"{source}: name must be a non-empty string, got {name!r}")
        return Policy(name, dict(device), Budgets(**{k: float(v) for k, v in budgets.items()}), require)

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


def _section(d: dict[str, Any], key: str, source: str, what: str) -> dict[str, Any]:
    value = d.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"{source}: '{key}' must be {what}, got {value!r}")
    return value


# DeviceFingerprint field -> the JSON types its value may have (bool is never an int here).
_DEVICE_TYPES = {"str": (str,), "int": (int,), "str | None": (str, type(None))}


def _check_device_value(key: str, value: Any, source: str) -> None:
    kind = next(f.type for f in fields(DeviceFingerprint) if f.name == key)
    types = _DEVICE_TYPES.get(str(kind), (str, int, type(None)))
    if isinstance(value, bool) or not isinstance(value, types):
        want = " or ".join("null" if t is type(None) else {"str": "a string", "int": "an integer"}[t.__name__]
                           for t in types)
        raise UserError(f"{source}: device.{key} must be {want}, got {value!r}", "copy it from the report's fingerprint")


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
    measured: Any  # None: not measured; a str: why the measurement cannot be judged
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


# --- reading measurements: a finite number, or why there is none ---------------------------------------
NOT_MEASURED = "not measured"


@dataclass(frozen=True)
class Reading:
    """A measurement read out of a report: ``value`` is a finite float, or None and ``problem`` says why."""
    value: float | None
    problem: str = ""


def _short(x: Any, limit: int = 60) -> str:
    text = repr(x)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_number(root: Any, path: tuple[str, ...], *, prefix: str = "", lo: float | None = None,
                lo_open: bool = False, hi: float | None = None) -> Reading:
    """The number at ``root[path[0]][path[1]]...`` (named ``prefix.path`` in problems), fail closed.

    Missing or null anywhere: "not measured"; a non-object on the way, a bool, a string, a list: "must be
    ..."; NaN/inf: "not finite"; outside ``[lo, hi]`` (``lo_open``: ``> lo``): "must be >= lo"."""
    value, where = root, prefix
    for key in path:
        if value is None:
            return Reading(None, NOT_MEASURED)
        if not isinstance(value, dict):
            return Reading(None, f"{where or 'report'} must be an object, got {_short(value)}")
        value, where = value.get(key), f"{where}.{key}" if where else key
    return read_value(value, where, lo=lo, lo_open=lo_open, hi=hi)


def read_value(value: Any, where: str, *, lo: float | None = None, lo_open: bool = False,
               hi: float | None = None) -> Reading:
    """``value`` (named ``where`` in problems) as ``read_number`` judges the number it reaches."""
    if value is None:
        return Reading(None, NOT_MEASURED)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return Reading(None, f"{where} must be a number, got {_short(value)}")
    return _bounded(value, where, lo, lo_open, hi)


def _bounded(value: float, where: str, lo: float | None = None, lo_open: bool = False,
             hi: float | None = None) -> Reading:
    try:
        x = float(value)
    except OverflowError:  # a JSON integer beyond any float
        x = math.inf
    if not math.isfinite(x):
        return Reading(None, f"{where} is not finite ({x!r})")
    if lo is not None and (x <= lo if lo_open else x < lo):
        return Reading(None, f"{where} must be {'>' if lo_open else '>='} {lo:g}, got {_short(value)}")
    if hi is not None and x > hi:
        return Reading(None, f"{where} must be <= {hi:g}, got {_short(value)}")
    return Reading(x)


def _fmt(x: Any) -> str:
    if x is None:
        return NOT_MEASURED
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def _budget(name: str, reading: Reading, allowed: str, passes: Callable[[float], bool], what: str) -> Check:
    """One budget check; anything but a finite number fails it (the gate fails closed)."""
    if reading.value is None:
        measured = None if reading.problem == NOT_MEASURED else reading.problem
        return Check(name, False, measured, allowed, f"{what}: {reading.problem} (the gate fails closed)")
    v = reading.value
    return Check(name, bool(passes(v)), v, allowed, f"{what}: measured {_fmt(v)}, allowed {allowed}")


# --- the checks -------------------------------------------------------------------------------------------
def judge(policy: Policy, report: VerifyReport, report_name: str = "verify.json") -> Verdict:
    b = policy.budgets
    checks = [_measurement_check(report)]
    if policy.device:
        checks.append(_device_check(policy.device, report.fingerprint))
    checks += _speed_checks(b, report)
    checks += _workload_checks(b, report.workload)
    checks += _quality_checks(b, report.quality)
    checks += _parity_checks(b, report.parity, policy.require_parity_ok)
    if b.max_timing_drift is not None:
        limit = b.max_timing_drift
        checks.append(_budget("max_timing_drift", _timing_drift(report.timing),
                              f"|drift| <= {limit:g}", lambda v: abs(v) <= limit, "baseline re-timed at the end moved by"))
    return Verdict(policy.name, report_name, checks)


def _measurement_check(report: VerifyReport) -> Check:
    ok = report.status == "ok" and report.error is None
    if ok:
        return Check("measurement", True, report.status, "status ok", "measurement completed")
    error = report.error if isinstance(report.error, str) and report.error else None
    why = error or (f"error {_short(report.error)}" if report.error is not None else f"status {report.status!r}")
    return Check("measurement", False, report.status, "status ok", f"measurement errored: {why}")


def _timing_drift(timing: Any) -> Reading:
    """The re-timed baseline's drift; a ``timing`` that is not an object (as loaded) is judged as such."""
    if isinstance(timing, Timing):
        return read_value(timing.drift, "timing.drift")
    return read_number(timing, ("drift",), prefix="timing")


def _speed_checks(b: Budgets, report: VerifyReport) -> list[Check]:
    sp, checks = report.speedup, []
    if b.max_latency_ms is not None:
        limit, stat = b.max_latency_ms, sp.statistic if sp.has("statistic") else "p25"
        reading = (read_number(report.candidate, ("latency", stat), prefix="candidate", lo=0) if isinstance(stat, str)
                   else Reading(None, f"speedup.statistic must be a string such as 'p25', got {_short(stat)}"))
        checks.append(_budget("max_latency_ms", reading, f"<= {limit:g} ms", lambda v: v <= limit,
                              f"candidate latency ({stat if isinstance(stat, str) else '?'}, ms)"))
    if b.min_speedup is not None:
        limit = b.min_speedup
        checks.append(_budget("min_speedup", read_value(sp.measured, "speedup.measured", lo=0, lo_open=True),
                              f">= {limit:g}x", lambda v: v >= limit, "measured speedup"))
    if b.max_target_shortfall is not None:
        limit = b.max_target_shortfall
        checks.append(_budget("max_target_shortfall", read_value(sp.target_deviation, "speedup.target_deviation"),
                              f">= -{limit:g} (measured/target - 1)", lambda v: v >= -limit,
                              f"deviation from the target {_fmt(sp.target)}x"))
    for name, key, what in (("max_prediction_error", "prediction_error", "speedup prediction error (measured/predicted - 1)"),
                            ("max_latency_prediction_error", "latency_prediction_error", "latency prediction error")):
        limit = getattr(b, name)
        if limit is not None:
            checks.append(_budget(name, read_value(getattr(sp, key), f"speedup.{key}"), f"|error| <= {limit:g}",
                                  lambda v, limit=limit: abs(v) <= limit, what))
    return checks


def _workload_checks(b: Budgets, workload: Any) -> list[Check]:
    """Generation budgets, read from the ``workload`` block of ``verify --workload`` (absent: not measured)."""
    checks = []
    for name, key, what in (("min_ttft_speedup", "ttft", "time-to-first-token speedup"),
                            ("min_decode_speedup", "decode", "decode speedup (ms per token)"),
                            ("min_e2e_speedup", "e2e", "end-to-end generation speedup")):
        limit = getattr(b, name)
        if limit is not None:
            checks.append(_budget(name, read_number(workload, ("speedup", key), prefix="workload", lo=0, lo_open=True),
                                  f">= {limit:g}x", lambda v, limit=limit: v >= limit, what))
    if b.min_tokens_per_s is not None:
        limit = b.min_tokens_per_s
        checks.append(_budget("min_tokens_per_s", read_number(workload, ("candidate", "tokens_per_s"), prefix="workload",
                                                              lo=0, lo_open=True),
                              f">= {limit:g} tokens/s", lambda v: v >= limit, "candidate decode throughput"))
    if b.max_ttft_ms is not None:
        limit = b.max_ttft_ms
        stat = workload.get("statistic", "p25") if isinstance(workload, dict) else "p25"
        reading = (read_number(workload, ("candidate", "ttft_ms", stat), prefix="workload", lo=0)
                   if isinstance(stat, str)
                   else Reading(None, f"workload.statistic must be a string such as 'p25', got {_short(stat)}"))
        checks.append(_budget("max_ttft_ms", reading, f"<= {limit:g} ms", lambda v: v <= limit,
                              f"candidate time to first token ({stat if isinstance(stat, str) else '?'}, ms)"))
    return checks


def _quality_checks(b: Budgets, quality: Any) -> list[Check]:
    checks = []
    if b.max_perplexity_increase is not None:
        limit = b.max_perplexity_increase
        reading = _quality_reading(quality, "perplexity", lambda base, cand: cand / base - 1, lo=0, lo_open=True)
        checks.append(_budget("max_perplexity_increase", reading, f"<= {limit:g} (relative)", lambda v: v <= limit,
                              "perplexity increase over the baseline"))
    if b.max_accuracy_drop is not None:
        limit = b.max_accuracy_drop
        reading = _quality_reading(quality, "accuracy", lambda base, cand: base - cand, lo=0, hi=1)
        checks.append(_budget("max_accuracy_drop", reading, f"<= {limit:g}", lambda v: v <= limit,
                              "accuracy drop vs the baseline"))
    return checks


def _quality_reading(quality: Any, metric: str, combine: Callable[[float, float], float], **bounds: Any) -> Reading:
    """``combine(baseline, candidate)`` of a quality block of ``metric``, both values finite and in ``bounds``."""
    if quality is None:
        return Reading(None, NOT_MEASURED)
    if not isinstance(quality, dict):
        return Reading(None, f"quality must be an object, got {_short(quality)}")
    if quality.get("metric") != metric:
        got = quality.get("metric")
        return Reading(None, NOT_MEASURED if got is None else f"quality.metric is {_short(got)}, not {metric!r}")
    values = [read_number(quality, (role,), prefix="quality", **bounds) for role in ("baseline", "candidate")]
    failed = next((r for r in values if r.value is None), None)
    if failed:
        return failed
    return _bounded(combine(values[0].value, values[1].value), f"{metric} change")


def _parity_rows(parity: Any) -> tuple[list[Any], Reading | None]:
    """The parity block's output rows, or the reason there are none to judge."""
    if parity is None:
        return [], Reading(None, NOT_MEASURED)
    if not isinstance(parity, dict):
        return [], Reading(None, f"parity must be an object, got {_short(parity)}")
    rows = parity.get("outputs")
    if rows is None or rows == []:
        return [], Reading(None, NOT_MEASURED)
    if not isinstance(rows, list):
        return [], Reading(None, f"parity.outputs must be a list, got {_short(rows)}")
    return rows, None


def _parity_checks(b: Budgets, parity: Any, require_ok: bool) -> list[Check]:
    checks = []
    rows, problem = _parity_rows(parity)
    tolerance = parity.get("tolerance") if isinstance(parity, dict) else None
    top1 = isinstance(tolerance, dict) and tolerance.get("kind") == "top1-agreement"
    for name, col, limit in (("max_parity_abs_error", "max_abs", b.max_parity_abs_error),
                             ("max_parity_mean_error", "mean_abs", b.max_parity_mean_error)):
        if limit is None:
            continue
        if top1 and not problem:  # a quantized candidate: its logits differ from fp32 by design
            ok = _parity_ok_check(parity, rows, problem)
            checks.append(Check(name, ok.passed, "top-1 agreement", f"<= {limit:g} (fp32 candidates)",
                                "quantized candidate: judged by top-1 agreement with the fp32 reference instead of "
                                f"an error bound ({'within' if ok.passed else 'NOT within'} its tolerance); budget "
                                "its quality with max_perplexity_increase"))
            continue
        readings = [read_number(r, (col,), prefix=f"parity.outputs[{i}]", lo=0) for i, r in enumerate(rows)]
        worst = problem or next((r for r in readings if r.value is None), None) or Reading(max(r.value for r in readings))
        checks.append(_budget(name, worst, f"<= {limit:g}", lambda v, limit=limit: v <= limit,
                              f"worst output {col.replace('_', ' ')} error"))
    if require_ok:
        checks.append(_parity_ok_check(parity, rows, problem))
    return checks


def _parity_ok_check(parity: Any, rows: list[Any], problem: Reading | None) -> Check:
    """Only a JSON ``true`` passes: parity.ok and every row's ok (a string "false", 1 or null never does)."""
    allowed = "every output within the report's atol/rtol"
    reference = parity.get("reference", "?") if isinstance(parity, dict) else "?"
    what = f"parity vs {reference if isinstance(reference, str) else _short(reference)}"
    if problem:
        return _budget("parity", problem, allowed, bool, what)
    mistyped = [] if isinstance(parity.get("ok"), bool) else [f"parity.ok must be true or false, got {_short(parity.get('ok'))}"]
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            mistyped.append(f"parity.outputs[{i}] must be an object, got {_short(row)}")
        elif not isinstance(row.get("ok"), bool):
            mistyped.append(f"parity.outputs[{i}].ok must be true or false, got {_short(row.get('ok'))}")
    if mistyped:
        return Check("parity", False, mistyped[0], allowed, f"{what}: {'; '.join(mistyped)} (the gate fails closed)")
    failed = [str(row.get("name", i)) for i, row in enumerate(rows) if not row["ok"]]
    if parity["ok"] and not failed:
        return Check("parity", True, True, allowed, f"{what}: measured True, allowed {allowed}")
    detail = f"outputs out of tolerance: {', '.join(failed)}" if failed else "parity.ok is false"
    return Check("parity", False, False, allowed, f"{what}: {detail}, allowed {allowed}")


def _device_check(wanted: dict[str, Any], fp: Any) -> Check:
    allowed = "fingerprint matches the policy"
    if fp is None:
        return Check("device", False, None, allowed, "device: the report has no fingerprint (the gate fails closed)")
    if not isinstance(fp, dict):
        return Check("device", False, f"fingerprint must be an object, got {_short(fp)}", allowed,
                     f"device: fingerprint must be an object, got {_short(fp)} (the gate fails closed)")
    diffs = [f"{k}: policy {v!r} != measured {_short(fp[k]) if k in fp else 'missing'}"
             for k, v in wanted.items() if k not in fp or not _same(fp[k], v)]
    return Check("device", not diffs, {k: fp.get(k) for k in wanted}, allowed,
                 "device fingerprint matches" if not diffs else "device mismatch: " + "; ".join(diffs))


def _same(measured: Any, wanted: Any) -> bool:
    """Equal and, for bools and strings, of the same type: True is not 1, "1" is not 1, NaN equals nothing."""
    if isinstance(measured, (bool, str)) or isinstance(wanted, (bool, str)):
        return type(measured) is type(wanted) and measured == wanted
    return measured == wanted
