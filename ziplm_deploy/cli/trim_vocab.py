"""``ziplm-deploy trim-vocab --model DIR --data TEXT (--keep K | --coverage C) --out DIR``

Keep the output tokens a domain uses: an LM head of K rows that still answers over the whole vocabulary
(``models.vocab``), saved as a model directory ``load_model`` rebuilds, with ``manifest.json`` and
``vocab-quality.json`` (held-out quality against the untrimmed model).
"""

from __future__ import annotations

import argparse
from typing import Any

from . import argtypes

PROMPT_TOKENS = 16  # greedy-agreement prompts: the first tokens of held-out windows


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="causal LM directory (dense or pruned; GPT-2 or Llama family)")
    p.add_argument("--data", required=True, help="domain text whose token frequencies pick the kept output tokens "
                   "(.txt, .jsonl, dataset dir or 'wikipedia')")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--keep", type=argtypes.positive_int, metavar="K",
                      help="keep K output tokens: the special tokens, then the most frequent ones")
    size.add_argument("--coverage", type=argtypes.open_fraction, metavar="C",
                      help="keep the most frequent tokens that cover this share of the domain's tokens (e.g. 0.999), "
                           "plus the special tokens")
    p.add_argument("--out", required=True, help="output model directory (must not exist unless --overwrite)")
    p.add_argument("--eval-data", help="held-out domain text for the quality report (default: the last tenth of "
                   "--data's texts, then not counted)")
    p.add_argument("--eval-windows", type=argtypes.positive_int, default=16,
                   help="quality: held-out windows (default 16)")
    p.add_argument("--eval-seq", type=argtypes.seq_len, default=128, help="quality: window length (default 128)")
    p.add_argument("--greedy-prompts", type=argtypes.positive_int, default=4,
                   help=f"quality: greedy-generation prompts (the first {PROMPT_TOKENS} tokens of held-out windows; "
                        "default 4)")
    p.add_argument("--greedy-tokens", type=argtypes.positive_int, default=32,
                   help="quality: greedy tokens generated per prompt (default 32)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def run(args: argparse.Namespace) -> int:
    import copy

    from ..core.checks import check_output_path
    from ..models import load_model
    from ..models.vocab import count_tokens, prompts_from, select_tokens, trim_model, vocab_quality
    from ..prune.data import read_texts

    check_output_path(args.out, "output directory", directory=True, overwrite=args.overwrite)
    arch, parent, tokenizer = _checked_model(args)
    texts = read_texts(args.data, "domain text")
    held, held_name = _held_out(args, texts, read_texts)
    if args.eval_data is None:
        texts = texts[: len(texts) - len(held)]
    windows = _windows(tokenizer, held, args.eval_seq, args.eval_windows, held_name)
    specials = _special_tokens(args, arch, tokenizer)
    selection = select_tokens(count_tokens(tokenizer, texts, arch.vocab), specials, keep=args.keep,
                              coverage=args.coverage)
    reference = load_model(args.model)
    model = trim_model(copy.deepcopy(reference), selection.kept)
    prompts = prompts_from(windows, args.greedy_prompts, min(PROMPT_TOKENS, args.eval_seq - 1))
    quality = vocab_quality(model, reference, windows, prompts, args.greedy_tokens, eval_data=held_name)
    del reference
    _save(args, model, tokenizer, arch, selection, quality, parent, held_name)
    _print(args, selection, quality, arch.vocab)
    return 0


def _checked_model(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """The model's architecture, manifest (None: not made by this tool) and tokenizer, refused before any work if
    it cannot be trimmed as asked."""
    from pathlib import Path

    from ..core.manifest import MANIFEST_FILE, ModelManifest

    from ..core.arch import read_model_config
    from ..core.errors import UserError
    from ..models.io import check_model_dir, check_seq_len
    from ..models.tokenizer import load_tokenizer
    from ..models.vocab import check_trimmable

    arch = check_model_dir(args.model)
    check_trimmable(arch, read_model_config(args.model), args.model)
    check_seq_len(args.model, args.eval_seq, "--eval-seq")
    if args.keep is not None and args.keep > arch.vocab:
        raise UserError(f"--keep {args.keep} is more than the model's {arch.vocab} output tokens",
                        f"pass --keep {arch.vocab} or less")
    parent_manifest = Path(args.model) / MANIFEST_FILE
    parent = ModelManifest.load(parent_manifest) if parent_manifest.is_file() else None
    tokenizer = load_tokenizer(args.model)
    if tokenizer is None:
        raise UserError(f"{args.model} has no tokenizer files", "trim-vocab counts tokens with the model's tokenizer: "
                        "copy it into the model directory")
    return arch, parent, tokenizer


def _special_tokens(args: argparse.Namespace, arch: Any, tokenizer: Any) -> Any:
    """The ids always kept (special tokens, the generation config's ids); ``--keep`` must leave room for them."""
    from pathlib import Path

    from ..core import checks
    from ..core.arch import read_model_config
    from ..core.errors import UserError
    from ..core.jsonio import read_json
    from ..models.vocab import special_ids

    generation_file = Path(args.model) / "generation_config.json"
    generation = (checks.mapping(read_json(generation_file, "generation config"), str(generation_file))
                  if generation_file.is_file() else None)
    specials = special_ids(tokenizer, arch.vocab, read_model_config(args.model), generation)
    if args.keep is not None and args.keep < len(specials):
        raise UserError(f"--keep {args.keep} is fewer than the {len(specials)} special tokens that are always kept",
                        f"pass --keep {len(specials) + 1} or more")
    return specials


def _save(args: argparse.Namespace, model: Any, tokenizer: Any, arch: Any, selection: Any, quality: Any,
          parent: Any, held_name: str) -> None:
    import json

    from ..core.cost import block_params
    from ..core.manifest import MANIFEST_FILE, new_manifest
    from ..models import adapter_for, save_model
    from ..models.vocab import QUALITY_FILE

    shape = adapter_for(model).shape_of(model)
    k, hidden = len(selection.kept), arch.hidden
    options = {"data": str(args.data), "keep": args.keep, "coverage": args.coverage, "eval_data": held_name,
               "fill": f"max(kept logits) - {model.get_output_embeddings().fill_margin:g}"}
    if parent is not None:
        options["parent_method"] = parent.method
    metrics = {"kept_tokens": float(k), "vocab_size": float(arch.vocab), "domain_tokens": float(selection.counted),
               "domain_coverage": selection.coverage, "head_params_before": float(arch.vocab * hidden),
               "head_params_after": float(k * hidden), "block_params": float(block_params(arch, shape)),
               "heldout_coverage": quality.coverage, "heldout_top1_agreement": quality.top1_agreement,
               "heldout_kl": quality.kl, "greedy_prefix_agreement": quality.greedy_prefix_agreement}
    manifest = new_manifest("trim-vocab", args.model, shape.to_json(), options=options, metrics=metrics,
                            table_sha256=parent.table_sha256 if parent else None,
                            fingerprint=parent.fingerprint if parent else None)
    save_model(model, args.out, tokenizer=tokenizer, overwrite=args.overwrite,
               extra_files={MANIFEST_FILE: json.dumps(manifest.to_json(), indent=2) + "\n",
                            QUALITY_FILE: json.dumps(quality.to_json(), indent=2) + "\n"})


def _held_out(args: argparse.Namespace, texts: list[str], read_texts) -> tuple[list[str], str]:
    from ..core.errors import UserError

    if args.eval_data is not None:
        return read_texts(args.eval_data, "held-out text"), str(args.eval_data)
    if len(texts) < 2:
        raise UserError(f"domain text {args.data} holds one text: none is left to hold out for the quality report",
                        "pass --eval-data HELD_OUT_TEXT, or more paragraphs")
    n = max(1, len(texts) // 10)
    return texts[len(texts) - n :], f"{args.data} (last {n} of {len(texts)} texts, not counted)"


def _windows(tokenizer, texts: list[str], seq: int, count: int, name: str):
    from ..core.errors import UserError
    from ..prune.data import token_windows

    try:
        return token_windows(tokenizer, texts, seq)[:count]
    except UserError as e:
        raise UserError(f"held-out text {name}: {e.message}", e.hint) from None


def _print(args: argparse.Namespace, selection, q, vocab: int) -> None:
    from ..models.vocab import QUALITY_FILE

    k = len(selection.kept)
    print(f"trimmed {args.model} -> {args.out}: output head {vocab:,} -> {k:,} rows ({k / vocab:.1%}), covering "
          f"{selection.coverage:.3%} of {selection.counted:,} domain tokens ({selection.distinct:,} distinct) of "
          f"{args.data}; {selection.specials} special tokens always kept")
    print(f"held-out quality vs the untrimmed model ({q.eval_data}, {q.tokens:,} next-token positions):")
    if q.impossible_tokens:
        ppl = "infinite (those tokens have probability 0)"
    else:
        ppl = f"{q.perplexity:.3f}"
    in_set = "n/a" if q.perplexity_in_set is None else f"{q.perplexity_in_set:.3f}"
    ref_in = "n/a" if q.reference_perplexity_in_set is None else f"{q.reference_perplexity_in_set:.3f}"
    print(f"  coverage {q.coverage:.3%}: {q.impossible_tokens:,} impossible tokens ({q.impossible_share:.3%}); "
          f"perplexity over all tokens {ppl} (untrimmed {q.reference_perplexity:.3f}), over the in-set tokens "
          f"{in_set} (untrimmed {ref_in})")
    print(f"  top-1 agreement {q.top1_agreement:.3%}; mean KL(trimmed || untrimmed) {q.kl:.4g} nats; untrimmed "
          f"probability mass on dropped tokens {q.mass_outside:.3%}")
    print(f"  greedy, {q.greedy_prompts} prompts x {q.greedy_tokens} tokens: common prefix "
          f"{q.greedy_prefix_agreement:.1%}, "
          f"step agreement on the untrimmed path {q.greedy_step_agreement:.1%}, identical {q.greedy_identical}/"
          f"{q.greedy_prompts}")
    print(f"wrote {args.out}/{QUALITY_FILE} and {args.out}/manifest.json")
