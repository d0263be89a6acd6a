"""``ziplm-deploy gate --policy POLICY.yaml --report VERIFY.json [--junit OUT.xml] [--markdown OUT.md]``

Exit 0: every budget passed; 1: a budget failed (each named, measured vs allowed), including missing,
non-finite, out-of-range or mistyped measurements, parity flags other than ``true``, an errored
measurement, a device mismatch and a generation budget (``min_ttft_speedup``, ``min_decode_speedup``,
``min_e2e_speedup``, ``min_tokens_per_s``, ``max_ttft_ms``) on a report without the ``workload`` block of
``verify --workload`` (the gate fails closed); 2: bad input, before anything is written: a
malformed policy or report (one line naming the file and key), an output path that cannot be written.
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

    _check_outputs(args)
    policy = Policy.load(args.policy)
    report = VerifyReport.load(args.report)
    verdict = judge(policy, report, str(args.report))
    if args.junit:
        atomic_write_bytes(args.junit, junit_xml(verdict))
    if args.markdown:
        atomic_write_bytes(args.markdown, markdown(verdict).encode())
    print("\n".join(text_lines(verdict)))
    return 0 if verdict.passed else 1


def _check_outputs(args: argparse.Namespace) -> None:
    """--junit/--markdown writable, distinct, and neither the policy nor the report they describe."""
    from pathlib import Path

    from ..core.checks import check_output_path
    from ..core.errors import UserError

    inputs = {Path(args.policy).resolve(): "--policy", Path(args.report).resolve(): "--report"}
    for flag, path in (("--junit", args.junit), ("--markdown", args.markdown)):
        if not path:
            continue
        check_output_path(path, flag)
        target = Path(path).resolve()
        if target in inputs:
            raise UserError(f"{flag} {path} is the {inputs[target]} file", "write the output elsewhere")
        inputs[target] = flag
