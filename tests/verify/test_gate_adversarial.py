"""gate, adversarially: every budget, the parity flags and the device check against a missing, null,
non-finite (Python's json writes NaN/Infinity), mistyped or out-of-range measurement fail closed (exit 1,
the check named with why); structurally malformed reports and policies are exit 2 with one line.

Reports are built as dicts in-process from ``test_gate.REPORT`` and round-tripped through ``json`` (as
``gate`` reads them); a handful of CLI runs prove the exit codes, the one-line messages and no traceback.
"""

from __future__ import annotations

import copy
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.verify.test_gate import POLICY, REPORT
from ziplm_deploy.cli import main
from ziplm_deploy.core.errors import UserError
from ziplm_deploy.verify.policy import Policy, judge, read_number
from ziplm_deploy.verify.report import VerifyReport

MISSING = object()  # delete the key instead of setting it
NAN, INF = float("nan"), float("inf")
ACCURACY = {"metric": "accuracy", "baseline": 0.90, "candidate": 0.895, "data": "d", "source": "eval"}


def edited(path: tuple, value, base: dict | None = None) -> dict:
    """A deep copy of ``base`` (default REPORT) with ``path`` set to ``value`` (or deleted), JSON round-tripped."""
    report = copy.deepcopy(base or REPORT)
    d = report
    for key in path[:-1]:
        d = d[key]
    if value is MISSING:
        del d[path[-1]]
    else:
        d[path[-1]] = value
    return json.loads(json.dumps(report))  # NaN/Infinity survive as Python's json writes and reads them


def only(budget: str | None, limit: float = 0.0, **extra) -> Policy:
    """A policy checking one budget (parity flags off unless asked for)."""
    d = {"version": 1, "require_parity_ok": False, **extra}
    if budget:
        d["budgets"] = {budget: limit}
    return Policy.from_dict(d, "p.yaml")


def failures(policy: Policy, report: dict) -> dict[str, str]:
    return {c.name: c.message for c in judge(policy, VerifyReport.from_json(report)).failures}


# budget -> (path of its measurement, limit, a passing value, a failing value, the report to edit)
BUDGETS = {
    "max_latency_ms": (("candidate", "latency", "p25"), 45, 40.0, 50.0, REPORT),
    "min_speedup": (("speedup", "measured"), 1.9, 2.0, 1.5, REPORT),
    "max_target_shortfall": (("speedup", "target_deviation"), 0.05, 0.0, -0.2, REPORT),
    "max_prediction_error": (("speedup", "prediction_error"), 0.1, -0.05, -0.3, REPORT),
    "max_latency_prediction_error": (("speedup", "latency_prediction_error"), 0.1, 0.05, 0.25, REPORT),
    "max_perplexity_increase": (("quality", "candidate"), 0.05, 10.4, 11.0, REPORT),
    "max_accuracy_drop": (("quality", "candidate"), 0.01, 0.895, 0.85, {**REPORT, "quality": ACCURACY}),
    "max_parity_abs_error": (("parity", "outputs", 0, "max_abs"), 1e-4, 2e-5, 0.5, REPORT),
    "max_parity_mean_error": (("parity", "outputs", 0, "mean_abs"), 1e-5, 1e-6, 0.01, REPORT),
    "max_timing_drift": (("timing", "drift"), 0.05, 0.01, -0.3, REPORT),
}
BAD_VALUES = [  # (value, what the message must say)
    (MISSING, "not measured (the gate fails closed)"),
    (None, "not measured (the gate fails closed)"),
    (NAN, "is not finite (nan)"),
    (INF, "is not finite (inf)"),
    (-INF, "is not finite (-inf)"),
    ("1.9", "must be a number, got '1.9'"),
    ([1.0], "must be a number, got [1.0]"),
    (True, "must be a number, got True"),  # a bool is not a number: True is not 1.0
    (False, "must be a number, got False"),
    ({"value": 1}, "must be a number, got {'value': 1}"),
]


