"""``ziplm-deploy profile``: measure a latency table in the deployment runtime (torch-free).

Only the model's config.json is read: a device never needs the weights. ``--check N`` then times N
random non-uniform shapes end to end and reports the table's prediction error.

``--workload W`` (``chat``, ``prefill-S``, ``PxG``) measures the tables of a generation workload instead:
a prefill table at the prompt length and decode tables at a few KV lengths (``--kv-lens``), written with
a manifest (``--out DIR`` or ``--out MANIFEST.json``) that ``predict --workload-tables`` reads.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from . import argtypes
from ..runtime import RUNTIMES
from ..runtime.quantize import PRECISION_HELP, check_precision_layers, precision_from_args


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory (only config.json is read)")
    p.add_argument("--runtime", default="ort-cpu", help=" | ".join(RUNTIMES) + " (default ort-cpu)")
    p.add_argument("--out", help="write the latency table here (TABLE.json)")
    p.add_argument("--table", help="with --check and no --out: check this existing table instead of profiling")
    p.add_argument("--batch", type=argtypes.positive_int, default=1)
    # --seq / --decode-kv-len default to None so that --workload can refuse them; None means 128 / 0
    p.add_argument("--seq", type=argtypes.positive_int, default=None, help="prefill sequence length (default 128)")
    p.add_argument("--decode-kv-len", type=argtypes.nonneg_int, default=None, metavar="L",
                   help="profile decoding one token with a KV cache of L tokens instead of prefill")
    p.add_argument("--logits", choices=("all", "last"), default=None,
                   help="prefill of a causal LM: time the LM head on every position (all, default: scoring graphs, "
                        "`export`) or on the last one only (last: generation graphs, `export --genai`; what "
                        "--workload uses for a generating workload's prefill table)")
    p.add_argument("--workload", metavar="W",
                   help="measure the tables of a generation workload: chat (prompt 512, generate 128), prefill-S "
                        "or PxG (e.g. 256x64); --out is then a folder or a manifest MANIFEST.json")
    p.add_argument("--kv-lens", type=argtypes.positive_int, nargs="+", metavar="L",
                   help="with --workload: the decode KV lengths to measure (default: the first, middle and last "
                        "decode step's; they must cover P .. P+G-2)")
    p.add_argument("--threads", type=argtypes.nonneg_int, default=1,
                   help="intra-op threads (default 1; 0: the runtime's default)")
    p.add_argument("--opt-level", default="all", help="graph optimisation level: disabled|basic|extended|all")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16"))
    p.add_argument("--precision", default="fp32",
                   help="deployment precision: every graph is quantized as `export --precision` quantizes the model "
                        "(int8-dynamic: ONNX Runtime quantize_dynamic, QInt8 weights; ort-cpu): " + PRECISION_HELP +
                        " (default fp32)")
    p.add_argument("--per-channel", action="store_true", help="with int8-dynamic: per-channel weight scales")
    p.add_argument("--ffn-step", type=argtypes.positive_int, default=32, help="FFN width grid step (default 32)")
    p.add_argument("--rank-step", type=argtypes.nonneg_int, default=0, metavar="R",
                   help="also time FLOP-factorised FFN Linears on a rank grid of step R (default 0: off)")
    p.add_argument("--vocab-step", type=argtypes.nonneg_int, default=0, metavar="K",
                   help="causal LMs: also time LM heads trimmed to K, 2K, ... output tokens, so the table predicts "
                        "`trim-vocab` models (default 0: off; about vocab / 12, e.g. 4096 for SmolLM2)")
    p.add_argument("--warmup", type=argtypes.nonneg_int, default=5, help="warm-up calls per entry (default 5)")
    p.add_argument("--rounds", type=argtypes.positive_int, default=50, help="shuffled round-robin rounds (default 50)")
    p.add_argument("--check", type=argtypes.nonneg_int, default=0, metavar="N",
                   help="also time N random non-uniform shapes end to end")
    p.add_argument("--check-rounds", type=argtypes.positive_int, default=20, help="rounds for --check (default 20)")
    p.add_argument("--check-out", help="write the --check report (JSON) here")
    p.add_argument("--seed", type=argtypes.nonneg_int, default=0)
    p.add_argument("--max-speedup-error", type=argtypes.nonneg_float, default=None,
                   help="with --check: exit 1 when a speedup prediction is off by more than this fraction")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from ..core.arch import arch_from_dir
    from ..core.checks import check_output_path
    from ..core.errors import UserError
    from ..core.table import LatencyTable
    from ..profiling.profiler import check_precision, profile

    if args.workload is not None:
        return _run_workload(args)
    if args.kv_lens is not None:
        raise UserError("--kv-lens needs --workload", "pass --workload W, or --decode-kv-len L for one decode table")
    args.seq = 128 if args.seq is None else args.seq
    args.decode_kv_len = 0 if args.decode_kv_len is None else args.decode_kv_len
    if not args.out and not (args.check and args.table):
        raise UserError("nothing to do", "pass --out TABLE.json (and/or --check N --table TABLE.json)")
    for option, path in (("--out", args.out), ("--check-out", args.check_out)):
        if path is not None:
            check_output_path(path, option)
    precision = precision_from_args(args.precision, args.per_channel)
    check_precision(precision, args.runtime, args.dtype)
    arch = arch_from_dir(args.model)
    opts = _options(args, arch, precision)
    if args.out:
        table = profile(arch, opts, progress=not args.no_progress)
        table.save(args.out)
        _print_table(args.out, table, opts.protocol.max_drift)
    else:
        table = LatencyTable.load(args.table)
        table.check_arch(arch, args.model)
    return _check_table(args, arch, table, opts) if args.check else 0


def _options(args: argparse.Namespace, arch: Any, precision: Any) -> Any:
    """The profiling options of a single table, the precision and vocabulary step checked against the model."""
    from ..profiling.grid import check_vocab_step
    from ..profiling.profiler import ProfileOptions
    from ..runtime.timing import Protocol

    check_precision_layers(precision, arch.num_layers, args.model)
    check_vocab_step(args.vocab_step, arch)
    protocol = Protocol(warmup=args.warmup, rounds=args.rounds, seed=args.seed)
    return ProfileOptions(runtime=args.runtime, batch=args.batch, seq=args.seq, decode_kv_len=args.decode_kv_len,
                          threads=args.threads, opt_level=args.opt_level, dtype=args.dtype, ffn_step=args.ffn_step,
                          rank_step=args.rank_step, vocab_step=args.vocab_step, protocol=protocol,
                          precision=precision, logits=args.logits or "all")


def _check_table(args: argparse.Namespace, arch: Any, table: Any, opts: Any) -> int:
    """``--check N``: time N random shapes against the table's predictions; exit 1 past --max-speedup-error."""
    from ..core.jsonio import atomic_write_json
    from ..profiling.profiler import check, random_shapes
    from ..runtime.timing import Protocol

    shapes = random_shapes(arch, args.check, seed=args.seed, p_rank=0.5 if table.lowrank else 0.0)
    report = check(table, shapes, opts, progress=not args.no_progress,
                   protocol=Protocol(warmup=3, rounds=args.check_rounds, seed=args.seed))
    if args.check_out:
        atomic_write_json(args.check_out, {"format": "ziplm-deploy/table-check", "version": 1, **report.to_json()})
    print(f"{'shape':>5} {'predicted ms':>13} {'measured ms':>12} {'error':>7} {'pred. speedup':>14} "
          f"{'meas. speedup':>14} {'error':>7}")
    for i, r in enumerate(report.results):
        print(f"{i:>5} {r.predicted_ms:>13.3f} {r.measured_ms(report.statistic):>12.3f} "
              f"{r.latency_error(report.statistic):>+7.1%} {r.predicted_speedup:>13.3f}x {r.measured_speedup:>13.3f}x "
              f"{r.speedup_error:>+7.1%}")
    s = report.summary()
    print(f"latency error: median {s['median_abs_latency_error']:.1%}, max {s['max_abs_latency_error']:.1%}; "
          f"speedup error: median {s['median_abs_speedup_error']:.1%}, max {s['max_abs_speedup_error']:.1%}")
    if abs(report.drift) > opts.protocol.max_drift:
        print(f"warning: the dense model moved by {report.drift:+.1%} during the check: the machine was busy",
              file=sys.stderr)
    if args.max_speedup_error is None:
        return 0
    ok = s["max_abs_speedup_error"] <= args.max_speedup_error
    print(f"{'PASSED' if ok else 'FAILED'}: max speedup error {s['max_abs_speedup_error']:.1%} "
          f"(limit {args.max_speedup_error:.1%})")
    return 0 if ok else 1


