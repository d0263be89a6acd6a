"""``ziplm-deploy verify --baseline DIR|ONNX --candidate DIR|ONNX --report OUT.json``

Measures both models end to end in the deployment runtime (shared protocol), checks the candidate's
output parity, and compares the measured speedup with the target and the latency table's prediction.
``--workload chat|PxG`` (decoders) times generation instead, in ONNX Runtime GenAI: time to first token,
ms per token, tokens/s and end-to-end time of both models (model directories are exported to GenAI
folders in the cache; ``export --genai`` folders are timed as they are), the candidate's greedy tokens
checked token-exact; ``--workload-tables`` adds the workload tables' prediction and its error.

Quality (perplexity or accuracy of both models) is measured whenever it can be: on ``--eval-data``; without
it, on held-out windows of a pruned member's calibration text (recorded in its manifest, still readable:
windows of the prune run's tokenisation and length that it did not draw, up to ``--eval-windows``). The
report and the summary say where the figures came from, or why quality was not measured (``--no-eval``,
the calibration data gone, no window held out): the gate's quality budgets then fail closed.

Exit 0: measured, parity within tolerance and the target (if any) met within --tolerance;
1: a check failed, parity could not be checked or a measurement errored (the report is still written);
2: bad input, refused before any timing (no report written).
"""

from __future__ import annotations

import argparse

from ..runtime import RUNTIMES
from .argtypes import nonneg_float, nonneg_int, positive_float, positive_int, ranged

below_one = ranged(0, 1, hi_open=True)  # a tolerance in [0, 1): 1 would accept any measured speedup


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--baseline", required=True, help="dense model: directory, .onnx, or .plan engine (--runtime trt)")
    p.add_argument("--candidate", required=True, help="pruned model: directory, .onnx, or .plan engine")
    p.add_argument("--runtime", default="ort-cpu", help=" | ".join(name for name, r in RUNTIMES.items() if r.deploys != "torch")
                   + " (default ort-cpu)")
    p.add_argument("--report", required=True, help="write verify.json here")
    p.add_argument("--batch", type=positive_int, default=1)
    p.add_argument("--seq", type=positive_int, default=None, help="sequence length (default 128; not with --workload)")
    p.add_argument("--threads", type=nonneg_int, default=1, help="intra-op threads (default 1)")
    p.add_argument("--opt-level", default="all", help="graph optimisation level (default all)")
    p.add_argument("--target", type=positive_float,
                   help="speedup target (default: the candidate manifest's; with --workload: of --target-metric, "
                        "option only)")
    p.add_argument("--target-metric", choices=("e2e", "ttft", "decode"), default=None,
                   help="with --workload: which speedup --target judges: end to end (default), time to first token, "
                        "or decode ms/token (a member searched with prune --budget ttft|decode)")
    p.add_argument("--tolerance", type=below_one, default=0.05,
                   help="the target counts as met at >= target * (1 - tolerance) (default 0.05)")
    p.add_argument("--table", help="latency table: also report its prediction and the prediction error")
    p.add_argument("--atol", type=nonneg_float, default=1e-4, help="parity: absolute tolerance (default 1e-4)")
    p.add_argument("--rtol", type=nonneg_float, default=1e-3, help="parity: tolerance relative to max|reference| (default 1e-3)")
    p.add_argument("--warmup", type=nonneg_int, default=5)
    p.add_argument("--rounds", type=positive_int, default=50, help="interleaved timing rounds (default 50)")
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--retries", type=nonneg_int, default=1,
                   help="measure again (up to N times) when the re-timed baseline moved: a busy machine (default 1)")
    p.add_argument("--eval-data",
                   help="measure quality of both models on this data (default: held-out windows of the candidate's "
                        "calibration text, when its manifest records it and it is still readable)")
    p.add_argument("--eval-windows", type=positive_int, default=8,
                   help="LM windows for quality, --eval-data or held-out calibration text (default 8)")
    p.add_argument("--eval-seq", type=positive_int, default=128,
                   help="LM window length for --eval-data (default 128; held-out calibration windows have the prune "
                        "run's length)")
    p.add_argument("--no-eval", action="store_true",
                   help="do not measure quality (the report says so; a gate quality budget then fails)")
    p.add_argument("--cache", help="folder for exports of model directories (default: onnx-cache beside --report)")
    p.add_argument("--workload", metavar="W",
                   help="decoders: time generation in ONNX Runtime GenAI for workload W: chat (prompt 512, generate "
                        "128) or PxG (e.g. 128x32): TTFT, ms/token, tokens/s, end to end; --baseline/--candidate are "
                        "model directories or `export --genai` folders")
    p.add_argument("--workload-tables", metavar="PATH",
                   help="with --workload: workload manifest (or its folder) from `ziplm-deploy profile --workload`: "
                        "also report the predicted TTFT / ms-per-token / end-to-end and the prediction errors")