def test_the_table_covers_every_budget():
    from dataclasses import fields

    from test_workload_verify import WORKLOAD_BUDGETS  # the generation budgets, exercised there

    from ziplm_deploy.verify.policy import Budgets

    assert set(BUDGETS) | set(WORKLOAD_BUDGETS) == {f.name for f in fields(Budgets)}


@pytest.mark.parametrize("name", BUDGETS)
def test_each_budget_passes_and_fails_on_valid_measurements(name):
    path, limit, good, bad, base = BUDGETS[name]
    assert failures(only(name, limit), edited(path, good, base)) == {}
    failed = failures(only(name, limit), edited(path, bad, base))
    assert list(failed) == [name] and ": measured " in failed[name] and ", allowed " in failed[name], failed


@pytest.mark.parametrize("value,message", BAD_VALUES, ids=[repr(v)[:12] for v, _ in BAD_VALUES])
@pytest.mark.parametrize("name", BUDGETS)
def test_each_budget_fails_closed_on_a_bad_measurement(name, value, message):
    path, limit, _, _, base = BUDGETS[name]
    failed = failures(only(name, limit), edited(path, value, base))
    assert list(failed) == [name], failed
    assert message in failed[name]
    if "not measured" not in message:  # the problem names the key it is about
        assert f"{dotted(path)} " in failed[name], failed


def dotted(path: tuple) -> str:
    """("parity", "outputs", 0, "max_abs") -> "parity.outputs[0].max_abs"."""
    return ".".join(str(k) for k in path).replace(".0", "[0]")


@pytest.mark.parametrize("name,path,value,message", [
    ("max_latency_ms", ("candidate", "latency"), [40.0, 41.0], "candidate.latency must be an object, got [40.0, 41.0]"),
    ("max_latency_ms", ("candidate", "latency"), "40", "candidate.latency must be an object, got '40'"),
    ("max_latency_ms", ("candidate", "latency", "p25"), -1.0, "candidate.latency.p25 must be >= 0, got -1.0"),
    ("max_latency_ms", ("speedup", "statistic"), ["p25"], "speedup.statistic must be a string"),
    ("max_latency_ms", ("speedup", "statistic"), "p99", "not measured"),
    ("min_speedup", ("speedup", "measured"), 0.0, "speedup.measured must be > 0, got 0.0"),
    ("min_speedup", ("speedup", "measured"), -2.5, "speedup.measured must be > 0, got -2.5"),
    ("min_speedup", ("speedup", "measured"), 10**400, "speedup.measured is not finite (inf)"),
    ("max_timing_drift", ("timing",), [0.01], "timing must be an object, got [0.01]"),
    ("max_timing_drift", ("timing",), None, "not measured"),
    ("max_parity_abs_error", ("parity", "outputs"), [1], "parity.outputs[0] must be an object, got 1"),
    ("max_parity_abs_error", ("parity", "outputs"), "logits", "parity.outputs must be a list, got 'logits'"),
    ("max_parity_abs_error", ("parity", "outputs"), [], "not measured"),
    ("max_parity_abs_error", ("parity", "outputs", 0, "max_abs"), -1e-3, "must be >= 0"),
    ("max_parity_mean_error", ("parity",), None, "not measured"),
    ("max_perplexity_increase", ("quality", "baseline"), "10.0", "quality.baseline must be a number, got '10.0'"),
    ("max_perplexity_increase", ("quality", "baseline"), 0, "quality.baseline must be > 0, got 0"),
    ("max_perplexity_increase", ("quality", "baseline"), 0.0, "quality.baseline must be > 0, got 0.0"),
    ("max_perplexity_increase", ("quality", "baseline"), INF, "quality.baseline is not finite (inf)"),
    ("max_perplexity_increase", ("quality", "candidate"), 0.0, "quality.candidate must be > 0, got 0.0"),
    ("max_perplexity_increase", ("quality", "candidate"), -3.0, "quality.candidate must be > 0, got -3.0"),
    ("max_perplexity_increase", ("quality", "metric"), "accuracy", "quality.metric is 'accuracy', not 'perplexity'"),
    ("max_perplexity_increase", ("quality", "metric"), MISSING, "not measured"),
    ("max_perplexity_increase", ("quality",), None, "not measured"),
])
def test_mistyped_containers_and_out_of_range_values_fail_their_check(name, path, value, message):
    _, limit, _, _, base = BUDGETS[name]
    failed = failures(only(name, limit), edited(path, value, base))
    assert list(failed) == [name] and message in failed[name], failed


