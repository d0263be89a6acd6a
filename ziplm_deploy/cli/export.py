"""``ziplm-deploy export --model DIR --out FILE.onnx [--with-past]``"""

from __future__ import annotations

import argparse

from .argtypes import fraction, nonneg_float, positive_int, seq_len
from ..runtime.quantize import PRECISION_HELP, check_precision_layers, deployed_precision, precision_from_args


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory (dense or pruned)")
    p.add_argument("--out", help="output .onnx file (and FILE.onnx.reference.npz, the reference outputs "
                   "verify compares with); --with-past also writes <stem>_with_past.onnx. Or --genai OUTDIR")
    p.add_argument("--with-past", action="store_true",
                   help="decoders: prefill graph with present.* outputs plus a decode graph with past_key_values.* inputs")
    p.add_argument("--atol", type=nonneg_float, default=1e-4, help="validation: absolute tolerance (default 1e-4)")
    p.add_argument("--rtol", type=nonneg_float, default=1e-3,
                   help="validation: tolerance relative to each output's max |value| (default 1e-3)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--precision", default=None,
                   help=PRECISION_HELP + ". int8-dynamic: FILE.onnx is the ONNX Runtime quantize_dynamic graph (QInt8 weights), validated "
                        "against the fp32 PyTorch model by top-1 agreement (and --eval-data perplexity), not 1e-3 parity; "
                        "with --genai the folder's model.onnx is, validated by teacher-forced top-1 agreement and "
                        "GenAI == the graph's own greedy loop (default: the precision the model was pruned for, from "
                        "its manifest.json; else fp32)")
    p.add_argument("--per-channel", action="store_true", help="with int8-dynamic: per-channel weight scales")
    p.add_argument("--min-top1", type=fraction, default=None,
                   help="int8: least top-1 agreement with fp32 PyTorch on the random validation tokens (--genai: at the "
                        "check prompts' generation positions, teacher-forced) (default 0.1: catches a broken graph; "
                        "judge quality on text with --eval-data --max-ppl-increase)")
    p.add_argument("--eval-data", help="int8: also measure the perplexity of the quantized graph in ONNX Runtime against "
                   "the fp32 model's on this text (.txt, .jsonl or wikipedia)")
    p.add_argument("--calib", help="int8-static: text that calibrates the activation scales (.txt, .jsonl or "
                   "wikipedia; 16 windows of 128 tokens; default: the text the model was pruned on, from its manifest)")
    p.add_argument("--eval-windows", type=positive_int, default=8, help="int8 --eval-data: windows (default 8)")
    p.add_argument("--eval-seq", type=seq_len, default=128, help="int8 --eval-data: window length (default 128)")
    p.add_argument("--max-ppl-increase", type=nonneg_float, default=None,
                   help="int8 --eval-data: fail when perplexity rises by more than this fraction over fp32")
    p.add_argument("--genai", metavar="OUTDIR", help="decoders: write an ONNX Runtime GenAI model folder instead of "
                   "--out (one prefill+decode graph with past KV, genai_config.json, tokenizer, manifest), checked "
                   "token-exact against transformers greedy generate (int8: the fp32 graph is, before quantization)")
    p.add_argument("--genai-full-logits", action="store_true",
                   help="--genai: logits for every position (scoring) instead of the last one (generation)")
    p.add_argument("--genai-check-tokens", type=positive_int, metavar="N",
                   help="--genai: greedy tokens per check prompt that must match transformers (default 16)")


