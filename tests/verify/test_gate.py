"""gate: strict policies, budgets named with measured vs allowed, fail-closed cases, JUnit XML and Markdown."""

from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from ziplm_deploy.cli import main
from ziplm_deploy.core.errors import UserError
from ziplm_deploy.verify.policy import Policy, judge
from ziplm_deploy.verify.report import VerifyReport

ROOT = Path(__file__).resolve().parents[2]
FP = {"cpu": "AMD EPYC", "cores": 2, "gpu": None, "runtime": "onnxruntime", "runtime_version": "1.32.0",
      "provider": "CPUExecutionProvider", "opt_level": "all", "threads": 1, "dtype": "float32", "batch": 1, "seq": 128,
      "mode": "prefill", "kv_len": 0, "opset": 18, "platform": "Linux x86_64", "producer": "ziplm-deploy 0.1.0"}
LAT = {"p25": 40.0, "p50": 41.0, "p90": 45.0, "n": 50}
REPORT = {
    "format": "ziplm-deploy/verify-report", "version": 1, "producer": "ziplm-deploy 0.1.0", "created": "now",
    "status": "ok", "error": None, "runtime": {"name": "ort-cpu", "threads": 1, "opt_level": "all"},
    "inputs": {"batch": 1, "seq": 128}, "protocol": {"statistic": "p25"}, "fingerprint": FP,
    "baseline": {"source": "dense", "kind": "onnx", "latency": {"p25": 80.0, "p50": 81.0, "p90": 90.0, "n": 50}},
    "candidate": {"source": "pruned", "kind": "onnx", "latency": LAT},
    "timing": {"statistic": "p25", "drift": 0.01, "interference": False},
    "speedup": {"statistic": "p25", "baseline_ms": 80.0, "candidate_ms": 40.0, "measured": 2.0, "target": 2.0,
                "tolerance": 0.05, "meets_target": True, "target_deviation": 0.0, "predicted": 2.1, "predicted_ms": 38.0,
                "prediction_error": -0.0476, "latency_prediction_error": 0.0526, "prediction_source": "table"},
    "parity": {"reference": "pytorch", "atol": 1e-4, "rtol": 1e-3, "ok": True,
               "outputs": [{"name": "logits", "max_abs": 2e-5, "mean_abs": 1e-6, "ref_max": 10.0, "tolerance": 0.0101,
                            "ok": True}]},
    "quality": {"metric": "perplexity", "baseline": 10.0, "candidate": 10.4, "data": "wikipedia", "source": "eval"},
}
BUDGETS = {"max_latency_ms": 45, "min_speedup": 1.9, "max_target_shortfall": 0.05, "max_prediction_error": 0.1,
           "max_latency_prediction_error": 0.1, "max_perplexity_increase": 0.05, "max_parity_abs_error": 1e-4,
           "max_parity_mean_error": 1e-5, "max_timing_drift": 0.05}
POLICY = {"version": 1, "name": "release", "device": {"cpu": "AMD EPYC", "runtime": "onnxruntime", "threads": 1},
          "budgets": BUDGETS}


def verdict(report=None, policy=None):
    return judge(Policy.from_dict(copy.deepcopy(policy or POLICY), "policy.yaml"),
                 VerifyReport.from_json(copy.deepcopy(report or REPORT)))


def failing(v) -> dict[str, str]:
    return {c.name: c.message for c in v.failures}


def test_all_budgets_pass():
    v = verdict()
    assert v.passed and len(v.checks) == 12  # measurement, device, 9 budgets, parity
    assert {c.name for c in v.checks} >= set(BUDGETS) | {"measurement", "device", "parity"}


@pytest.mark.parametrize("path,value,name,message", [
    (("candidate", "latency", "p25"), 50.0, "max_latency_ms", "measured 50, allowed <= 45 ms"),
    (("speedup", "measured"), 1.5, "min_speedup", "measured 1.5, allowed >= 1.9x"),
    (("speedup", "target_deviation"), -0.2, "max_target_shortfall", "measured -0.2, allowed >= -0.05"),
    (("speedup", "prediction_error"), -0.3, "max_prediction_error", "measured -0.3, allowed |error| <= 0.1"),
    (("speedup", "latency_prediction_error"), 0.25, "max_latency_prediction_error", "measured 0.25"),
    (("quality", "candidate"), 11.0, "max_perplexity_increase", "measured 0.1, allowed <= 0.05 (relative)"),
    (("timing", "drift"), -0.3, "max_timing_drift", "measured -0.3, allowed |drift| <= 0.05"),
    (("fingerprint", "cpu"), "Intel Xeon", "device", "cpu: policy 'AMD EPYC' != measured 'Intel Xeon'"),
])
def test_each_budget_fails_named_with_measured_and_allowed(path, value, name, message):
    report = copy.deepcopy(REPORT)
    d = report
    for key in path[:-1]:
        d = d[key]
    d[path[-1]] = value
    v = verdict(report)
    assert not v.passed and list(failing(v)) == [name]
    assert message in failing(v)[name]