def test_perplexity_ratio_that_overflows_fails():
    report = edited(("quality", "candidate"), 1e308, edited(("quality", "baseline"), 1e-300))
    failed = failures(only("max_perplexity_increase", 0.05), report)
    assert "perplexity change is not finite (inf)" in failed["max_perplexity_increase"]


@pytest.mark.parametrize("path,value,message", [
    (("quality", "baseline"), 1.5, "quality.baseline must be <= 1, got 1.5"),
    (("quality", "candidate"), -0.1, "quality.candidate must be >= 0, got -0.1"),
    (("quality", "candidate"), NAN, "quality.candidate is not finite (nan)"),
    (("quality", "baseline"), "0.9", "quality.baseline must be a number, got '0.9'"),
    (("quality", "metric"), "perplexity", "quality.metric is 'perplexity', not 'accuracy'"),
])
def test_accuracy_out_of_range_or_mistyped_fails(path, value, message):
    failed = failures(only("max_accuracy_drop", 0.01), edited(path, value, {**REPORT, "quality": ACCURACY}))
    assert list(failed) == ["max_accuracy_drop"] and message in failed["max_accuracy_drop"], failed


# --- parity flags: only a JSON true passes ------------------------------------------------------------------
PARITY_OK = only(None, require_parity_ok=True)


@pytest.mark.parametrize("path", [("parity", "ok"), ("parity", "outputs", 0, "ok")], ids=["block", "row"])
@pytest.mark.parametrize("value", [MISSING, None, "true", "false", 1, 0, 1.0, NAN, [True], {"ok": True}],
                         ids=repr)
def test_parity_flag_other_than_a_json_bool_fails(path, value):
    failed = failures(PARITY_OK, edited(path, value))
    where = "parity.ok" if len(path) == 2 else "parity.outputs[0].ok"
    shown = "None" if value is MISSING else repr(value)
    assert list(failed) == ["parity"] and f"{where} must be true or false, got {shown}" in failed["parity"], failed


@pytest.mark.parametrize("edit,message", [
    ({("parity", "ok"): True}, None),
    ({("parity", "ok"): False}, "parity.ok is false"),
    ({("parity", "outputs", 0, "ok"): False}, "outputs out of tolerance: logits"),
    ({("parity", "outputs"): ["logits"]}, "parity.outputs[0] must be an object, got 'logits'"),
    ({("parity", "outputs"): {"logits": True}}, "parity.outputs must be a list"),
    ({("parity", "outputs"): []}, "not measured (the gate fails closed)"),
    ({("parity",): None}, "not measured (the gate fails closed)"),
])
def test_parity_flag_true_passes_false_fails(edit, message):
    (path, value), = edit.items()
    failed = failures(PARITY_OK, edited(path, value))
    assert (failed == {}) if message is None else (list(failed) == ["parity"] and message in failed["parity"]), failed


# --- device: fingerprint fields compared strictly ---------------------------------------------------------
DEVICE = only(None, device={"cpu": "AMD EPYC", "threads": 1})


