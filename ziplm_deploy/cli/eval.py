"""``ziplm-deploy eval --model DIR --data FILE``: perplexity (causal LM) or accuracy (classifier)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory (dense or pruned)")
    p.add_argument("--data", required=True,
                   help="LM: text (.txt/.jsonl/dataset dir/'wikipedia'); classifier: .jsonl with 'text' and 'label'")
    p.add_argument("--seq-len", type=int, default=512, help="LM window length (default 512)")
    p.add_argument("--max-windows", type=int, default=32, help="LM: evaluate at most this many windows (default 32)")
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    import json

    from ..core.arch import arch_from_dir
    from ..core.errors import UserError
    from ..models import load_model
    from ..models.tokenizer import load_tokenizer
    from ..prune.evaluate import accuracy, perplexity, read_labelled

    arch = arch_from_dir(args.model)
    tokenizer = load_tokenizer(args.model)
    if tokenizer is None:
        raise UserError(f"{args.model} has no tokenizer files", "copy the tokenizer into the model directory")
    model = load_model(args.model)
    if arch.is_decoder:
        from ..prune.data import read_texts, token_windows

        windows = token_windows(tokenizer, read_texts(args.data), args.seq_len)[: args.max_windows]
        result = {"metric": "perplexity", "value": perplexity(model, windows), "tokens": int(windows.numel())}
    else:
        if not hasattr(model, "classifier"):
            raise UserError(f"{args.model} is a {type(model).__name__} without a classification head",
                            "evaluate a sequence-classification model, or a causal LM for perplexity")
        texts, labels = read_labelled(args.data)
        result = {"metric": "accuracy", "value": accuracy(model, tokenizer, texts, labels), "examples": len(labels)}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['metric']}: {result['value']:.4f} ({args.model} on {args.data})")
    return 0
