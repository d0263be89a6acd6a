"""``ziplm-deploy gate --policy POLICY.yaml --report VERIFY.json [--junit OUT.xml] [--markdown OUT.md]``

Exit 0: every budget passed; 1: a budget failed (each named, measured vs allowed), including missing
or errored measurements and a device mismatch (the gate fails closed); 2: bad input (policy, report).
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", required=True, help="gate policy (YAML)")
    p.add_argument("--report", required=True, help="verify.json written by `ziplm-deploy verify`")
    p.add_argument("--junit", help="also write JUnit XML (one test case per check)")
    p.add_argument("--markdown", help="also write a Markdown summary (CI comment)")


def run(args: argparse.Namespace) -> int:
    from ..core.jsonio import atomic_write_bytes
    from ..verify.output import junit_xml, markdown, text_lines
    from ..verify.policy import Policy, judge
    from ..verify.report import VerifyReport

    policy = Policy.load(args.policy)
    report = VerifyReport.load(args.report)
    verdict = judge(policy, report, str(args.report))
    if args.junit:
        atomic_write_bytes(args.junit, junit_xml(verdict))
    if args.markdown:
        atomic_write_bytes(args.markdown, markdown(verdict).encode())
    print("\n".join(text_lines(verdict)))
    return 0 if verdict.passed else 1