def _print_table(where: str, table, max_drift: float) -> None:
    cal, refs, st = table.calibration, table.references, table.statistic
    low = f" + {len(table.lowrank)} low-rank" if table.lowrank else ""
    print(f"latency table: {where} ({len(table.attention)} attention + {len(table.ffn)} FFN{low} entries, "
          f"{table.fingerprint.runtime} {table.fingerprint.runtime_version} {table.fingerprint.provider}, "
          f"{table.fingerprint.mode}, {table.fingerprint.precision})")
    print(f"dense {refs['dense'].get(st):.3f} ms, all-removed {refs['removed'].get(st):.3f} ms ({st}); "
          f"calibration alpha={cal.alpha:.4f} beta={cal.beta:.4f} ms")
    if abs(cal.drift) > max_drift:
        print(f"warning: the dense reference moved by {cal.drift:+.1%} during profiling: the machine was busy; "
              "profile again for a trustworthy table", file=sys.stderr)


def _run_workload(args: argparse.Namespace) -> int:
    """``--workload W``: the prefill table at P and decode tables at ``--kv-lens``, then the manifest."""
    from pathlib import Path

    from ..core.arch import arch_from_dir
    from ..core.checks import check_output_path
    from ..core.errors import UserError
    from ..core.workload import Workload
    from ..profiling.grid import check_vocab_step
    from ..profiling.profiler import ProfileOptions, check_precision
    from ..profiling.workload import profile_workload, workload_kv_lens
    from ..runtime.timing import Protocol

    workload = Workload.parse(args.workload, batch=args.batch)
    for option, given in (("--seq", args.seq), ("--decode-kv-len", args.decode_kv_len), ("--table", args.table),
                          ("--check-out", args.check_out), ("--max-speedup-error", args.max_speedup_error),
                          ("--logits", args.logits)):
        if given is not None:
            raise UserError(f"{option} does not go with --workload (the workload sets the prompt, KV lengths and "
                            "which logits the prefill computes)",
                            f"drop {option}")
    if args.check:
        raise UserError("--check checks one table; it does not go with --workload",
                        "check a table of the workload with `profile --table TABLE.json --check N --seq/--decode-kv-len`")
    if not args.out:
        raise UserError("--workload needs --out", "pass --out DIR (or --out MANIFEST.json)")
    out = Path(args.out)
    check_output_path(out, "--out", directory=out.suffix.lower() != ".json")
    kv_lens = workload_kv_lens(workload, args.kv_lens)
    precision = precision_from_args(args.precision, args.per_channel)
    check_precision(precision, args.runtime, args.dtype)
    arch = arch_from_dir(args.model)
    check_precision_layers(precision, arch.num_layers, args.model)
    check_vocab_step(args.vocab_step, arch)
    protocol = Protocol(warmup=args.warmup, rounds=args.rounds, seed=args.seed)
    opts = ProfileOptions(runtime=args.runtime, batch=workload.batch, seq=workload.prompt, threads=args.threads,
                          opt_level=args.opt_level, dtype=args.dtype, ffn_step=args.ffn_step,
                          rank_step=args.rank_step, vocab_step=args.vocab_step, protocol=protocol,
                          precision=precision)
    kv_text = f", decode tables at KV {', '.join(map(str, kv_lens))}" if kv_lens else ""
    print(f"workload {workload.describe()}: prefill table at seq {workload.prompt}{kv_text}", flush=True)

    def done(label: str, table) -> None:
        _print_table(label, table, protocol.max_drift)
        sys.stdout.flush()

    tables = profile_workload(arch, workload, opts, args.kv_lens, progress=not args.no_progress, on_table=done)
    manifest = tables.save(out)
    print(f"workload tables: {manifest} ({1 + len(tables.decode)} tables)")
    return 0