def run(args: argparse.Namespace) -> int:
    from ..core.checks import check_output_path
    from ..core.errors import UserError
    from ..verify.measure import VerifyOptions, verify

    if args.target_metric is not None and args.workload is None:
        raise UserError("--target-metric needs --workload (one prefill pass has one speedup)",
                        "add --workload W, or drop --target-metric")
    if args.workload is not None and args.seq is not None:
        raise UserError("--seq does not go with --workload (the workload sets the prompt length)",
                        "drop --seq, or pass a workload PxG with the prompt length you want")
    opts = VerifyOptions(runtime=args.runtime, batch=args.batch, seq=args.seq or 128, threads=args.threads,
                         opt_level=args.opt_level, target=args.target, tolerance=args.tolerance, table=args.table,
                         atol=args.atol, rtol=args.rtol, warmup=args.warmup, rounds=args.rounds, seed=args.seed,
                         retries=args.retries,
                         eval_data=args.eval_data, eval_windows=args.eval_windows, eval_seq=args.eval_seq,
                         no_eval=args.no_eval,
                         workload=args.workload, workload_tables=args.workload_tables,
                         target_metric=args.target_metric or "e2e")
    out = check_output_path(args.report, "--report")
    cache = check_output_path(args.cache if args.cache else out.parent / "onnx-cache", "--cache", directory=True)
    report = verify(args.baseline, args.candidate, opts, cache)
    report.save(out)
    print(format_summary(report))
    print(f"report: {out}")
    if not report.ok:
        print(f"FAILED: {report.error}")
        return 1
    problems = []
    if not report.parity or report.parity.get("reference") == "none":
        problems.append(f"output parity not checkable: {(report.parity or {}).get('note') or 'no reference'}")
    elif not report.parity["ok"]:
        problems.append(f"output parity vs {report.parity['reference']} out of tolerance")
    sp = report.speedup
    if sp.meets_target is False:
        problems.append(f"measured speedup {sp.measured:.2f}x below target {sp.target:g}x "
                        f"(tolerance {sp.tolerance:.0%})")
    print(f"FAILED: {'; '.join(problems)}" if problems else "PASSED")
    return 1 if problems else 0


def format_summary(report) -> str:
    lines = []
    sp = report.speedup
    for role in ("baseline", "candidate"):
        lat = (getattr(report, role) or {}).get("latency")
        if lat:
            lines.append(f"{role:>9}: p25 {lat['p25']:.3f} ms  p50 {lat['p50']:.3f}  p90 {lat['p90']:.3f}  (n={lat['n']})")
    if sp.measured is not None:
        line = f"measured speedup {sp.measured:.3f}x"
        if sp.target is not None:
            line += f"  target {sp.target:g}x ({sp.target_deviation:+.1%})"
        if sp.predicted is not None:
            line += f"  predicted {sp.predicted:.3f}x ({sp.prediction_source}; error {sp.prediction_error:+.1%})"
        lines.append(line)
    if report.workload:
        lines += workload_lines(report.workload)
    if report.timing.interference:
        lines.append(f"warning: the baseline moved by {report.timing.drift:+.1%} during timing: the machine was busy")
    if report.parity and report.parity.get("reference") == "none":
        lines.append(f"parity: not checkable ({report.parity.get('note')})")
    elif report.parity:
        for r in report.parity["outputs"]:
            if "agreement" in r and "top1_agreement" in r:  # generation, quantized candidate: top-1 is the verdict
                lines.append(f"parity vs {report.parity['reference']} (fp32): {r['name']} teacher-forced top-1 "
                             f"agreement {r['top1_agreement']:.1%} of {r.get('top1_positions', r['positions'])} positions, "
                             f"tolerance >= {r['min_top1_agreement']:.0%} {'ok' if r['ok'] else 'FAIL'}; greedy tokens equal "
                             f"{r['agreement']:.0%} (reported)")
                continue
            if "agreement" in r:  # generation: greedy tokens, token-exact
                first = "" if r["first_difference"] is None else f", first difference at token {r['first_difference']}"
                lines.append(f"parity vs {report.parity['reference']}: {r['name']} {r['agreement']:.0%} of "
                             f"{r['positions']} greedy tokens equal{first} {'ok' if r['ok'] else 'FAIL'}")
                continue
            if "top1_agreement" in r:  # a quantized candidate: judged by top-1 agreement with fp32
                lines.append(f"parity vs {report.parity['reference']} (fp32): {r['name']} top-1 agreement "
                             f"{r['top1_agreement']:.1%} of {r['positions']} positions, tolerance >= "
                             f"{r['min_top1_agreement']:.0%} {'ok' if r['ok'] else 'FAIL'}")
                continue
            mx = "inf" if r["max_abs"] is None else f"{r['max_abs']:.2e}"
            lines.append(f"parity vs {report.parity['reference']}: {r['name']} max|diff| {mx} "
                         f"(mean {r['mean_abs'] if r['mean_abs'] is None else format(r['mean_abs'], '.2e')}) "
                         f"tolerance {r['tolerance']:.2e} {'ok' if r['ok'] else 'FAIL'}")
    lines.append(quality_line(report.quality, generation=bool(report.workload)))
    return "\n".join(lines)


