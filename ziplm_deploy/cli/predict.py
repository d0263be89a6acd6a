"""``ziplm-deploy predict``: predicted latency and speedup of a shape from a latency table.

``--workload-tables PATH`` (a manifest from ``profile --workload``, its folder, or a prefill table: the
``prefill-S`` workload) predicts generation instead: time to first token, ms per token, tokens/s and
end-to-end time of the shape and of the dense model, and the speedups.
"""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--table", help="latency table (from `ziplm-deploy profile`)")
    p.add_argument("--workload-tables", metavar="PATH",
                   help="workload manifest (or its folder) from `ziplm-deploy profile --workload`, or a prefill "
                        "table: predict TTFT, ms/token, tokens/s and end-to-end time instead")
    p.add_argument("--shape", help="shape.json of the pruned model (default: the dense model)")
    p.add_argument("--model", help="model directory: refuse a table measured for another architecture")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def run(args: argparse.Namespace) -> int:
    from ..core.arch import arch_from_dir
    from ..core.errors import UserError
    from ..core.shape import ModelShape
    from ..core.table import LatencyTable

    if (args.table is None) == (args.workload_tables is None):
        raise UserError("pass exactly one of --table TABLE.json and --workload-tables PATH",
                        "--table predicts one pass; --workload-tables predicts generation")
    if args.workload_tables is not None:
        return _run_workload(args)
    table = LatencyTable.load(args.table)
    if args.model:
        table.check_arch(arch_from_dir(args.model), args.model)
    shape = ModelShape.load(args.shape) if args.shape else table.dense_shape()
    shape = shape.validate(table.arch, args.shape or "dense shape")
    ms = table.predict(shape)
    dense = table.predict(table.dense_shape())
    fp = table.fingerprint
    where = f"{_where(fp)}, batch {fp.batch}, " + (f"decode with KV {fp.kv_len}" if fp.mode == "decode"
                                                   else f"seq {fp.seq}")
    rows = shape.vocab or table.arch.vocab
    # the head's share of ``ms``: its own entry, calibrated (the dense head's time otherwise sits in the intercept)
    head_ms = table.calibration.alpha * table.head_ms(rows) if table.head else None
    if args.json:
        print(json.dumps({"predicted_ms": round(ms, 4), "dense_ms": round(dense, 4), "speedup": round(dense / ms, 4),
                          **({"lm_head_ms": round(head_ms, 4), "lm_head_rows": rows} if head_ms is not None else {}),
                          "fingerprint": fp.to_json()}))
    else:
        print(f"predicted latency: {ms:.3f} ms (dense {dense:.3f} ms), speedup {dense / ms:.2f}x  [{where}]")
        if head_ms is not None:
            print(f"LM head ({rows} of {table.arch.vocab} output tokens): about {head_ms:.3f} ms, {head_ms / ms:.0%} of it "
                  "(its table entry)")
    return 0


def _where(fp) -> str:
    device = fp.cpu if not fp.gpu else fp.gpu
    return f"{fp.runtime} {fp.runtime_version} {fp.provider}, {fp.threads} thread(s), {device}"


def _run_workload(args: argparse.Namespace) -> int:
    from ..core.arch import arch_from_dir
    from ..core.shape import ModelShape
    from ..core.workload import WorkloadTables, speedups

    tables = WorkloadTables.load(args.workload_tables)
    if args.model:
        tables.prefill.check_arch(arch_from_dir(args.model), args.model)
    shape = ModelShape.load(args.shape) if args.shape else tables.dense_shape()
    pred = tables.predict(shape, args.shape or "dense shape")
    dense = tables.predict(tables.dense_shape())
    sp = speedups(pred, dense)
    w = tables.workload
    steps = w.step_kv_lens
    if args.json:
        print(json.dumps({
            "workload": {"name": w.name, **w.to_json()}, "predicted": pred.to_json(), "dense": dense.to_json(),
            "speedup": {k: None if v is None else round(v, 4) for k, v in sp.items()},
            "decode_kv_lens": list(tables.kv_lens), "fingerprint": tables.prefill.fingerprint.to_json(),
        }))
        return 0
    print(f"workload {w.describe()}  [{_where(tables.prefill.fingerprint)}]")
    print(f"{'':<16}{'predicted':>12}{'dense':>12}{'speedup':>10}")

    def row(label: str, mine: float | None, theirs: float | None, speedup: float | None, fmt: str = ".3f") -> None:
        if mine is None:
            print(f"{label:<16}{'-':>12}{'-':>12}{'-':>10}")
        else:
            print(f"{label:<16}{mine:>12{fmt}}{theirs:>12{fmt}}{speedup:>9.2f}x")

    row("TTFT ms", pred.ttft_ms, dense.ttft_ms, sp["ttft"])
    row("ms/token", pred.ms_per_token, dense.ms_per_token, sp["decode"])
    row("tokens/s", pred.tokens_per_s, dense.tokens_per_s, sp["decode"], ".2f")
    row("end-to-end ms", pred.e2e_ms, dense.e2e_ms, sp["e2e"])
    if steps:
        print(f"{len(steps)} decode steps at KV {steps[0]}..{steps[-1]}, interpolated between decode tables at KV "
              f"{', '.join(map(str, tables.kv_lens))}")
    else:
        print("no decode step: end-to-end is the prefill pass")
    return 0