def test_parity_budgets_and_flag():
    report = copy.deepcopy(REPORT)
    report["parity"]["outputs"][0].update(max_abs=0.5, mean_abs=0.01, ok=False)
    report["parity"]["ok"] = False
    assert set(failing(verdict(report))) == {"max_parity_abs_error", "max_parity_mean_error", "parity"}


def test_accuracy_drop():
    report = copy.deepcopy(REPORT)
    report["quality"] = {"metric": "accuracy", "baseline": 0.90, "candidate": 0.85, "data": "d", "source": "eval"}
    policy = {"version": 1, "budgets": {"max_accuracy_drop": 0.01}}
    v = verdict(report, policy)
    assert list(failing(v)) == ["max_accuracy_drop"] and "measured 0.05" in failing(v)["max_accuracy_drop"]
    policy["budgets"]["max_accuracy_drop"] = 0.1
    assert verdict(report, policy).passed


# --- fail closed ---------------------------------------------------------------------------------------
def test_fail_closed_on_an_errored_measurement():
    report = copy.deepcopy(REPORT)
    report.update(status="error", error="onnxruntime could not load the model")
    v = verdict(report)
    assert "measurement" in failing(v) and "could not load the model" in failing(v)["measurement"]


@pytest.mark.parametrize("drop,name", [
    (("speedup", "measured"), "min_speedup"),
    (("candidate", "latency"), "max_latency_ms"),
    (("speedup", "prediction_error"), "max_prediction_error"),
    (("speedup", "target_deviation"), "max_target_shortfall"),
    (("quality",), "max_perplexity_increase"),
    (("parity",), "parity"),
    (("timing", "drift"), "max_timing_drift"),
])
def test_fail_closed_on_a_missing_measurement(drop, name):
    report = copy.deepcopy(REPORT)
    d = report
    for key in drop[:-1]:
        d = d[key]
    d[drop[-1]] = None
    v = verdict(report)
    assert name in failing(v) and "not measured (the gate fails closed)" in failing(v)[name]


def test_fail_closed_on_fingerprint_mismatch_or_absence():
    report = copy.deepcopy(REPORT)
    report["fingerprint"]["threads"] = 2
    assert "threads: policy 1 != measured 2" in failing(verdict(report))["device"]
    report["fingerprint"] = None
    assert "no fingerprint" in failing(verdict(report))["device"]


def test_parity_with_an_infinite_error_fails():
    report = copy.deepcopy(REPORT)
    report["parity"]["outputs"][0].update(max_abs=None, mean_abs=None, ok=False)  # shape mismatch: stored as null
    assert {"max_parity_abs_error", "max_parity_mean_error", "parity"} <= set(failing(verdict(report)))


# --- strict policies --------------------------------------------------------------------------------------
@pytest.mark.parametrize("policy,message", [
    ({"version": 1, "budget": {}}, "unknown key(s) budget (did you mean budgets?)"),
    ({"version": 1, "budgets": {"min_speedp": 2}},
     "unknown key(s) budgets.min_speedp (did you mean budgets.min_speedup?)"),
    ({"version": 1, "device": {"gpu_name": "x"}}, "unknown key(s) device.gpu_name"),
    ({"budgets": {"min_speedup": 2}}, "version must be 1"),
    ({"version": 1, "budgets": {"min_speedup": "fast"}}, "budgets.min_speedup must be a non-negative number"),
    ({"version": 1, "budgets": {"min_speedup": -1}}, "budgets.min_speedup must be a non-negative number"),
    ({"version": 1, "require_parity_ok": False}, "the policy checks nothing"),
    ({"version": 1, "format": "other", "budgets": {"min_speedup": 1}}, "format is 'other'"),
    (["min_speedup"], "expected a mapping"),
])
def test_policy_is_strict(policy, message):
    with pytest.raises(UserError) as e:
        Policy.from_dict(policy, "p.yaml")
    assert message in str(e.value)


# --- CLI: exit codes, JUnit, Markdown ------------------------------------------------------------------
@pytest.fixture
def files(tmp_path):
    report = tmp_path / "verify.json"
    report.write_text(json.dumps(REPORT))
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(POLICY))
    return tmp_path, report, policy