def quality_line(q: dict | None, generation: bool = False) -> str:
    """Both models' quality and where the figures came from, or why quality was not measured."""
    if not q:
        return ("quality not measured: no --eval-data" + (" (verify --workload measures quality on --eval-data only)"
                if generation else ", and the candidate records no calibration data to hold windows out of"))
    if q.get("metric") is None:
        return q.get("note") or "quality not measured"
    line = f"{q['metric']}: baseline {q['baseline']:.4f}, candidate {q['candidate']:.4f}"
    where = q.get("data_source") or (f"--eval-data {q['data']}" if q.get("data") else None)
    return f"{line}, on {where}" if where else line


def workload_lines(w: dict) -> list[str]:
    """TTFT / ms-per-token / tokens/s / end-to-end of both models, their speedups and (with tables) predictions."""
    spec, st = w["workload"], w["statistic"]
    precisions = {w[role].get("precision", "fp32") for role in ("baseline", "candidate")}
    timed = (f"; baseline {w['baseline'].get('precision', 'fp32')}, candidate {w['candidate'].get('precision', 'fp32')}"
             if precisions != {"fp32"} else "")
    lines = [f"workload {spec['name']} (prompt {spec['prompt']}, generate {spec['generate']}, batch {spec['batch']}) "
             f"in {w['engine']['name']} {w['engine']['version']}, {st}{timed}:"]
    pred = w.get("prediction")

    def cell(value, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    header = f"{'':<14}{'baseline':>11}{'candidate':>11}{'speedup':>9}"
    if pred:
        header += f"{'predicted':>11}{'pred. speedup':>15}{'error':>8}{'speedup error':>15}"
    lines.append(header)
    for label, key, sp_key, fmt in (("TTFT ms", "ttft_ms", "ttft", ".2f"), ("ms/token", "ms_per_token", "decode", ".3f"),
                                    ("tokens/s", "tokens_per_s", "decode", ".1f"), ("end-to-end ms", "e2e_ms", "e2e", ".1f")):
        b, c = w["baseline"][key], w["candidate"][key]
        b, c = (b[st] if isinstance(b, dict) else b), (c[st] if isinstance(c, dict) else c)
        sp = w["speedup"][sp_key]
        line = f"{label:<14}{cell(b, fmt):>11}{cell(c, fmt):>11}{cell(sp, '.2f') + 'x':>9}"
        if pred:
            err, sp_err = pred["error"]["candidate"].get(key), pred["error"]["speedup"][sp_key]
            line += (f"{cell(pred['candidate'][key], fmt):>11}{cell(pred['speedup'][sp_key], '.2f') + 'x':>15}"
                     f"{cell(err, '+.1%'):>8}{cell(sp_err, '+.1%'):>15}")
        lines.append(line)
    lines.append(f"candidate generated {w['candidate']['generated_tokens']} tokens; greedy tokens equal to the "
                 f"baseline's: {w['token_agreement']:.0%} (reported, not gated)")
    return lines