def run(args: argparse.Namespace) -> int:
    if args.genai is not None or args.out is None or args.genai_full_logits or args.genai_check_tokens is not None:
        return _run_genai(args)
    if args.precision is None:
        args.precision = _pruned_for(args.model)
    from pathlib import Path

    from ..core.arch import arch_from_dir
    from ..core.checks import check_output_path
    from ..core.errors import UserError

    out = Path(args.out)
    if out.suffix != ".onnx":
        raise UserError(f"--out {out} must end in .onnx")
    check_output_path(out, "--out")
    arch = arch_from_dir(args.model)
    if args.with_past and not arch.is_decoder:
        raise UserError(f"--with-past needs a decoder model; {args.model} is a {arch.family} encoder", "drop --with-past")
    targets = [out] + ([out.with_name(out.stem + "_with_past.onnx")] if args.with_past else [])
    existing = [str(t) for t in targets if t.exists()]
    if existing and not args.overwrite:
        raise UserError(f"output exists: {', '.join(existing)}", "choose another --out or pass --overwrite")
    if args.precision != "fp32" or args.per_channel or _quant_options(args):
        return _run_quantized(args, out)

    from ..export import export_onnx
    from ..models import load_model

    model = load_model(args.model)
    result = export_onnx(model, out, with_past=args.with_past, atol=args.atol, rtol=args.rtol, source=args.model)
    for d in result.diffs:
        if d.name in ("logits", "last_hidden_state"):
            print(f"  {d.graph:8s} {d.name}: max|diff| {d.max_abs:.2e}  mean {d.mean_abs:.2e}  (tolerance {d.tolerance:.2e})")
    worst = max(result.diffs, key=lambda d: d.max_abs / max(d.tolerance, 1e-30))
    print(f"exported {', '.join(map(str, result.paths))} in {result.seconds:.1f}s; "
          f"ONNX Runtime matches PyTorch on all {len(result.diffs)} outputs "
          f"(worst {worst.graph}:{worst.name} {worst.max_abs:.2e} <= {worst.tolerance:.2e})")
    print(f"reference outputs for verify: {', '.join(map(str, result.references))}")
    return 0


def _run_genai(args: argparse.Namespace) -> int:
    """``--genai OUTDIR``: every option checked before the model is loaded; exit 2 on a mismatch as well."""
    from ..core.arch import arch_from_dir
    from ..core.errors import UserError
    from ..export.genai import DEFAULT_CHECK_TOKENS, check_genai_model, check_genai_precision, check_genai_target

    if args.genai is None and args.out is not None:
        raise UserError("--genai-full-logits and --genai-check-tokens need --genai OUTDIR",
                        "add --genai OUTDIR or drop them")
    if args.genai is None:
        raise UserError("pass --out FILE.onnx or --genai OUTDIR", "see ziplm-deploy export --help")
    if args.out is not None or args.with_past:
        raise UserError(f"--genai cannot be combined with {'--out' if args.out is not None else '--with-past'}",
                        "a --genai folder always has past KV; export the .onnx file in a separate call")
    text = [f"--{k.replace('_', '-')}" for k in ("eval_data", "max_ppl_increase", "calib")
            if getattr(args, k, None) is not None]
    if text:
        raise UserError(f"{', '.join(text)} apply to a quantized --out export, not a --genai folder (an int8 one is "
                        "validated by teacher-forced top-1 agreement, --min-top1, and its greedy generation)",
                        "drop them")
    from ..runtime.quantize import DEFAULT_MIN_TOP1

    per_channel = bool(getattr(args, "per_channel", False))
    label = _pruned_for(args.model) if getattr(args, "precision", None) is None else args.precision
    precision = precision_from_args(label, per_channel)  # --per-channel without a quantized precision is refused
    check_genai_precision(precision)
    min_top1 = getattr(args, "min_top1", None)
    if min_top1 is not None and not precision.quantized:
        raise UserError("--min-top1 validates a quantized export, not a --genai folder in fp32 (checked token-exact)",
                        "add --precision int8-dynamic, or drop --min-top1")
    out = check_genai_target(args.genai, args.overwrite)
    check_genai_model(arch_from_dir(args.model))
    check_precision_layers(precision, arch_from_dir(args.model).num_layers, args.model)
    tokens = args.genai_check_tokens or DEFAULT_CHECK_TOKENS

    from ..export.genai import export_genai
    from ..models import load_model

    result = export_genai(load_model(args.model), out, full_logits=args.genai_full_logits, check_tokens=tokens,
                          overwrite=args.overwrite, source=args.model, precision=precision,
                          min_top1=DEFAULT_MIN_TOP1 if min_top1 is None else min_top1)
    kv = ", ".join(f"{k.heads}x{k.head_dim}" for k in result.kv)
    where = (f"exported GenAI folder {result.folder} ({precision.label}) in {result.seconds:.1f}s (KV heads x head "
             f"size per layer: {kv}; logits: {'all positions' if args.genai_full_logits else 'last position'})")
    q = result.quantized
    if q is None:
        for n, (prompt, new) in enumerate(zip(result.prompts, result.outputs)):
            print(f"  prompt {n} ({len(prompt)} tokens): {len(new)} generated tokens identical")
        print(f"{where}; GenAI greedy generation equals transformers on {len(result.prompts)} prompts x {tokens} "
              "tokens")
        return 0
    for n, (prompt, g) in enumerate(zip(result.prompts, q.greedy)):
        print(f"  prompt {n} ({len(prompt)} tokens): {g['equal']} of {g['positions']} greedy tokens equal to fp32 "
              f"transformers, the first {g['prefix']} in a row")
    print(f"{where}; the fp32 graph generated token-exact like transformers before quantization; GenAI greedy "
          f"generation equals the quantized graph's own greedy loop in ONNX Runtime on {len(result.prompts)} prompts "
          f"x {tokens} tokens; teacher-forced top-1 agreement with fp32 PyTorch {q.top1_agreement:.1%} of "
          f"{q.positions} generation positions (>= {q.min_top1:.0%}); greedy tokens equal to fp32 transformers "
          f"{q.greedy_agreement:.1%} (reported)")
    return 0