@pytest.mark.parametrize("path,value,message", [
    (("fingerprint", "threads"), 1, None),
    (("fingerprint", "threads"), 2, "threads: policy 1 != measured 2"),
    (("fingerprint", "threads"), MISSING, "threads: policy 1 != measured missing"),
    (("fingerprint", "threads"), None, "threads: policy 1 != measured None"),
    (("fingerprint", "threads"), NAN, "threads: policy 1 != measured nan"),
    (("fingerprint", "threads"), INF, "threads: policy 1 != measured inf"),
    (("fingerprint", "threads"), "1", "threads: policy 1 != measured '1'"),
    (("fingerprint", "threads"), [1], "threads: policy 1 != measured [1]"),
    (("fingerprint", "threads"), True, "threads: policy 1 != measured True"),  # True is not 1
    (("fingerprint", "cpu"), ["AMD EPYC"], "cpu: policy 'AMD EPYC' != measured ['AMD EPYC']"),
    (("fingerprint",), MISSING, "the report has no fingerprint"),
    (("fingerprint",), None, "the report has no fingerprint"),
    (("fingerprint",), ["AMD EPYC"], "fingerprint must be an object, got ['AMD EPYC']"),
    (("fingerprint",), "AMD EPYC", "fingerprint must be an object, got 'AMD EPYC'"),
])
def test_device_check_fails_closed(path, value, message):
    failed = failures(DEVICE, edited(path, value))
    assert (failed == {}) if message is None else (list(failed) == ["device"] and message in failed["device"]), failed


# --- status and error ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("status,error,message", [
    ("error", "onnxruntime could not load the model", "measurement errored: onnxruntime could not load the model"),
    ("error", None, "measurement errored: status 'error'"),
    ("ok", "boom", "measurement errored: boom"),
    ("ok", "", "measurement errored: error ''"),
    ("ok", 5, "measurement errored: error 5"),
    ("ok", False, "measurement errored: error False"),
])
def test_errored_measurement_fails(status, error, message):
    failed = failures(only("min_speedup", 1.0), {**edited(("status",), status), "error": error})
    assert list(failed) == ["measurement"] and message in failed["measurement"], failed


# the header check (core/jsonio.py) or the report's own refuses a bool version; either wording will do
VERSION_TRUE = re.compile(r"\.json: .*version (must be the integer 1, got )?True")


def matches(expected: str | re.Pattern, text: str) -> bool:
    return bool(expected.search(text)) if isinstance(expected, re.Pattern) else expected in text


# --- structurally malformed reports: exit 2, one line naming the file and key ----------------------------------
@pytest.mark.parametrize("payload,message", [
    ([REPORT], "v.json: expected a JSON object"),
    ("report", "v.json: expected a JSON object"),
    (None, "v.json: expected a JSON object"),
    (edited(("format",), MISSING), "v.json: format is None"),
    (edited(("version",), True), VERSION_TRUE),
    (edited(("version",), 1.0), re.compile(r"v\.json: .*version (must be the integer 1, got )?1\.0")),
    (edited(("version",), "1"), "version '1' is not supported"),
    (edited(("version",), 2), "version 2 is not supported"),
    (edited(("status",), MISSING), "v.json: missing ['status']"),
    (edited(("status",), None), "v.json: status must be 'ok' or 'error', got None"),
    (edited(("status",), ["ok"]), "v.json: status must be 'ok' or 'error', got ['ok']"),
    (edited(("baseline",), [1]), "v.json: baseline must be a JSON object, got [1]"),
    (edited(("candidate",), None), "v.json: candidate must be a JSON object, got None"),
    (edited(("speedup",), "2.0"), "v.json: speedup must be a JSON object, got '2.0'"),
    (edited(("parity",), [1]), "v.json: parity must be a JSON object or null, got [1]"),
    (edited(("parity",), True), "v.json: parity must be a JSON object or null, got True"),
    (edited(("quality",), "ppl"), "v.json: quality must be a JSON object or null, got 'ppl'"),
    (edited(("quality",), 5), "v.json: quality must be a JSON object or null, got 5"),
    (edited(("runtime",), []), "v.json: runtime must be a JSON object or null"),
])
def test_malformed_report_is_refused(payload, message):
    with pytest.raises(UserError) as e:
        VerifyReport.from_json(payload, "v.json")
    assert matches(message, str(e.value)), e.value
    assert "\n" not in str(e.value)


def test_null_parity_and_quality_are_well_formed():
    rep = VerifyReport.from_json(edited(("parity",), None), "v.json")
    assert rep.parity is None and VerifyReport.from_json(edited(("quality",), None), "v.json").quality is None


