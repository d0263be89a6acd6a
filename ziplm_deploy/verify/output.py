"""Gate verdicts as text lines, JUnit XML (one test case per check) and Markdown (CI comments)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from .policy import Verdict


def text_lines(v: Verdict) -> list[str]:
    lines = [f"{'PASS' if c.passed else 'FAIL'}  {c.name}: {c.message}" for c in v.checks]
    n = len(v.failures)
    lines.append(f"PASSED: {len(v.checks)} checks of policy {v.policy!r}" if v.passed
                 else f"FAILED: {n} of {len(v.checks)} checks of policy {v.policy!r}: "
                      + ", ".join(c.name for c in v.failures))
    return lines


def junit_xml(v: Verdict) -> bytes:
    suite = ET.Element("testsuite", name=f"ziplm-deploy gate: {v.policy}", tests=str(len(v.checks)),
                       failures=str(len(v.failures)), errors="0", skipped="0")
    for c in v.checks:
        case = ET.SubElement(suite, "testcase", classname=f"gate.{v.policy}", name=c.name)
        if not c.passed:
            failure = ET.SubElement(case, "failure", message=c.message, type="BudgetFailed")
            failure.text = f"{c.message}\nreport: {v.report}"
        out = ET.SubElement(case, "system-out")
        out.text = c.message
    root = ET.Element("testsuites", name="ziplm-deploy gate", tests=str(len(v.checks)), failures=str(len(v.failures)))
    root.append(suite)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def _md(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(v: Verdict) -> str:
    head = "✅ **PASSED**" if v.passed else f"❌ **FAILED** ({len(v.failures)} of {len(v.checks)} checks)"
    lines = [f"### ziplm-deploy gate `{_md(v.policy)}`: {head}", "", f"Report: `{_md(v.report)}`", "",
             "| check | result | measured | allowed |", "|---|---|---|---|"]
    for c in v.checks:
        measured = "not measured" if c.measured is None else (f"{c.measured:.4g}" if isinstance(c.measured, float)
                                                              else c.measured)
        lines.append(f"| {_md(c.name)} | {'pass' if c.passed else '**FAIL**'} | {_md(measured)} | {_md(c.allowed)} |")
    fails = v.failures
    if fails:
        lines += ["", "Failures:"] + [f"- **{_md(c.name)}**: {_md(c.message)}" for c in fails]
    return "\n".join(lines) + "\n"
