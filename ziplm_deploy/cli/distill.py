"""``ziplm-deploy distill --student DIR [--teacher DIR] --data FILE --out DIR``: recover a pruned model's
quality by distillation from the dense teacher (logit KD + hidden states), or, without a teacher, by
continued LM pretraining (LayerChop). Resumable (``--resume``); ``accelerate launch`` for several GPUs."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import argtypes


def add_training_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared with ``gradual``: data, optimisation, loss weights, cadence."""
    p.add_argument("--eval-data", help="held-out text (default: hold out --eval-windows windows of --data)")
    p.add_argument("--eval-windows", type=argtypes.positive_int, default=16, help="held-out windows (default 16)")
    p.add_argument("--steps", type=argtypes.positive_int, default=200, help="optimizer steps (default 200)")
    p.add_argument("--lr", type=argtypes.positive_float, default=5e-5,
                   help="peak learning rate of AdamW (default 5e-5)")
    p.add_argument("--weight-decay", type=argtypes.nonneg_float, default=0.0)
    p.add_argument("--warmup", type=argtypes.nonneg_int, default=None, help="warmup steps (default 5%% of --steps)")
    p.add_argument("--batch-size", type=argtypes.positive_int, default=4,
                   help="windows per micro-batch per process (default 4)")
    p.add_argument("--grad-accum", type=argtypes.positive_int, default=1,
                   help="micro-batches per optimizer step (default 1)")
    p.add_argument("--seq-len", type=argtypes.seq_len, default=128, help="window length in tokens (default 128)")
    p.add_argument("--temperature", type=argtypes.positive_float, default=2.0, help="KD temperature (default 2)")
    p.add_argument("--kd-weight", type=argtypes.nonneg_float, default=None,
                   help="logit KD weight (default 1 with a teacher)")
    p.add_argument("--hidden-weight", type=argtypes.nonneg_float, default=None,
                   help="hidden-state loss weight (default 1 with a teacher)")
    p.add_argument("--task-weight", type=argtypes.nonneg_float, default=None,
                   help="LM cross-entropy weight (default 0 with a teacher, 1 without)")
    p.add_argument("--mixed-precision", default="no", choices=("no", "fp16", "bf16"), help="GPU mixed precision")
    p.add_argument("--max-grad-norm", type=argtypes.nonneg_float, default=1.0, help="gradient clipping (0: off)")
    p.add_argument("--eval-every", type=argtypes.nonneg_int, default=0,
                   help="held-out perplexity every N steps (and at the end)")
    p.add_argument("--save-every", type=argtypes.nonneg_int, default=50,
                   help="checkpoint every N steps (0: never; default 50)")
    p.add_argument("--seed", type=argtypes.nonneg_int, default=0)
    p.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is present")
    p.add_argument("--no-progress", action="store_true")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--student", required=True, help="model directory to train (typically a pruned one)")
    p.add_argument("--teacher", help="dense model directory the student was pruned from (omit: plain LM loss)")
    p.add_argument("--data", required=True,
                   help="training text: .txt, .jsonl ('text'), a saved HF dataset dir, or 'wikipedia'")
    p.add_argument("--out", required=True, help="output folder: model/, train.json, checkpoints/")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    add_training_arguments(p)


def loss_weights(args: argparse.Namespace, has_teacher: bool):
    from ..distill.losses import LossWeights

    return LossWeights.for_student(has_teacher, args.kd_weight, args.hidden_weight, args.task_weight, args.temperature)


def train_config(args: argparse.Namespace):
    from ..distill.trainer import TrainConfig, warmup_steps

    return TrainConfig(steps=args.steps, lr=args.lr, weight_decay=args.weight_decay,
                       warmup=warmup_steps(args.steps, args.warmup), batch_size=args.batch_size,
                       grad_accum=args.grad_accum, max_grad_norm=args.max_grad_norm,
                       mixed_precision=args.mixed_precision, seed=args.seed, eval_every=args.eval_every,
                       save_every=args.save_every, cpu=args.cpu)


