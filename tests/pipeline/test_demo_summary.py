"""The demo's summary shows quality against dense for every member and why a member failed its gate."""

from __future__ import annotations

from pathlib import Path

import pytest

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


def test_chat_summary_shows_generation_measured_and_predicted_and_quality():
    from ziplm_deploy.pipeline.demo import ChatReport, ChatRow, format_chat_report

    report = ChatReport("runs/demo-chat", "reference", seconds=2.0, gate_failed=True, rows=[
        ChatRow("dense", None, 1400.0, 1450.0, 20.0, 19.5, 1.0, 1.0, 40.0, None),
        ChatRow("ziplm-1.5x", 1.5, 900.0, 950.0, 30.1, 29.0, 1.52, 1.50, 100.0, True, "PASSED", folder="f15"),
        ChatRow("ziplm-2x", 2.0, 700.0, 720.0, 40.2, 39.0, 2.03, 2.00, 400.0, False, "FAILED",
                ("max_perplexity_increase", "parity"), folder="f2")])
    text = format_chat_report(report)
    lines = text.splitlines()
    assert "measured / predicted" in lines[0] and "TTFT ms" in lines[1] and "tokens/s" in lines[1]
    assert lines[3].split()[0] == "dense" and "1400 / 1450" in lines[3] and "1.00x / 1.00x" in lines[3]
    assert "30.1 / 29.0" in lines[4] and "1.52x / 1.50x" in lines[4] and "2.50x" in lines[4]
    assert lines[4].split()[-2:] == ["exact", "PASSED"]
    assert "10.00x" in lines[5] and lines[5].split()[-2:] == ["FAIL", "FAILED"]
    assert "ziplm-2x FAILED the gate on: max_perplexity_increase, parity" in text
    assert "GenAI folders: ziplm-1.5x: f15; ziplm-2x: f2" in text


def test_chat_demo_refuses_options_it_does_not_take(capsys, tmp_path):
    """`demo --workload chat` refuses a prefill length and a quantized precision in one line, exit 2, before any
    work (nothing written)."""
    from ziplm_deploy.cli import main

    for extra, words in ((["--seq", "64"], "--seq does not go with --workload chat"),
                         (["--precision", "int8-dynamic"], "--workload chat generates with fp32 GenAI folders")):
        assert main(["demo", "--workload", "chat", "--out", str(tmp_path / "d"), *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, err
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("workload", [[], ["--workload", "chat"]])
def test_a_run_folder_that_cannot_be_made_is_one_line(workload, capsys):
    """An output folder on a pseudo-filesystem passes the writability pre-check (its parent exists) but cannot be
    made: one line naming it, exit 2, before any work (both demos; every command that makes its output folder)."""
    from ziplm_deploy.cli import main

    assert main(["demo", *workload, "--out", "/proc/ziplm-nope/run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write /proc/ziplm-nope/run" in err, err


@pytest.mark.slow  # ~6 min: the real SmolLM2 pruned for chat, exported to GenAI folders, generation timed
def test_chat_demo_end_to_end(tmp_path):
    """`demo --workload chat` (small settings) on the real SmolLM2 with the stored chat tables: one member searched
    on end-to-end time, its GenAI folder token-exact with transformers, generation timed and predicted, quality
    measured, and the gate's verdict the one its budgets give."""
    from ziplm_deploy.pipeline.demo import reference_workload_if_measured_here, run_chat_demo

    report = run_chat_demo(tmp_path / "chat", targets=(1.5,), rounds=2, windows=8, probe_windows=1, log=lambda s: None)
    dense, member = report.rows
    assert dense.name == "dense" and member.name == "ziplm-1.5x" and member.target == 1.5
    assert member.token_exact is True and member.folder and (Path(member.folder) / "genai_config.json").is_file()
    for row in (dense, member):
        assert row.ttft_ms > 0 and row.tokens_per_s > 0 and row.perplexity > 1
        assert row.ttft_predicted_ms > 0 and row.tokens_per_s_predicted > 0
    assert member.e2e_speedup > 1.0 and 1.5 * (1 - 1e-6) <= member.e2e_speedup_predicted < 1.6
    over_budget = member.perplexity > 3 * dense.perplexity
    assert ("max_perplexity_increase" in member.failed_checks) == over_budget
    assert report.table_source == ("reference" if reference_workload_if_measured_here(1) else "measured now")
    page = (tmp_path / "chat" / "report.html").read_text()
    assert "Generation in ONNX Runtime GenAI" in page