def test_cli_pass_and_fail_with_junit_and_markdown(files, capsys):
    tmp, report, policy = files
    assert main(["gate", "--policy", str(policy), "--report", str(report), "--junit", str(tmp / "ok.xml")]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("PASSED: 12 checks")
    suite = ET.parse(tmp / "ok.xml").getroot().find("testsuite")
    assert suite.get("tests") == "12" and suite.get("failures") == "0" and len(suite.findall("testcase")) == 12

    bad = copy.deepcopy(REPORT)
    bad["speedup"]["measured"] = 1.2
    bad["quality"] = None
    report.write_text(json.dumps(bad))
    assert main(["gate", "--policy", str(policy), "--report", str(report), "--junit", str(tmp / "bad.xml"),
                 "--markdown", str(tmp / "bad.md")]) == 1
    out = capsys.readouterr().out
    assert "FAIL  min_speedup: measured speedup: measured 1.2, allowed >= 1.9x" in out
    assert out.strip().splitlines()[-1] == ("FAILED: 2 of 12 checks of policy 'release': min_speedup, "
                                            "max_perplexity_increase")
    root = ET.parse(tmp / "bad.xml").getroot()
    cases = {c.get("name"): c for c in root.iter("testcase")}
    assert root.get("failures") == "2" and len(cases) == 12
    failure = cases["min_speedup"].find("failure")
    assert failure is not None and "measured 1.2, allowed >= 1.9x" in failure.get("message")
    assert cases["device"].find("failure") is None
    md = (tmp / "bad.md").read_text()
    assert "❌ **FAILED** (2 of 12 checks)" in md and "| min_speedup | **FAIL** | 1.2 | >= 1.9x |" in md
    assert "| max_perplexity_increase | **FAIL** | not measured |" in md


def test_cli_bad_input_exits_2(files, capsys):
    tmp, report, policy = files

    def fails(argv, message):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err

    bad_policy = tmp / "bad.yaml"
    bad_policy.write_text("version: 1\nbudgets:\n  min_speedup: 2\n  max_latency: 3\n")
    fails(["gate", "--policy", str(bad_policy), "--report", str(report)], "unknown key(s) budgets.max_latency")
    bad_policy.write_text("version: 1\nbudgets: [\n")
    fails(["gate", "--policy", str(bad_policy), "--report", str(report)], "is not valid YAML")
    fails(["gate", "--policy", str(tmp / "none.yaml"), "--report", str(report)], "policy not found")
    other = tmp / "other.json"
    other.write_text(json.dumps({"format": "ziplm-deploy/demo-report", "version": 1}))
    fails(["gate", "--policy", str(policy), "--report", str(other)], "expected 'ziplm-deploy/verify-report'")
    other.write_text(json.dumps({**REPORT, "speedups": {}}))
    fails(["gate", "--policy", str(policy), "--report", str(other)], "unknown ['speedups'] keys")
    assert not list(tmp.glob("*.xml"))


def test_demo_policies_parse():
    for name in ("demo-pass", "demo-impossible"):
        assert Policy.load(ROOT / "policies" / f"{name}.yaml").name == name


def test_verify_report_round_trip_and_header(tmp_path):
    rep = VerifyReport.from_json(copy.deepcopy(REPORT))
    assert rep.to_json() == REPORT
    rep.save(tmp_path / "v.json")
    assert VerifyReport.load(tmp_path / "v.json") == rep
    with pytest.raises(UserError, match="version 2 is not supported"):
        VerifyReport.from_json({**REPORT, "version": 2})
    with pytest.raises(UserError, match="status must be 'ok' or 'error'"):
        VerifyReport.from_json({**REPORT, "status": "fine"})


@pytest.mark.parametrize("ok", [True, False])
def test_a_quantized_candidate_is_judged_by_top1_not_by_an_error_bound(ok):
    """int8 logits differ from fp32 by design: the error budgets follow the top-1 verdict of the report (a
    failed top-1 agreement still fails them), and only for a report whose tolerance kind says top-1."""
    report = copy.deepcopy(REPORT)
    report["parity"].update(ok=ok, tolerance={"kind": "top1-agreement", "min_top1_agreement": 0.1})
    report["parity"]["outputs"][0].update(max_abs=3.5, mean_abs=0.4, ok=ok, top1_agreement=0.4 if ok else 0.02)
    checks = {c.name: c for c in verdict(report).checks}
    for name in ("max_parity_abs_error", "max_parity_mean_error"):
        assert checks[name].passed is ok and checks[name].measured == "top-1 agreement", checks[name]
    report["parity"]["tolerance"] = {"kind": "atol-rtol"}  # an fp32 candidate with those errors fails the bound
    checks = {c.name: c for c in verdict(report).checks}
    assert not checks["max_parity_abs_error"].passed and checks["max_parity_abs_error"].measured == 3.5