# --- policies: non-numbers, NaN, bools refused ---------------------------------------------------------------
@pytest.mark.parametrize("policy,message", [
    ({"version": 1, "budgets": {"min_speedup": True}}, "budgets.min_speedup must be a non-negative number, got True"),
    ({"version": 1, "budgets": {"min_speedup": "1.9"}}, "budgets.min_speedup must be a non-negative number, got '1.9'"),
    ({"version": 1, "budgets": {"min_speedup": NAN}}, "budgets.min_speedup must be a non-negative number, got nan"),
    ({"version": 1, "budgets": {"max_latency_ms": INF}}, "budgets.max_latency_ms must be a non-negative number"),
    ({"version": 1, "budgets": {"max_latency_ms": [40]}}, "budgets.max_latency_ms must be a non-negative number"),
    ({"version": 1, "budgets": {"max_latency_ms": None}}, "budgets.max_latency_ms must be a non-negative number"),
    ({"version": True, "budgets": {"min_speedup": 1}}, "version must be 1, got True"),
    ({"version": 1.0, "budgets": {"min_speedup": 1}}, "version must be 1, got 1.0"),
    ({"version": 1, "budgets": [1]}, "'budgets' must be a mapping"),
    ({"version": 1, "budgets": "min_speedup"}, "'budgets' must be a mapping"),
    ({"version": 1, "device": ["cpu"]}, "'device' must be a mapping"),
    ({"version": 1, "device": {"threads": True}}, "device.threads must be an integer, got True"),
    ({"version": 1, "device": {"threads": "1"}}, "device.threads must be an integer, got '1'"),
    ({"version": 1, "device": {"threads": 1.5}}, "device.threads must be an integer, got 1.5"),
    ({"version": 1, "device": {"cpu": 7}}, "device.cpu must be a string, got 7"),
    ({"version": 1, "name": ["a"], "budgets": {"min_speedup": 1}}, "name must be a non-empty string"),
])
def test_policy_with_bad_values_is_refused(policy, message):
    with pytest.raises(UserError) as e:
        Policy.from_dict(policy, "p.yaml")
    assert message in str(e.value)


def test_read_number_is_the_one_rule():
    assert read_number({"a": {"b": 2}}, ("a", "b")).value == 2.0
    assert read_number({"a": {"b": True}}, ("a", "b")).problem == "a.b must be a number, got True"
    assert read_number({"a": [1]}, ("a", "b")).problem == "a must be an object, got [1]"
    assert read_number({"a": {"b": math.nan}}, ("a", "b")).problem == "a.b is not finite (nan)"
    assert read_number({}, ("a", "b")).problem == "not measured"


# --- CLI: exit codes, one line, no traceback, nothing written on bad input ------------------------------------
@pytest.fixture
def gate(tmp_path, capsys):
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(POLICY))

    def run(report, *extra: str, policy_text: str | None = None) -> tuple[int, str, str]:
        path = tmp_path / "verify.json"
        path.write_text(report if isinstance(report, str) else json.dumps(report))
        if policy_text is not None:
            policy.write_text(policy_text)
        code = main(["gate", "--policy", str(policy), "--report", str(path), *extra])
        out, err = capsys.readouterr()
        return code, out, err
    return run


