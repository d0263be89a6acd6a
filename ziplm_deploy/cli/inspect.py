"""``ziplm-deploy inspect PATH``: per-layer shape, parameters and FLOPs of a model directory or ONNX file.

Torch-free: parameters come from the safetensors headers or the ONNX initializers.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from . import argtypes


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="model directory or .onnx file")
    p.add_argument("--seq", type=argtypes.positive_int, default=128,
                   help="sequence length for the FLOP count (default 128)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _safetensors_params(model_dir: Path) -> int:
    """Parameters in the safetensors files (headers only; a corrupt or truncated file is refused)."""
    from ..core.checks import safetensors_header

    return sum(math.prod(info["shape"]) for f in sorted(model_dir.glob("*.safetensors"))
               for info in safetensors_header(f).values())


def _metadata_json(meta: dict[str, str], key: str, path: Path) -> Any:
    from ..core.errors import UserError

    if key not in meta:
        return None
    try:
        return json.loads(meta[key])
    except json.JSONDecodeError:
        raise UserError(f"{path}: metadata {key} is not valid JSON", "re-export it with ziplm-deploy export") from None


def _onnx_info(path: Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None, int, dict[str, str], dict[str, Any]]:
    import onnx

    from ..core.errors import UserError

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf raises several types for a damaged file
        raise UserError(f"{path} is not a readable ONNX model ({type(e).__name__}: {str(e)[:80]})",
                        "re-export it with ziplm-deploy export") from None
    if not proto.graph.node:
        raise UserError(f"{path} is not a readable ONNX model (empty graph)", "re-export it with ziplm-deploy export")
    meta = {p.key: p.value for p in proto.metadata_props}
    params = 0
    for init in proto.graph.initializer:
        count = 1
        for dim in init.dims:
            count *= dim
        params += count
    config, shape = _metadata_json(meta, "ziplm_config", path), _metadata_json(meta, "ziplm_shape", path)
    io = {i.name: "input" for i in proto.graph.input}
    io.update({o.name: "output" for o in proto.graph.output})
    return config, shape, params, io, _precision_info(meta, path)


def _precision_info(meta: dict[str, str], path: Path) -> dict[str, Any]:
    """The graph's precision (files without ``ziplm_precision`` are fp32) and how a quantized one was validated."""
    from ..runtime.quantize import precision_of_metadata, quality_of_metadata

    info: dict[str, Any] = {"precision": precision_of_metadata(meta, str(path)).label}
    quality = quality_of_metadata(meta, str(path))
    if quality is not None:
        info["quantization_check"] = quality
    return info


def run(args: argparse.Namespace) -> int:
    from ..core.arch import SHAPE_CONFIG_KEY, arch_from_config, config_path, read_model_config
    from ..core.cost import block_params, model_flops
    from ..core.errors import UserError
    from ..core.shape import ModelShape

    path = Path(args.path)
    io: dict[str, str] = {}
    precision: dict[str, Any] = {"precision": "fp32"}
    if path.is_dir():
        config = read_model_config(path)
        source = str(config_path(path))
        shape_source = f"{source}: {SHAPE_CONFIG_KEY}"
        shape_json = config.get(SHAPE_CONFIG_KEY)
        params = _safetensors_params(path)
        kind = "model directory"
    elif path.is_file():
        config, shape_json, params, io, precision = _onnx_info(path)
        source, shape_source, kind = f"{path}: ziplm_config", f"{path}: ziplm_shape", "ONNX file"
        if config is None:
            print(f"{path}: ONNX file without ziplm-deploy metadata; {params / 1e6:.2f}M parameters in initializers; "
                  f"precision {precision['precision']}")
            for name, role in io.items():
                print(f"  {role}: {name}")
            return 0
    else:
        raise UserError(f"{path} not found", "pass a model directory or an .onnx file")
    arch = arch_from_config(config, source=source)
    shape = (ModelShape.from_json(shape_json, source=shape_source) if shape_json
             else ModelShape.dense(arch)).validate(arch)
    dense = ModelShape.dense(arch)
    flops, dense_flops = model_flops(arch, shape, args.seq), model_flops(arch, dense, args.seq)
    report = {
        "path": str(path), "kind": kind, "family": arch.family, "architecture": arch.architecture,
        "parameters": params, "block_parameters": block_params(arch, shape),
        "dense_block_parameters": block_params(arch, dense), "flops": flops, "dense_flops": dense_flops,
        "seq": args.seq, "shape": shape.to_json(), **precision,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_report(report, arch, shape, precision, io)
    return 0


def _print_report(report: dict[str, Any], arch: Any, shape: Any, precision: dict[str, Any], io: dict[str, str]) -> None:
    params, flops, dense_flops = report["parameters"], report["flops"], report["dense_flops"]
    print(f"{report['path']} ({report['kind']}): {arch.family} {arch.architecture or ''}, {len(shape.kept_layers)} of "
          f"{arch.num_layers} layers")
    if params:
        print(f"parameters: {params / 1e6:.2f}M total; transformer blocks {report['block_parameters'] / 1e6:.2f}M "
              f"of {report['dense_block_parameters'] / 1e6:.2f}M dense ({report['block_parameters'] / report['dense_block_parameters']:.1%})")
    print(_precision_line(precision))
    print(f"FLOPs (batch 1, seq {report['seq']}): {flops / 1e9:.2f} G of {dense_flops / 1e9:.2f} G dense "
          f"({flops / dense_flops:.1%})")
    gqa = arch.kv_heads != arch.heads
    print(f"{'layer':>5}  {'heads':>5}" + (f"  {'kv':>3}" if gqa else "") + f"  {'ffn':>6}"
          + ("  FLOP ranks" if shape.has_ranks else ""))
    for i, s in enumerate(shape.layers):
        if s.dropped:
            print(f"{i:>5}  dropped")
        else:
            low = "  " + " ".join(f"{role}={r}" for role, r in s.ranks) if s.ranks else ""
            print(f"{i:>5}  {s.heads:>5}" + (f"  {s.kv:>3}" if gqa else "") + f"  {s.ffn:>6}{low}")
    for name, role in io.items():
        print(f"  {role}: {name}")


def _precision_line(info: dict[str, Any]) -> str:
    line = f"precision: {info['precision']}"
    q = info.get("quantization_check")
    if q:
        agree, least = q.get("top1_agreement"), q.get("min_top1_agreement")
        if isinstance(agree, (int, float)) and isinstance(least, (int, float)):
            line += (f" (validated against fp32 PyTorch: top-1 agreement {agree:.1%} >= {least:.0%} on "
                     f"{q.get('positions')} positions")
            if isinstance(q.get("perplexity"), (int, float)) and isinstance(q.get("perplexity_fp32"), (int, float)):
                line += f"; perplexity {q['perplexity']:.3f} vs fp32 {q['perplexity_fp32']:.3f}"
            line += ")"
    return line
