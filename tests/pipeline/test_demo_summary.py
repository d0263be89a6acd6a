"""The demo's summary shows quality against dense for every member and why a member failed its gate."""

from __future__ import annotations

from ziplm_deploy.pipeline.demo import DemoReport, DemoRow, format_report


def test_summary_shows_perplexity_ratio_and_failed_budgets():
    report = DemoReport("runs/demo", "reference", dense_ms=360.0, dense_perplexity=40.0, seconds=1.0, gate_failed=True,
                        rows=[DemoRow("ziplm-1.5x", 1.5, 1.5, 1.49, 241.0, 100.0, True, "PASSED"),
                              DemoRow("ziplm-2x", 2.0, 2.0, 2.01, 180.0, 1600.0, True, "FAILED",
                                      ("max_perplexity_increase",))])
    text = format_report(report)
    lines = text.splitlines()
    assert "vs dense" in lines[0]
    assert lines[2].split()[0] == "dense" and "1.00x" in lines[2]
    assert "2.50x" in lines[3] and lines[3].rstrip().endswith("PASSED")
    assert "40.00x" in lines[4] and lines[4].rstrip().endswith("FAILED")
    assert "ziplm-2x FAILED the gate on: max_perplexity_increase" in text
    assert "ziplm-1.5x FAILED" not in text
