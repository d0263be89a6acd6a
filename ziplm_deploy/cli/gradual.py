"""``ziplm-deploy gradual --model DIR --table T --calib DATA --targets 1.5 2 3 --out RUNDIR``: gradual ZipLM,
prune -> distill -> rebuild the OBS database from the current model -> next target; one saved model
per target. A rerun with the same --out continues after the last finished stage."""

from __future__ import annotations

import argparse

from . import argtypes


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .distill import add_training_arguments

    p.add_argument("--model", required=True, help="dense model directory (the teacher of every stage)")
    p.add_argument("--table", required=True, help="latency table measured for this model (ziplm-deploy profile)")
    p.add_argument("--calib", required=True,
                   help="calibration text for the OBS Hessians: .txt, .jsonl, a saved HF dataset dir, or 'wikipedia'")
    p.add_argument("--data", help="distillation text (default: --calib)")
    p.add_argument("--targets", type=argtypes.speedup, nargs="+", default=[1.5, 2.0, 3.0],
                   help="ascending speedup targets over the dense model (default 1.5 2 3)")
    p.add_argument("--out", required=True, help="run directory: one model directory per target + family JSON")
    p.add_argument("--windows", type=argtypes.positive_int, default=64, help="calibration windows (default 64)")
    p.add_argument("--ffn-step", type=argtypes.positive_int, help="FFN level grid step (default dense FFN width / 32)")
    p.add_argument("--damp", type=argtypes.positive_float, default=0.01, help="Hessian dampening (default 0.01)")
    p.add_argument("--loss", default="relative", choices=("relative", "absolute"))
    p.add_argument("--attention-levels", default="heads-in-groups", choices=("heads-in-groups", "whole-groups"),
                   help="GQA models: remove query heads within the kept KV groups too (default), or only whole KV groups")
    add_training_arguments(p)


def run(args: argparse.Namespace) -> int:
    from ..core.checks import check_output_path
    from ..core.table import LatencyTable
    from ..distill.gradual import GradualConfig, gradual_ziplm
    from ..models import load_model
    from ..prune.data import calibration_windows
    from .distill import (_main_print, _tokenizer, check_mixed_precision, check_model, loss_weights, train_config,
                          training_windows)

    config = GradualConfig(targets=tuple(args.targets), ffn_step=args.ffn_step, damp=args.damp, loss=args.loss,
                           attention_levels=args.attention_levels)
    weights = loss_weights(args, has_teacher=True)
    tconfig = train_config(args)
    check_output_path(args.out, "run directory", directory=True)
    check_mixed_precision(args)
    check_model(args.model, "gradual", args.seq_len)
    table = LatencyTable.load(args.table)
    tokenizer = _tokenizer(args.model)
    calib = calibration_windows(tokenizer, args.calib, args.seq_len, args.windows, args.seed)
    windows, held = training_windows(tokenizer, args, args.data or args.calib)
    say = _main_print()
    say(f"data: {len(calib)} calibration, {len(windows)} training, {len(held)} held-out windows of "
          f"{args.seq_len} tokens")
    dense = load_model(args.model)
    stages = gradual_ziplm(dense, table, calib, windows, args.out, config, tconfig, weights, eval_windows=held,
                           parent=args.model, tokenizer=tokenizer, progress=not args.no_progress)
    reached = sum(s.reachable for s in stages)
    say(f"gradual ZipLM: {reached} of {len(config.targets)} targets reached; report "
          f"{args.out}/family-ziplm-gradual.json")
    return 0 if reached == len(config.targets) else 1
