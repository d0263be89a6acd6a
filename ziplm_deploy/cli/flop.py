"""``ziplm-deploy flop --model DIR --data FILE --target-sparsity 0.5 --out DIR``: FLOP low-rank pruning.

Every FFN Linear becomes ``P · diag(z) · Q`` (SVD initialised, hard-concrete gates); training with the LM
loss and an L0 penalty drives the expected parameter sparsity of those Linears to the target; the closed
ranks are then removed and each Linear is saved as two thin ones, with its kept rank in the shape.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from . import argtypes


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory (dense, or pruned by ziplm-deploy)")
    p.add_argument("--data", required=True,
                   help="training text: .txt, .jsonl ('text'), a saved HF dataset dir, or 'wikipedia'")
    sparsity = argtypes.ranged(0, 1, lo_open=True, hi_open=True, what="target sparsity")
    p.add_argument("--target-sparsity", type=sparsity, required=True,
                   help="fraction of the FFN Linears' parameters to remove, in (0, 1), e.g. 0.5")
    p.add_argument("--out", required=True, help="output model directory")
    p.add_argument("--steps", type=argtypes.positive_int, default=200, help="training steps (default 200)")
    p.add_argument("--warmup", type=argtypes.nonneg_int, default=None,
                   help="steps over which the target ramps up (default steps/2)")
    p.add_argument("--rank", type=argtypes.positive_int, default=None,
                   help="initial rank of every factorised Linear (default: in*out/(in+out), parameter-neutral)")
    p.add_argument("--init-drop", type=argtypes.open_unit, default=0.5,
                   help="initial drop rate of the rank gates (default 0.5 as in FLOP; small values start near the dense model)")
    p.add_argument("--lr", type=argtypes.positive_float, default=1e-4, help="weight learning rate (default 1e-4)")
    p.add_argument("--gate-lr", type=argtypes.positive_float, default=0.1, help="gate learning rate (default 0.1)")
    p.add_argument("--lambda-lr", type=argtypes.positive_float, default=0.01,
                   help="Lagrange multiplier learning rate (default 0.01)")
    p.add_argument("--batch-size", type=argtypes.positive_int, default=4, help="windows per step (default 4)")
    p.add_argument("--seq-len", type=argtypes.seq_len, default=128, help="window length in tokens (default 128)")
    p.add_argument("--eval-data", help="held-out text (default: hold out --eval-windows windows of --data)")
    p.add_argument("--eval-windows", type=argtypes.positive_int, default=16, help="held-out windows (default 16)")
    p.add_argument("--table", help="latency table of the model: print (and record) the predicted speedup")
    p.add_argument("--seed", type=argtypes.nonneg_int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..core.checks import check_output_path
    from ..distill.flop import FlopConfig
    from ..models import adapter_for, load_model
    from ..prune.evaluate import perplexity
    from .distill import _tokenizer, check_model, training_windows

    config = FlopConfig(target=args.target_sparsity, steps=args.steps, warmup=args.warmup, rank=args.rank,
                        init_drop=args.init_drop, lr=args.lr, gate_lr=args.gate_lr, lambda_lr=args.lambda_lr,
                        batch_size=args.batch_size, seed=args.seed)
    out = check_output_path(args.out, "output directory", directory=True, overwrite=args.overwrite)
    arch = check_model(args.model, "flop", args.seq_len)
    tokenizer = _tokenizer(args.model)
    table = _checked_table(args, arch, _starting_shape(args.model, arch))
    windows, held = training_windows(tokenizer, args, args.data)
    model = load_model(args.model)
    print(f"data: {len(windows)} training and {len(held)} held-out windows of {args.seq_len} tokens")
    progress = not args.no_progress
    ppl_before = perplexity(model, held, progress=progress)
    result = _train(model, windows, config, progress)
    model.eval()
    with torch.no_grad():
        ppl_after = perplexity(model, held, progress=progress)
    shape = adapter_for(model).shape_of(model)
    metrics = {"heldout_ppl_before": ppl_before, "heldout_ppl_after": ppl_after,
               "param_sparsity": result.sparsity(model), "train_seconds": result.seconds,
               "final_loss": result.history[-1]["task"]}
    if table is not None:
        metrics["predicted_speedup"] = table.speedup(shape)
        metrics["predicted_ms"] = table.predict(shape)
    _save(args, model, tokenizer, out, config, result, shape, metrics)
    _summary(config, result, metrics, out)
    return 0


def _starting_shape(model_dir: str, arch: Any) -> Any:
    """The model's recorded shape (dense if none), with its trimmed head: the result keeps both."""
    from ..core.arch import SHAPE_CONFIG_KEY, read_model_config
    from ..core.errors import UserError
    from ..core.shape import VOCAB_CONFIG_KEY, ModelShape, VocabTrim

    raw = read_model_config(model_dir)
    recorded = raw.get(SHAPE_CONFIG_KEY)
    shape = ModelShape.from_json(recorded, f"{model_dir}/config.json") if recorded else ModelShape.dense(arch)
    trim = raw.get(VOCAB_CONFIG_KEY)
    if trim is not None:
        shape = ModelShape(shape.layers, len(VocabTrim.from_json(trim, f"{model_dir}/config.json {VOCAB_CONFIG_KEY}").kept))
    if shape.has_ranks:
        raise UserError(f"{model_dir} is already factorised (FLOP ranks in its shape)",
                        "run flop on a model that was not through flop")
    return shape


