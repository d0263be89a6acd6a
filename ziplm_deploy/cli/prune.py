"""``ziplm-deploy prune --model DIR --table TABLE.json --calib DATA --targets 1.5 2 3 --out RUNDIR``

``--workload-tables PATH [--budget e2e|ttft|decode]`` instead of ``--table``: the search budgets a generation
workload's end-to-end time (default), time to first token or decode time per token, from the tables of
``ziplm-deploy profile --workload``; targets are speedups of that metric over the dense model.
"""

from __future__ import annotations

import argparse

from . import argtypes

BUDGETS = ("e2e", "ttft", "decode")  # prune.search.BUDGETS (not imported here: numpy-free parser)
METHODS = ("ziplm", "magnitude", "uniform", "layerchop", "flop")  # prune.family.METHODS (likewise)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="dense model directory (or one trim-vocab trimmed: the search then budgets with its LM head, "
                        "which needs a table profiled with --vocab-step)")
    p.add_argument("--table", help="latency table measured for this model (ziplm-deploy profile)")
    p.add_argument("--workload-tables", metavar="PATH",
                   help="instead of --table: workload manifest (or its folder) from `ziplm-deploy profile --workload`")
    p.add_argument("--budget", choices=BUDGETS,
                   help="with --workload-tables: what the targets speed up: e2e (end-to-end time, default), ttft "
                        "(time to first token) or decode (ms per generated token)")
    p.add_argument("--calib", required=True,
                   help="calibration text: .txt, .jsonl ('text' field), a saved HF dataset dir, or 'wikipedia'")
    p.add_argument("--targets", type=argtypes.speedup, nargs="+", default=[1.5, 2.0, 3.0],
                   help="speedup targets (default 1.5 2 3)")
    p.add_argument("--method", default="ziplm", choices=METHODS,
                   help="ziplm (default), magnitude, uniform, layerchop, or flop (FFN Linears factorised by FLOP's L0 "
                        "gates, trained on the calibration windows; needs a table with low-rank entries: "
                        "profile --rank-step 32)")
    p.add_argument("--out", required=True, help="run directory: one model directory per target + family JSON")
    p.add_argument("--seq-len", type=argtypes.ranged(8, integer=True), default=128,
                   help="calibration window length (default 128)")
    p.add_argument("--windows", type=argtypes.positive_int, default=64, help="calibration windows (default 64)")
    p.add_argument("--seed", type=argtypes.nonneg_int, default=0)
    p.add_argument("--ffn-step", type=argtypes.positive_int, help="FFN level grid step (default FFN width / 32)")
    p.add_argument("--damp", type=argtypes.positive_float, default=0.01,
                   help="Hessian dampening, fraction of mean diagonal (0.01)")
    p.add_argument("--loss", default="relative", choices=("relative", "absolute"),
                   help="per-module OBS loss, normalised by the module's output energy (default) or raw")
    p.add_argument("--uniform", action="store_true", help="ziplm: same heads / FFN width in every layer")
    p.add_argument("--layerchop-rule", default="influence", choices=("influence", "top", "indices"))
    p.add_argument("--layers", type=argtypes.nonneg_int, nargs="*", default=[],
                   help="layerchop --layerchop-rule indices: layers to drop")
    p.add_argument("--no-eval", action="store_true", help="skip the calibration perplexity of each model")
    p.add_argument("--cost", default="sensitivity", choices=("sensitivity", "obs"),
                   help="ziplm: what the search minimises: the measured end-to-end KL of each module level "
                        "(default; probes every module alone) or the per-module OBS loss (faster, worse on decoders)")
    p.add_argument("--attention-levels", default="heads-in-groups", choices=("heads-in-groups", "whole-groups"),
                   help="ziplm, GQA models: remove query heads within the kept KV groups too (default), or only "
                        "whole KV groups (a KV head with its query heads)")
    p.add_argument("--probe-windows", type=argtypes.positive_int, default=2,
                   help="ziplm --cost sensitivity: calibration windows each probe is scored on (default 2; "
                        "on SmolLM2 2, 4 and 8 give the same quality within noise, 8 costs 4x the time)")
    p.add_argument("--spdy-samples", type=argtypes.nonneg_int, default=0,
                   help="ziplm: refine each target with SPDY's randomised per-layer loss coefficients (e.g. 20)")
    p.add_argument("--device", default="cpu", type=argtypes.torch_device,
                   help="cpu, or cuda[:N]: Hessians block by block and the OBS database on that device")
    p.add_argument("--flop-steps", type=argtypes.positive_int, default=None,
                   help="flop: training steps per target (default 200)")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from ..core.checks import check_output_path
    from ..core.errors import UserError
    from ..core.table import LatencyTable
    from ..models.io import check_model_dir
    from ..prune.family import PruneConfig, prune_family
    from ..prune.search import LatencyModel

    if (args.table is None) == (args.workload_tables is None):
        raise UserError("pass exactly one of --table TABLE.json and --workload-tables PATH",
                        "--table budgets one pass; --workload-tables a generation workload (profile --workload)")
    if args.budget is not None and args.workload_tables is None:
        raise UserError("--budget needs --workload-tables (a plain table has one latency)",
                        "drop --budget, or pass the workload tables of `ziplm-deploy profile --workload`")
    check_output_path(args.out, "run directory", directory=True)
    check_model_dir(args.model)
    if args.workload_tables is not None:
        from ..core.workload import WorkloadTables

        table_path = args.workload_tables
        table = LatencyModel.of_workload(WorkloadTables.load(table_path), args.budget or "e2e",
                                         source=f"--workload-tables {table_path}")
    else:
        table_path, table = args.table, LatencyTable.load(args.table)
    config = PruneConfig(method=args.method, targets=tuple(args.targets), seq_len=args.seq_len, windows=args.windows,
                         seed=args.seed, ffn_step=args.ffn_step, damp=args.damp, loss=args.loss, uniform=args.uniform,
                         layerchop_rule=args.layerchop_rule, layerchop_indices=tuple(args.layers),
                         evaluate=not args.no_eval, device=args.device,
                         spdy_samples=args.spdy_samples, cost=args.cost, probe_windows=args.probe_windows,
                         attention_levels=args.attention_levels, flop_steps=args.flop_steps)
    report = prune_family(args.model, table, table_path, args.calib, config, args.out, progress=not args.no_progress)
    reached = sum(m.reachable for m in report.members)
    print(f"{args.method}: {reached} of {len(report.members)} targets reached in {report.seconds:.0f}s; "
          f"report {args.out}/family-{args.method}.json")
    return 0 if reached == len(report.members) else 1