@pytest.mark.parametrize("report,message", [
    (edited(("speedup", "measured"), INF), "FAIL  min_speedup: measured speedup: speedup.measured is not finite (inf)"),
    (edited(("speedup", "measured"), NAN), "FAIL  min_speedup: measured speedup: speedup.measured is not finite (nan)"),
    (edited(("speedup", "measured"), "1.9"), "speedup.measured must be a number, got '1.9'"),
    (edited(("candidate", "latency"), [40.0]), "FAIL  max_latency_ms: candidate latency (p25, ms): candidate.latency "
                                               "must be an object, got [40.0]"),
    (edited(("parity", "ok"), "false"), "FAIL  parity: parity vs pytorch: parity.ok must be true or false, got 'false'"),
    (edited(("parity", "outputs"), [0]), "parity.outputs[0] must be an object, got 0"),
    (edited(("quality", "baseline"), "10"), "quality.baseline must be a number, got '10'"),
    (edited(("timing", "drift"), True), "timing.drift must be a number, got True"),
])
def test_cli_bad_measurement_fails_exit_1(gate, tmp_path, report, message):
    code, out, err = gate(report, "--junit", str(tmp_path / "g.xml"), "--markdown", str(tmp_path / "g.md"))
    assert code == 1 and message in out and err == "", (out, err)
    assert out.strip().splitlines()[-1].startswith("FAILED: ")
    assert "FAILED" in (tmp_path / "g.md").read_text() and 'failures="0"' not in (tmp_path / "g.xml").read_text()


def test_cli_literal_infinity_in_the_file_fails(gate):
    text = json.dumps(REPORT).replace('"measured": 2.0', '"measured": Infinity')
    assert '"measured": Infinity' in text
    code, out, _ = gate(text)
    assert code == 1 and "speedup.measured is not finite (inf)" in out


@pytest.mark.parametrize("report,message", [
    ("[1, 2]", "expected a JSON object"),
    (edited(("baseline",), [1]), "baseline must be a JSON object, got [1]"),
    (edited(("parity",), "ok"), "parity must be a JSON object or null, got 'ok'"),
    (edited(("version",), True), VERSION_TRUE),
    ("{", "is not valid JSON"),
])
def test_cli_malformed_report_exits_2_with_one_line(gate, tmp_path, report, message):
    code, out, err = gate(report, "--junit", str(tmp_path / "g.xml"))
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert matches(message, err), err
    assert "verify.json" in err and "Traceback" not in err
    assert not (tmp_path / "g.xml").exists()


@pytest.mark.parametrize("policy_text,message", [
    ("version: 1\nbudgets:\n  min_speedup: .nan\n", "budgets.min_speedup must be a non-negative number, got nan"),
    ("version: 1\nbudgets:\n  min_speedup: true\n", "budgets.min_speedup must be a non-negative number, got True"),
    ("version: true\nbudgets:\n  min_speedup: 1\n", "version must be 1, got True"),
])
def test_cli_bad_policy_exits_2(gate, policy_text, message):
    code, _, err = gate(REPORT, policy_text=policy_text)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_cli_refuses_unwritable_or_clashing_outputs_before_judging(gate, tmp_path):
    (tmp_path / "afile").write_text("x")
    for extra, message in ((("--junit", str(tmp_path)), "is a folder"),
                           (("--markdown", str(tmp_path / "afile" / "g.md")), "is a file, not a folder"),
                           (("--junit", str(tmp_path / "verify.json")), "is the --report file"),
                           (("--junit", str(tmp_path / "g"), "--markdown", str(tmp_path / "g")), "is the --junit file")):
        code, out, err = gate(REPORT, *extra)
        assert code == 2 and message in err and out == "", err
    assert json.loads((tmp_path / "verify.json").read_text()) == REPORT and not (tmp_path / "g").exists()


def test_cli_subprocess_no_traceback(tmp_path):
    """The installed entry point, end to end: an Infinity speedup fails (exit 1), a list report is exit 2."""
    policy = tmp_path / "p.yaml"
    policy.write_text(yaml.safe_dump({"version": 1, "budgets": {"min_speedup": 1.5}, "require_parity_ok": False}))
    report = tmp_path / "v.json"
    root = Path(__file__).resolve().parents[2]

    def run(payload) -> subprocess.CompletedProcess:
        report.write_text(json.dumps(payload))
        return subprocess.run([sys.executable, "-m", "ziplm_deploy", "gate", "--policy", str(policy),
                               "--report", str(report)], capture_output=True, text=True, cwd=root, timeout=60)

    r = run(edited(("speedup", "measured"), INF))
    assert r.returncode == 1 and "speedup.measured is not finite (inf)" in r.stdout and r.stderr == "", r.stderr
    r = run([REPORT])
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