def training_windows(tokenizer, args: argparse.Namespace, data: str):
    """(train, held-out) windows: the held-out ones from --eval-data, else a seeded sample of ``data``."""
    from ..prune.data import train_heldout_windows

    return train_heldout_windows(tokenizer, data, args.seq_len, args.eval_windows, args.seed, args.eval_data)


def _tokenizer(model_dir: str):
    from ..core.errors import UserError
    from ..models.tokenizer import load_tokenizer

    if not Path(model_dir).is_dir():
        raise UserError(f"model directory not found: {model_dir}")
    tokenizer = load_tokenizer(model_dir)
    if tokenizer is None:
        raise UserError(f"{model_dir} has no tokenizer files", "save the tokenizer into the model directory")
    return tokenizer


def check_model(model_dir: str, command: str, seq_len: int):
    """A causal LM directory (config, weights, positions for ``seq_len``) checked before any work."""
    from ..core.errors import UserError
    from ..models.io import check_model_dir, check_seq_len

    arch = check_model_dir(model_dir)
    if not arch.is_decoder:
        raise UserError(f"{command} trains causal LMs on text; {model_dir} is a {arch.family} encoder",
                        "pass a GPT-2 or Llama-family model directory")
    check_seq_len(model_dir, seq_len)
    return arch


def check_mixed_precision(args: argparse.Namespace) -> None:
    """fp16 needs a CUDA device: refused before any work on a CPU machine or with --cpu."""
    from ..core.errors import UserError

    if args.mixed_precision != "fp16":
        return
    import torch

    if args.cpu or not torch.cuda.is_available():
        raise UserError("fp16 mixed precision needs a CUDA GPU"
                        + ("" if args.cpu else f" (torch {torch.__version__} sees none)"),
                        "use --mixed-precision no (or bf16) on CPU")


def _main_print():
    """``print`` on the main process only (``accelerate launch`` / ``torchrun`` start one per device)."""
    from ..distill.trainer import is_main_process

    return print if is_main_process() else (lambda *a, **k: None)


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from ..core.checks import check_output_path
    from ..core.errors import UserError
    from ..distill.trainer import latest_checkpoint, save_student, train
    from ..models import load_model

    weights = loss_weights(args, bool(args.teacher))
    config = train_config(args)
    out = check_output_path(args.out, "output folder", directory=True)
    if not args.resume and latest_checkpoint(out) is not None:
        raise UserError(f"{out} already has training checkpoints", "pass --resume to continue, or another --out")
    check_mixed_precision(args)
    check_model(args.student, "distill", args.seq_len)
    if args.teacher:
        check_model(args.teacher, "distill", args.seq_len)
        _tokenizer(args.teacher)
    tokenizer = _tokenizer(args.student)
    windows, held = training_windows(tokenizer, args, args.data)
    say = _main_print()
    say(f"data: {len(windows)} training and {len(held)} held-out windows of {args.seq_len} tokens")
    student = load_model(args.student)
    teacher = load_model(args.teacher) if args.teacher else None
    result = train(student, windows, out, config, weights, teacher=teacher, eval_windows=held, resume=args.resume,
                   progress=not args.no_progress)
    method = "distill" if weights.needs_teacher else "pretrain"
    metrics = {"steps": result.steps, "train_seconds": result.seconds, "final_loss": result.history[-1]["loss"]}
    if result.evals:
        metrics["heldout_ppl_before"] = result.evals[0]["ppl"]
        metrics["heldout_ppl_after"] = result.evals[-1]["ppl"]
    options = {"teacher": args.teacher, "data": args.data, "weights": asdict(weights), "train": asdict(config),
               "seq_len": args.seq_len}
    path = save_student(student, out / "model", parent=args.student, method=method, tokenizer=tokenizer,
                        options=options, metrics=metrics)
    ppl = (f"; held-out perplexity {metrics['heldout_ppl_before']:.3f} -> {metrics['heldout_ppl_after']:.3f}"
           if "heldout_ppl_before" in metrics else "")
    say(f"{method}: {result.steps} steps in {result.seconds:.0f}s on {result.device}{ppl}; saved {path}")
    return 0