def _checked_table(args: argparse.Namespace, arch: Any, shape: Any) -> Any:
    """``--table``, checked before training: a table that cannot predict the result fails now, not after."""
    if not args.table:
        return None
    from ..core.table import LatencyTable

    table = LatencyTable.load(args.table)
    table.check_arch(arch, args.model)
    table.check_predicts_ranks(shape)
    table.head_delta_ms(shape.vocab)  # a trimmed head the table has no entries for: refused now
    return table


def _train(model: Any, windows: Any, config: Any, progress: bool) -> Any:
    from ..distill.flop import flop_prune

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=config.steps, desc="flop", unit="step", dynamic_ncols=True, leave=False)

    def log(row):
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{row['task']:.3f}", sparsity=f"{row['expected_sparsity']:.3f}",
                            target=f"{row['target']:.2f}")

    try:
        return flop_prune(model, windows, config, log=log)
    finally:
        if bar is not None:
            bar.close()


def _save(args: argparse.Namespace, model: Any, tokenizer: Any, out: Any, config: Any, result: Any, shape: Any,
          metrics: dict[str, Any]) -> None:
    from dataclasses import asdict

    from ..core.manifest import MANIFEST_FILE, new_manifest
    from ..models import save_model

    options = {**asdict(config), "data": args.data, "seq_len": args.seq_len, "table": args.table}
    manifest = new_manifest("flop", args.model, shape.to_json(), options=options, metrics=metrics)
    save_model(model, out, tokenizer=tokenizer, overwrite=args.overwrite,
               extra_files={MANIFEST_FILE: json.dumps(manifest.to_json(), indent=2, default=str) + "\n",
                            "flop.json": json.dumps(result.to_json(), indent=1) + "\n"})


def _summary(config: Any, result: Any, metrics: dict[str, Any], out: Any) -> None:
    import sys

    if metrics["param_sparsity"] < config.target - 0.05:
        print(f"warning: reached {metrics['param_sparsity']:.1%} parameter sparsity of the {config.target:.0%} target: "
              "train longer (--steps), or move the gates faster (--gate-lr, --lambda-lr, --init-drop 0.05)",
              file=sys.stderr)
    ranks = sorted(result.ranks.values())
    speed = f"; predicted speedup {metrics['predicted_speedup']:.2f}x" if "predicted_speedup" in metrics else ""
    print(f"flop: {len(ranks)} Linears factorised, kept ranks {ranks[0]}..{ranks[-1]}, parameter sparsity "
          f"{metrics['param_sparsity']:.1%} (target {config.target:.0%}) in {result.seconds:.0f}s; held-out "
          f"perplexity {metrics['heldout_ppl_before']:.3f} -> {metrics['heldout_ppl_after']:.3f}{speed}; saved {out}")
