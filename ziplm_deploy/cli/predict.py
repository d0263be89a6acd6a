"""``ziplm-deploy predict``: predicted latency and speedup of a shape from a latency table."""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--table", required=True, help="latency table (from `ziplm-deploy profile`)")
    p.add_argument("--shape", help="shape.json of the pruned model (default: the dense model)")
    p.add_argument("--model", help="model directory: refuse a table measured for another architecture")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def run(args: argparse.Namespace) -> int:
    from ..core.arch import arch_from_dir
    from ..core.shape import ModelShape
    from ..core.table import LatencyTable

    table = LatencyTable.load(args.table)
    if args.model:
        table.check_arch(arch_from_dir(args.model), args.model)
    shape = ModelShape.load(args.shape) if args.shape else table.dense_shape()
    shape = shape.validate(table.arch, args.shape or "dense shape")
    ms = table.predict(shape)
    dense = table.predict(table.dense_shape())
    fp = table.fingerprint
    where = (f"{fp.runtime} {fp.runtime_version} {fp.provider}, {fp.threads} thread(s), {fp.cpu if not fp.gpu else fp.gpu}, "
             f"batch {fp.batch}, " + (f"decode with KV {fp.kv_len}" if fp.mode == "decode" else f"seq {fp.seq}"))
    if args.json:
        print(json.dumps({"predicted_ms": round(ms, 4), "dense_ms": round(dense, 4), "speedup": round(dense / ms, 4),
                          "fingerprint": fp.to_json()}))
    else:
        print(f"predicted latency: {ms:.3f} ms (dense {dense:.3f} ms), speedup {dense / ms:.2f}x  [{where}]")
    return 0
