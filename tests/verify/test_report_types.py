"""``verify.json``'s typed sections (``Speedup``, ``Timing``): the keys verify writes, in its order; a loaded report
keeps every value as written (the gate judges it), unknown keys, and the keys an older report lacks stay absent,
so ``to_json(from_json(x)) == x``. Reports of real verify runs are round-tripped where the tests make them
(``conftest.assert_round_trips``)."""

from __future__ import annotations

import copy
import json
import math

import pytest

from tests.verify.test_gate import REPORT
from tests.verify.test_gate_adversarial import failures, only
from ziplm_deploy.verify.report import Speedup, Timing, VerifyReport

PREFILL_SPEEDUP = ["statistic", "baseline_ms", "candidate_ms", "measured", "target", "tolerance", "target_source",
                   "meets_target", "target_deviation", "predicted", "predicted_ms", "prediction_error",
                   "latency_prediction_error", "prediction_source", "table"]
TIMING = ["statistic", "baseline_recheck", "drift", "max_drift", "interference", "attempts"]


def round_trip(payload: dict) -> VerifyReport:
    report = VerifyReport.from_json(copy.deepcopy(payload))
    assert json.dumps(report.to_json()) == json.dumps(payload)
    return report


def full_report() -> dict:
    """REPORT with every key verify writes today (a table prediction: ``predicted_baseline_ms``)."""
    payload = copy.deepcopy(REPORT)
    payload["timing"] = {"statistic": "p25", "baseline_recheck": {"p25": 80.5, "p50": 81.0, "p90": 90.0, "n": 10},
                         "drift": 0.00625, "max_drift": 0.05, "interference": False, "attempts": 1}
    payload["speedup"].update(target_source="option", table={"path": "t.json", "sha256": "0" * 64,
                                                             "fingerprint_differences": []})
    payload["speedup"] = {k: payload["speedup"][k] for k in PREFILL_SPEEDUP} | {"predicted_baseline_ms": 79.0}
    return payload


def test_sections_are_typed():
    report = round_trip(full_report())
    assert isinstance(report.speedup, Speedup) and isinstance(report.timing, Timing)
    assert report.speedup.measured == 2.0 and report.speedup.predicted_baseline_ms == 79.0
    assert report.speedup.metric is None and report.timing.attempts == 1 and report.timing.metric is None


def test_a_fresh_section_writes_the_keys_verify_always_wrote_and_the_optional_ones_once_set():
    assert list(Speedup(statistic="p25").to_json()) == PREFILL_SPEEDUP
    assert list(Speedup(statistic="p25", metric="e2e", predicted_baseline_ms=1.0).to_json()) == \
        ["statistic", "metric", *PREFILL_SPEEDUP[1:], "predicted_baseline_ms"]
    assert list(Timing().to_json()) == TIMING and list(Timing(metric="e2e").to_json()) == [*TIMING, "metric"]
    errored = VerifyReport().fail("it broke").to_json()
    assert errored["speedup"] == {} and errored["timing"] == {} and "workload" not in errored


def test_a_report_written_before_newer_keys_loads_without_them():
    """verify 67cf1d6 wrote no timing.attempts and no speedup.predicted_baseline_ms; hand-made reports may have less."""
    old = full_report()
    del old["timing"]["attempts"], old["speedup"]["predicted_baseline_ms"], old["speedup"]["target_source"]
    report = round_trip(old)
    assert report.timing.attempts is None and not report.timing.has("attempts") and report.speedup.target_source is None
    assert round_trip(REPORT).speedup.table is None  # the gate tests' report: a handful of keys
    assert failures(only("min_speedup", 1.9), old) == {}


def test_unknown_keys_are_kept_and_written_back():
    payload = full_report()
    payload["speedup"]["from_the_future"] = {"x": 1}
    payload["timing"]["cpu_load"] = 0.5
    report = round_trip(payload)
    assert report.speedup.extra == {"from_the_future": {"x": 1}} and report.timing.extra == {"cpu_load": 0.5}


@pytest.mark.parametrize("value", ["1.9", None, True, [1.0], {"x": 1}, math.nan, math.inf, 10**400])
def test_mistyped_values_are_kept_as_written(value):
    payload = full_report()
    payload["speedup"]["measured"] = payload["timing"]["drift"] = payload["speedup"]["statistic"] = value
    report = round_trip(payload)
    for kept in (report.speedup.measured, report.timing.drift, report.speedup.statistic):
        assert type(kept) is type(value) and json.dumps(kept) == json.dumps(value)


@pytest.mark.parametrize("timing", [None, [0.01], "fast", {}])
def test_a_timing_that_is_not_an_object_stays_as_written(timing):
    payload = full_report()
    payload["timing"] = timing
    assert round_trip(payload).timing == (Timing.empty() if timing == {} else timing)


def test_a_missing_statistic_is_p25_and_a_null_one_is_judged():
    payload = full_report()
    del payload["speedup"]["statistic"]
    assert failures(only("max_latency_ms", 45), payload) == {}
    payload["speedup"]["statistic"] = None
    assert "speedup.statistic must be a string" in failures(only("max_latency_ms", 45), payload)["max_latency_ms"]
