"""``ziplm-deploy eval --model DIR --data FILE``: perplexity (causal LM) or accuracy (classifier)."""

from __future__ import annotations

import argparse

from . import argtypes


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory (dense or pruned)")
    p.add_argument("--data", required=True,
                   help="LM: text (.txt/.jsonl/dataset dir/'wikipedia'); classifier: .jsonl with 'text' and 'label'")
    p.add_argument("--seq-len", type=argtypes.seq_len, default=512, help="LM window length (default 512)")
    p.add_argument("--max-windows", type=argtypes.positive_int, default=32,
                   help="LM: evaluate at most this many windows (default 32)")
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    import json

    from ..core.errors import UserError
    from ..models import load_model
    from ..models.io import check_model_dir, check_seq_len
    from ..models.tokenizer import load_tokenizer
    from ..core.labelled import read_labelled
    from ..prune.evaluate import accuracy, perplexity

    arch = check_model_dir(args.model)
    if arch.is_decoder:
        check_seq_len(args.model, args.seq_len)
    elif arch.architecture and "ForSequenceClassification" not in arch.architecture:
        raise UserError(f"{args.model} is a {arch.architecture} without a classification head",
                        "evaluate a sequence-classification model, or a causal LM for perplexity")
    labelled = None if arch.is_decoder else read_labelled(args.data)
    tokenizer = load_tokenizer(args.model)
    if tokenizer is None:
        raise UserError(f"{args.model} has no tokenizer files", "copy the tokenizer into the model directory")
    if labelled is None:
        from ..prune.data import eval_windows

        windows = eval_windows(tokenizer, args.data, args.seq_len, args.max_windows)
        result = {"metric": "perplexity", "value": perplexity(load_model(args.model), windows),
                  "tokens": int(windows.numel())}
    else:
        model = load_model(args.model)
        if not hasattr(model, "classifier"):
            raise UserError(f"{args.model} is a {type(model).__name__} without a classification head",
                            "evaluate a sequence-classification model, or a causal LM for perplexity")
        texts, labels = labelled
        result = {"metric": "accuracy", "value": accuracy(model, tokenizer, texts, labels), "examples": len(labels)}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['metric']}: {result['value']:.4f} ({args.model} on {args.data})")
    return 0