def _pruned_for(model: str) -> str:
    """The precision label the model was pruned for: a member searched on a quantized table is deployed
    quantized, so its export is too unless --precision says otherwise. fp32 without such a manifest."""
    precision = deployed_precision(model)
    label = precision.label
    if precision.quantized:
        print(f"{model} was pruned on a {label} latency table (manifest.json): exporting it {label}; "
              f"pass --precision fp32 for the fp32 graph")
    return precision.label


def _quant_options(args: argparse.Namespace) -> list[str]:
    return [name for name, given in (("--min-top1", args.min_top1 is not None), ("--eval-data", args.eval_data),
                                     ("--max-ppl-increase", args.max_ppl_increase is not None),
                                     ("--calib", args.calib is not None)) if given]


def _run_quantized(args: argparse.Namespace, out) -> int:
    """``--precision int8-dynamic``: options and text checked before the model is loaded."""
    from ..core.errors import UserError
    from ..runtime.quantize import DEFAULT_MIN_TOP1

    precision = precision_from_args(args.precision, args.per_channel)
    if not precision.quantized:
        raise UserError(f"{', '.join(_quant_options(args))} validate a quantized export",
                        "add --precision int8-dynamic, or drop them")
    from ..core.arch import arch_from_dir

    check_precision_layers(precision, arch_from_dir(args.model).num_layers, args.model)
    if args.max_ppl_increase is not None and not args.eval_data:
        raise UserError("--max-ppl-increase needs --eval-data TEXT", "add --eval-data, or drop --max-ppl-increase")
    if args.eval_data:
        from ..core.arch import arch_from_dir

        if not arch_from_dir(args.model).is_decoder:
            raise UserError("--eval-data measures perplexity: it needs a decoder model", "drop --eval-data")
    windows = _eval_windows(args) if args.eval_data else None
    from ..export.quantize import export_quantized, static_calibration_windows

    if args.calib is not None and not precision.static:
        raise UserError(f"--calib calibrates int8-static; {precision.label} needs none", "drop --calib")
    calibration = static_calibration_windows(args.model, args.calib) if precision.static else None

    from ..models import load_model

    result = export_quantized(load_model(args.model), out, precision, with_past=args.with_past, atol=args.atol,
                              rtol=args.rtol, source=args.model, windows=windows,
                              min_top1=DEFAULT_MIN_TOP1 if args.min_top1 is None else args.min_top1,
                              max_ppl_increase=args.max_ppl_increase, calibration=calibration)
    for q in result.quality:
        line = f"  {q.graph:8s} top-1 agreement with fp32 PyTorch {q.top1_agreement:.1%} of {q.positions} positions"
        if q.perplexity is not None:
            line += f"; perplexity {q.perplexity:.3f} vs fp32 {q.perplexity_fp32:.3f} ({q.ppl_increase:+.1%})"
        print(line)
    print(f"exported {', '.join(map(str, result.paths))} ({precision.label}); the fp32 graph matched PyTorch on all "
          f"{len(result.fp32.diffs)} outputs before quantization")
    print(f"reference outputs for verify: {', '.join(map(str, result.references))}")
    return 0


def _eval_windows(args: argparse.Namespace):
    from ..core.errors import UserError
    from ..models.tokenizer import load_tokenizer
    from ..prune.data import eval_windows

    tokenizer = load_tokenizer(args.model)
    if tokenizer is None:
        raise UserError(f"{args.model} has no tokenizer files", "--eval-data needs the tokenizer in the model directory")
    return eval_windows(tokenizer, args.eval_data, args.eval_seq, args.eval_windows).numpy()
